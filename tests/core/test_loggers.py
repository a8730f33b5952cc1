"""Live logging: TensorBoard event files written while a search runs, read back; optional
backends through fakes (no network); clear errors for a backend that is not installed."""

import sys
import types

import pytest
from typer.testing import CliRunner

import stablenas as sn
from stablenas.cli import app
from stablenas.config import ConfigError
from stablenas.loggers import (
    epoch_scalars,
    make_loggers,
    op_weight_scalars,
    parse_backends,
    read_tensorboard_scalars,
)

pytest.importorskip("tensorboard")


def test_search_writes_live_tensorboard_scalars(tmp_path, tiny_overrides):
    cfg = sn.load_config("darts", tiny_overrides + ["space=s3", "optim.epochs=3",
                                                   "methods=[{name: hessian, every: 1, batches: 1, iters: 4}]"])
    seen_during_run = {}
    lines = []

    def log(msg):
        lines.append(msg)
        # after epoch 2's line the event file already holds epoch 2: it is live, not written at the end
        if msg.startswith("epoch 2/3"):
            seen_during_run.update(read_tensorboard_scalars(tmp_path / "run" / "tensorboard"))

    result = sn.run_search(cfg, tmp_path / "run", progress=False, log=log, loggers="tensorboard")
    assert [s for s, _ in seen_during_run["search/val_acc"]] == [1, 2]
    final = read_tensorboard_scalars(tmp_path / "run" / "tensorboard")
    m = result.metrics
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "lambda_max"):
        got = final[f"search/{key}"]
        assert [s for s, _ in got] == [1, 2, 3]
        assert [v for _, v in got] == pytest.approx([r[key] for r in m], rel=1e-6)
    # per-step losses: one per weight step, 3 steps per epoch
    assert [s for s, _ in final["step/train_loss"]] == list(range(1, 10))
    # op weights per edge i->j equal the record's
    space = sn.get_space("s3")
    for e, (i, j) in enumerate(space.edges):
        for k, op in enumerate(space.edge_ops["normal"][e]):
            vals = [v for _, v in final[f"op_weights/normal/{i}->{j}/{op}"]]
            assert vals == pytest.approx([r["op_weights"]["normal"][e][k] for r in m], abs=1e-6)
    # parameter-free share of the derived normal cell, epoch by epoch
    from stablenas.analysis.diagnostics import cell_stats

    want = [cell_stats(sn.Genotype.from_dict(r["genotype"]))["normal"]["param_free_share"] for r in m]
    assert [v for _, v in final["param_free_share/normal"]] == pytest.approx(want)
    # the epoch line shows lambda_max when tracked
    ep = [x for x in lines if x.startswith("epoch 1/3")][0]
    assert f"lambda_max {m[0]['lambda_max']:.4g}" in ep
    assert any(x.startswith("estimate: ") for x in lines)


def test_epoch_scalars_take_numbers_only():
    rec = {"epoch": 3, "val_acc": 0.5, "alpha_frozen": False, "epsilon": 0.03, "tau": 2.0,
           "genotype": {}, "rs_ws": {"best_val_acc": 0.7, "samples": 4}, "note": "x", "bad": float("nan")}
    assert epoch_scalars(rec) == {"search/val_acc": 0.5, "search/epsilon": 0.03, "search/tau": 2.0,
                                  "search/rs_ws/best_val_acc": 0.7, "search/rs_ws/samples": 4.0}
    got = op_weight_scalars({"normal": [[0.2, 0.8]]}, {"normal": [["skip_connect", "sep_conv_3x3"]]}, [(0, 2)])
    assert got == {"op_weights/normal/0->2/skip_connect": 0.2, "op_weights/normal/0->2/sep_conv_3x3": 0.8}


def test_backend_choice_and_errors(monkeypatch):
    assert parse_backends("none") == []
    assert parse_backends("auto") == ["tensorboard"]
    assert parse_backends("tensorboard,tensorboard") == ["tensorboard"]
    with pytest.raises(ConfigError, match="unknown logger"):
        parse_backends("neptune")
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ConfigError, match=r"wandb package is not installed \(pip install wandb\)"):
        make_loggers("wandb", None)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ConfigError, match="mlflow package is not installed"):
        make_loggers("mlflow", None)


def test_cli_logger_not_installed_is_one_line_exit_2(tmp_path, monkeypatch, tiny_overrides):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    args = ["search", "darts", "--out", str(tmp_path / "r"), "--log", "mlflow"]
    for o in tiny_overrides:
        args += ["--set", o]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1].startswith("error: logger mlflow: the mlflow package")


class _FakeWandbRun:
    def __init__(self):
        self.logged, self.finished = [], False

        class Cfg(dict):
            def update(self, d, allow_val_change=False):
                dict.update(self, d)

        self.config = self.config_obj = Cfg()

    def log(self, d, step):
        self.logged.append((step, dict(d)))

    def finish(self):
        self.finished = True


def test_wandb_and_mlflow_backends_receive_the_scalars(tmp_path, monkeypatch, tiny_overrides):
    run = _FakeWandbRun()
    wandb = types.ModuleType("wandb")
    wandb.init = lambda **kw: run
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    ml = types.ModuleType("mlflow")
    ml.metrics, ml.params, ml.ended = [], {}, False
    ml.start_run = lambda run_name=None: object()
    ml.log_metrics = lambda d, step: ml.metrics.append((step, dict(d)))
    ml.log_params = lambda d: ml.params.update(d)

    def end():
        ml.ended = True

    ml.end_run = end
    monkeypatch.setitem(sys.modules, "mlflow", ml)
    cfg = sn.load_config("darts", tiny_overrides + ["space=s3"])
    warnings = []
    result = sn.run_search(cfg, tmp_path / "run", progress=False, log=warnings.append, loggers="wandb,mlflow")
    assert not [w for w in warnings if "failed" in w], warnings
    epochs_w = [(s, d["search/val_acc"]) for s, d in run.logged if "search/val_acc" in d]
    assert epochs_w == [(r["epoch"], pytest.approx(r["val_acc"])) for r in result.metrics]
    assert run.finished and run.config_obj["space"] == "s3"
    epochs_m = [(s, d["search/val_acc"]) for s, d in ml.metrics if "search/val_acc" in d]
    assert epochs_m == epochs_w
    # MLflow names: no '>' characters
    assert all(">" not in k for _, d in ml.metrics for k in d)
    assert ml.ended and ml.params["data.dataset"] == "digits"
    assert not (tmp_path / "run" / "tensorboard").exists()  # only the chosen backends


def test_train_logs_epochs_to_tensorboard(tmp_path):
    from stablenas.evaluate.train import train_config, train_genotype

    cfg = train_config("darts-small", dataset="digits", epochs=2, channels=8, layers=2, batch_size=32,
                       steps_per_epoch=3, test_subset=64, auxiliary=False, channels_last=False)
    res = train_genotype("DARTS_V2", cfg, tmp_path / "t", progress=False, log=lambda s: None,
                         loggers="tensorboard")
    got = read_tensorboard_scalars(tmp_path / "t" / "tensorboard")
    assert [s for s, _ in got["train/train_loss"]] == [1, 2]
    assert [s for s, _ in got["step/train_loss"]] == list(range(1, 7))
    assert got["final/test_acc"][0][1] == pytest.approx(res["test_acc"])
