"""The tiny recurrent search and retraining (tests/skeletons/test_ptb_*.py, the methods' recurrent-cell
tests, tests/export/test_export.py, tests/runs/test_faults.py)."""

from __future__ import annotations

import torch

from stablenas.data.ptb import Corpus
from stablenas.skeletons.rnn.train import rnn_train_config

PTB_TINY = ["space=ptb", "data.dataset=ptb", "data.batch_size=8", "data.eval_batch_size=8",
            "network.channels_last=false", "model.emsize=8", "model.nhid=8", "model.bptt=6",
            "model.train_tokens=1200", "model.alpha_tokens=600", "model.eval_tokens=240", "optim.epochs=2",
            "optim.lr=20", "optim.lr_min=20", "optim.momentum=0", "optim.weight_decay=5e-7", "optim.grad_clip=0.25",
            "optim.warmup_epochs=0", "search.steps_per_epoch=3", "search.val_batches=2"]


def synthetic_corpus(n_words: int = 40, seed: int = 0, lines: int = 300) -> Corpus:
    """A synthetic corpus with learnable structure (word i is usually followed by word i+1)."""
    g = torch.Generator().manual_seed(seed)
    words = [f"w{i}" for i in range(n_words)]

    def text(lines: int) -> str:
        out = []
        for _ in range(lines):
            start = int(torch.randint(n_words, (1,), generator=g))
            out.append(" ".join(words[(start + k) % n_words] for k in range(8)))
        return "\n".join(out) + "\n"

    return Corpus.from_texts({"train": text(lines), "valid": text(30), "test": text(30)}, source="synthetic")


def rnn_cfg(**kw):
    base = dict(emsize=16, nhid=16, batch_size=8, eval_batch_size=8, test_batch_size=4, bptt=8, epochs=6,
                dropout=0.0, dropouth=0.0, dropoutx=0.05, dropouti=0.0, nonmono=1, seed=3, device="cpu")
    base.update(kw)
    return rnn_train_config(None, base)
