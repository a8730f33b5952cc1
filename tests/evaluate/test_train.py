"""Training from scratch: resumption is exact, training learns, configs and inputs are checked.

References: "learns" is judged against chance (10 classes -> 10 %) on the held-out digits test
split; resumption against the same run done without interruption (bit-identical weights).
"""

from __future__ import annotations

import json

import pytest
import torch
from support.training import s5_genotype, tiny_train
from typer.testing import CliRunner

from stablenas.cli import app
from stablenas.config import ConfigError
from stablenas.errors import InterruptedRun
from stablenas.evaluate.train import (
    TrainConfig,
    TrainExistsError,
    resolve_genotype,
    train_config,
    train_genotype,
)
from stablenas.genotype import GenotypeError


def _quiet(_: str) -> None:
    pass


def test_resume_after_kill_matches_uninterrupted(tmp_path):
    # aux head, drop-path (global RNG) and cutout/crop (loader RNG) all on: every source of randomness
    cfg = tiny_train(epochs=3, auxiliary=True, drop_path=0.3)
    g = get = s5_genotype()
    full = train_genotype(g, cfg, tmp_path / "a", log=_quiet)
    with pytest.raises(InterruptedRun, match="stopped after epoch 1"):  # "killed" after epoch 1
        train_genotype(get, cfg, tmp_path / "b", log=_quiet, stop_after=1)
    assert json.loads((tmp_path / "b" / "status.json").read_text())["state"] == "interrupted"
    assert not (tmp_path / "b" / "result.json").exists()
    resumed = train_genotype(g, cfg, tmp_path / "b", resume=True, log=_quiet)
    assert resumed["test_acc"] == full["test_acc"]
    assert resumed["test_loss"] == full["test_loss"]
    wa = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    wb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ma = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    mb = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in ma]
    assert strip == [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in mb]
    assert [r["drop_path"] for r in strip] == pytest.approx([0.0, 0.1, 0.2])  # linear 0 -> max
    # resuming a finished run returns its result without training again
    again = train_genotype(g, cfg, tmp_path / "b", resume=True, log=_quiet)
    assert again["test_acc"] == full["test_acc"]


def test_training_learns_digits_above_chance():
    cfg = tiny_train(epochs=3, steps_per_epoch=None, channels=8, auxiliary=False, drop_path=0.0, lr=0.05)
    r = train_genotype(s5_genotype(), cfg, None, log=_quiet)
    assert r["test_acc"] > 0.6  # chance is 0.1 on the 360 test digits
    assert r["network"] == "cifar" and r["params"] > 0 and r["macs"] > 0
    assert r["final_train_acc"] > 0.3


def test_run_dir_guards(tmp_path):
    cfg = tiny_train(epochs=1, steps_per_epoch=1, evaluate_test=False)
    train_genotype(s5_genotype(), cfg, tmp_path / "r", log=_quiet)
    with pytest.raises(TrainExistsError, match="--resume"):
        train_genotype(s5_genotype(), cfg, tmp_path / "r", log=_quiet)
    with pytest.raises(ConfigError, match="lr"):
        train_genotype(s5_genotype(), cfg.model_copy(update={"lr": 0.1}), tmp_path / "r", resume=True, log=_quiet)
    with pytest.raises(ConfigError, match="genotype"):
        train_genotype(s5_genotype(n0="skip_connect"), cfg, tmp_path / "r", resume=True, log=_quiet)


def test_holdout_reports_valid_and_never_test():
    cfg = tiny_train(epochs=1, steps_per_epoch=2, holdout=200, evaluate_test=False)
    r = train_genotype(s5_genotype(), cfg, None, log=_quiet)
    assert "valid_acc" in r and "test_acc" not in r


def test_augmentation_scales_with_input_side():
    cfg = TrainConfig(dataset="fashion-mnist")
    assert cfg.augmentation(32) == {"crop_padding": 4, "flip": True, "cutout": 16}
    assert cfg.augmentation(28)["cutout"] == 14
    d = TrainConfig(dataset="digits").augmentation(8)
    assert d == {"crop_padding": 1, "flip": False, "cutout": 4}
    assert TrainConfig(dataset="digits", cutout=0, flip=True).augmentation(8)["cutout"] == 0


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="epoch: unknown key; valid keys"):
        train_config("darts", ["epoch=3"])
    with pytest.raises(ConfigError, match="unknown training preset"):
        train_config("nope")
    with pytest.raises(ConfigError, match="dataset"):
        train_config("darts", dataset="imagenet22k")
    assert train_config("nb201").model_dump()["lr"] == 0.1
    assert train_config("darts", ["epochs=7"], lr=0.1).epochs == 7


def test_resolve_genotype_sources(tmp_path):
    assert resolve_genotype("DARTS_V2").normal[0] == ("sep_conv_3x3", 0)
    assert resolve_genotype(
        "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|none~1|none~2|"
    ).skeleton.name == "nb201"
    g = s5_genotype()
    g.save(tmp_path / "genotype.json")
    assert resolve_genotype(tmp_path) == g
    assert resolve_genotype(tmp_path / "genotype.json") == g
    with pytest.raises(GenotypeError, match="published"):
        resolve_genotype("NOT_A_GENOTYPE")


def test_nb201_cell_trains_on_its_network():
    arch = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|skip_connect~0|none~1|avg_pool_3x3~2|"
    cfg = train_config(
        "nb201",
        dict(
            dataset="digits",
            channels=4,
            layers=1,
            epochs=1,
            batch_size=32,
            steps_per_epoch=2,
            channels_last=False,
        ),
    )
    r = train_genotype(arch, cfg, None, log=_quiet)
    assert r["network"] == "nb201" and 0.0 <= r["test_acc"] <= 1.0


def test_cli_info_darts_v2():
    res = CliRunner().invoke(app, ["info", "DARTS_V2"])
    assert res.exit_code == 0, res.output
    assert "3.3M (3,349,342" in res.output


def test_cli_train_writes_result(tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "train",
            "DARTS_V1",
            "--dataset",
            "digits",
            "--out",
            str(tmp_path / "t"),
            "--epochs",
            "1",
            "--channels",
            "4",
            "--layers",
            "2",
            "--batch",
            "32",
            "--set",
            "steps_per_epoch=1",
            "--set",
            "channels_last=false",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "t" / "result.json").read_text())
    assert r["epochs"] == 1 and r["config"]["channels"] == 4 and "test_acc" in r
    bad = CliRunner().invoke(app, ["train", "DARTS_V1", "--out", str(tmp_path / "u"), "--set", "bogus=1"])
    assert bad.exit_code == 2 and "bogus: unknown key" in bad.output
