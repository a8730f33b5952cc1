"""A tiny image training from scratch (tests/evaluate/test_train.py, tests/runs/test_faults.py)."""

from __future__ import annotations

from stablenas.evaluate.train import TrainConfig, train_config
from stablenas.genotype import Genotype


def s5_genotype(n0="sep_conv_3x3", n1="skip_connect", r0="max_pool_3x3", r1="sep_conv_3x3") -> Genotype:
    return Genotype(
        space="s5",
        normal=((n0, 0), (n1, 1)),
        normal_concat=(2,),
        reduce=((r0, 0), (r1, 1)),
        reduce_concat=(2,),
    )


def tiny_train(**kw) -> TrainConfig:
    base = dict(
        dataset="digits",
        channels=4,
        layers=3,
        stem_multiplier=2,
        epochs=2,
        batch_size=32,
        steps_per_epoch=4,
        channels_last=False,
        eval_batch_size=512,
    )
    base.update(kw)
    return train_config(None, base)
