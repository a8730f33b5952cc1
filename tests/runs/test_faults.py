"""Fault tests: a real SIGKILL or SIGINT at several points of a search, then ``--resume``,
ends bit-identical to an uninterrupted run (alpha, weights, metrics) for one method of each kind;
a diverging run stops with its last good checkpoint; a second writer is refused.

The faults are real signals delivered to real ``stablenas search`` processes: one driver process
imports torch and stablenas once and forks a fresh child per case, which patches the loop to signal
itself at a chosen global step (deterministic, unlike a timer) and runs the CLI; the driver reports
the child's exit status as a parent shell would (``-9`` for SIGKILL). Forking instead of starting a
new interpreter per case saves the imports (~1.4 s of CPU each) and changes nothing the tests look
at: the child is its own process with its own run lock, signal handlers and stderr. The reference
and the resumed runs go in-process to keep the file fast; the second-writer checks run in-process
against a real running writer (the lock is an OS file lock, so that is the same check).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_same_search
from support.faults import FAULT_TINY, cut  # noqa: F401 (cut: the SIGKILL driver fixture)
from support.ptb import rnn_cfg, synthetic_corpus
from support.training import s5_genotype, tiny_train

import stablenas as sn
from stablenas.cli import main
from stablenas.errors import EXIT_NO_SPACE, DivergedError, InterruptedRun
from stablenas.search.loop import Search

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(preset: str, extra=()):
    return sn.load_config(preset, [*FAULT_TINY, *extra])


def _sets(preset: str, extra=()) -> list[str]:
    return [preset, *[a for s in (*FAULT_TINY, *extra) for a in ("--set", s)], "--no-progress"]


_REFS: dict[tuple, tuple] = {}


def _reference(preset: str, extra: tuple, tmp_path_factory):
    key = (preset, extra)
    if key not in _REFS:
        d = tmp_path_factory.mktemp("ref") / preset
        res = Search(_cfg(preset, extra), d, progress=False, log=lambda m: None).run()
        _REFS[key] = (res, d)
    return _REFS[key]


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """The CLI in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0
    out = capsys.readouterr()
    return code, out.out, out.err


# one method of each kind: bilevel (DARTS 1st order), perturbation (SDARTS-RS), sampling (GDAS),
# single-level (Single-DARTS), second order (DARTS unrolled); signal at several global steps
# (3 steps per epoch: step 1 = mid epoch 1, step 3 = first step of epoch 2, step 4 = mid epoch 2)
CASES = [
    ("darts", signal.SIGKILL, 1), ("darts", signal.SIGKILL, 3), ("darts", signal.SIGINT, 4),
    ("sdarts-rs", signal.SIGKILL, 4), ("sdarts-rs", signal.SIGINT, 1),
    ("gdas", signal.SIGKILL, 2), ("gdas", signal.SIGINT, 4),
    ("single-darts", signal.SIGKILL, 4),
    ("darts-2nd", signal.SIGTERM, 4),
]


@pytest.mark.parametrize("preset,sig,at", CASES,
                         ids=[f"{p}-{signal.Signals(s).name}-step{a}" for p, s, a in CASES])
def test_signal_then_resume_is_bit_identical(preset, sig, at, tmp_path, tmp_path_factory, cut):  # noqa: F811
    extra = ("search.checkpoint_every=1",)
    ref, ref_dir = _reference(preset, extra, tmp_path_factory)
    d = tmp_path / "cut"
    code, stderr = cut(at, sig, ["search", *_sets(preset, extra), "--out", str(d)], tmp_path / "stderr")
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL, stderr
        assert (d / "run.lock").exists()  # left behind by the dead process: must be taken over
    else:
        assert code == 128 + sig, stderr
        errors = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1 and "--resume" in errors[0] and "Traceback" not in stderr
        assert not (d / "run.lock").exists()
        ck = torch.load(d / "checkpoint.pt", weights_only=True)
        assert ck["global_step"] == at + 1  # saved at the step the signal arrived in
    assert not (d / "genotype.json").exists()
    res = Search(_cfg(preset, extra), d, resume=True, progress=False, log=lambda m: None).run()
    assert_same_search(ref, res, ref_dir, d)
    assert json.loads((d / "status.json").read_text())["state"] == "complete"


def test_sigkill_with_epoch_checkpoints_only_and_torn_metrics(tmp_path, tmp_path_factory, cut, capsys):  # noqa: F811
    ref, ref_dir = _reference("darts", (), tmp_path_factory)
    d = tmp_path / "cut"
    code, stderr = cut(4, signal.SIGKILL, ["search", *_sets("darts"), "--out", str(d)], tmp_path / "stderr")
    assert code == -signal.SIGKILL, stderr
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')  # a kill in the middle of a write
    code, out, err = _cli(["show", str(d)], capsys)
    assert code == 0 and "interrupted" in out, out + err
    res = Search(_cfg("darts"), d, resume=True, progress=False, log=lambda m: None).run()
    assert_same_search(ref, res, ref_dir, d)


@pytest.mark.parametrize("target", ["weights", "alpha"])
def test_nan_stops_with_the_last_good_checkpoint(tmp_path, monkeypatch, target):
    orig = Search.weight_step

    def poisoned(self, batch):
        if self.global_step == 4:  # epoch 2, step 2
            p = next(self.net.parameters()) if target == "weights" else next(self.arch.parameters())
            with torch.no_grad():
                p.view(-1)[0] = float("nan")
        return orig(self, batch)

    monkeypatch.setattr(Search, "weight_step", poisoned)
    d = tmp_path / "nan"
    s = Search(_cfg("darts", ("search.checkpoint_every=1",)), d, progress=False, log=lambda m: None)
    with pytest.raises(DivergedError, match=r"epoch 2, step 2") as err:
        s.run()
    assert "last good checkpoint" in str(err.value) and "no genotype" in str(err.value)
    ck = torch.load(d / "checkpoint.pt", weights_only=True)
    assert (ck["epoch"], ck["step_in_epoch"]) == (1, 1)  # the step before the poisoned one
    assert all(torch.isfinite(v).all() for v in ck["net"].values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in ck["arch"].values())
    assert not (d / "genotype.json").exists()
    assert [r["epoch"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())] == [1]
    st = json.loads((d / "status.json").read_text())
    assert st["state"] == "diverged" and "epoch 2, step 2" in st["reason"]
    assert not (d / "run.lock").exists()


def test_second_writer_is_refused_while_the_first_runs(tmp_path, capsys):
    d = tmp_path / "r"
    slow = ["optim.epochs=3", "search.steps_per_epoch=40", "search.checkpoint_every=1"]
    argv = ["search", *_sets("darts", slow), "--out", str(d)]
    first = subprocess.Popen([sys.executable, "-m", "stablenas.cli", *argv], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (d / "run.lock").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert (d / "run.lock").exists()
        for extra in ([], ["--resume"]):  # refused before any work: in this process
            code, _out, err = _cli([*argv, *extra], capsys)
            errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
            assert code == 2 and len(errors) == 1, err
            assert f"process {first.pid}" in errors[0]
        code, out, err = _cli(["show", str(d)], capsys)
        assert f"running (pid {first.pid})" in out, out + err
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 143  # interrupted cleanly: checkpoint saved, lock released
    assert not (d / "run.lock").exists()
    st = json.loads((d / "status.json").read_text())
    assert st["state"] == "interrupted"


def test_two_writers_started_together_one_refuses(tmp_path):
    d = tmp_path / "r"
    cmd = [sys.executable, "-m", "stablenas.cli", "search", *_sets("darts", ["optim.epochs=1"]), "--out", str(d)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    loser = outs[[p.returncode for p in procs].index(2)][1]
    assert len([ln for ln in loser.splitlines() if ln.startswith("error: ")]) == 1
    assert ("being written" in loser) or ("already holds a run" in loser)
    assert [r["epoch"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())] == [1]


# --------------------------------------------------------------------------------------------- full disk


def _full_disk(monkeypatch, name: str | None = None, after: int = 0) -> dict:
    """A file system that fills up: ``fsync`` of the atomic writer's temp files raises ENOSPC from the
    temp file of ``name`` number ``after + 1`` on (every temp file when ``name`` is None), as a disk
    with no block left reports it; an existing file rewritten in place still works. ``state["kept"]``:
    the bytes of ``name`` when the disk filled."""
    real = os.fsync
    state: dict = {"seen": 0, "full": name is None, "kept": None}

    def fsync(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            if not state["full"] and path.name.startswith(f".{name}."):
                state["seen"] += 1
                if state["seen"] > after:
                    state["full"] = True
                    state["kept"] = (path.parent / name).read_bytes()
            if state["full"]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return state


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_full_disk_mid_run_is_one_line_and_resumes_bit_identical(tmp_path, tmp_path_factory, capsys, monkeypatch):
    ref, ref_dir = _reference("darts", (), tmp_path_factory)
    d = tmp_path / "full"
    disk = _full_disk(monkeypatch, "checkpoint.pt", after=1)  # the checkpoint of epoch 2 finds the disk full
    code, _out, err = _cli(["search", *_sets("darts"), "--out", str(d), "--log", "none"], capsys)
    monkeypatch.undo()
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert code == EXIT_NO_SPACE and len(errors) == 1 and "Traceback" not in err, err
    for part in ("no space left on ", f"while writing {d / 'checkpoint.pt'}", "the last checkpoint (end of epoch 1) "
                 "is intact", f"--out {d} --resume"):
        assert part in errors[0], (part, errors[0])
    assert (d / "checkpoint.pt").read_bytes() == disk["kept"]  # the epoch-1 checkpoint, byte for byte
    assert sorted(p.name for p in d.iterdir()) == ["checkpoint.pt", "config.yaml", "metrics.jsonl", "status.json"]
    st = json.loads((d / "status.json").read_text())  # rewritten in place: no new block needed
    assert st["state"] == "interrupted" and "no space left" in st["reason"]
    code, out, _err = _cli(["show", str(d)], capsys)
    assert code == 0 and "interrupted: no space left" in out
    res = Search(_cfg("darts"), d, resume=True, progress=False, log=lambda m: None).run()
    assert_same_search(ref, res, ref_dir, d)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_full_disk_at_the_start_leaves_nothing(tmp_path, capsys, monkeypatch):
    d = tmp_path / "full"
    _full_disk(monkeypatch)
    code, _out, err = _cli(["search", *_sets("darts"), "--out", str(d), "--log", "none"], capsys)
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert code == EXIT_NO_SPACE and len(errors) == 1 and "Traceback" not in err, err
    assert f"while writing {d / 'config.yaml'}" in errors[0] and "nothing was kept" in errors[0], errors[0]
    assert not d.exists()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_full_disk_in_training_keeps_the_last_epoch(tmp_path, capsys, monkeypatch):
    g = tmp_path / "g.json"
    g.write_text(json.dumps({"space": "s5", "normal": [["sep_conv_3x3", 0], ["skip_connect", 1]], "normal_concat": [2],
                             "reduce": [["max_pool_3x3", 0], ["sep_conv_3x3", 1]], "reduce_concat": [2]}))
    d = tmp_path / "train"
    argv = ["train", str(g), "--out", str(d), "--dataset", "digits", "--epochs", "2", "--channels", "8", "--layers",
            "2", "--batch", "32", "--set", "steps_per_epoch=2", "--set", "auxiliary=false", "--no-progress",
            "--log", "none"]
    disk = _full_disk(monkeypatch, "checkpoint.pt", after=1)
    code, _out, err = _cli(argv, capsys)
    monkeypatch.undo()
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert code == EXIT_NO_SPACE and len(errors) == 1 and "Traceback" not in err, err
    assert "the last checkpoint (after epoch 1) is intact" in errors[0] and "--resume" in errors[0], errors[0]
    assert (d / "checkpoint.pt").read_bytes() == disk["kept"]
    assert not (d / "result.json").exists()
    code, _out, err = _cli([*argv, "--resume"], capsys)
    assert code == 0, err
    assert [r["epoch"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())] == [1, 2]
    assert json.loads((d / "result.json").read_text())["epochs"] == 2


def _sigint_after(obj, name: str, when) -> None:
    """Wrap ``obj.<name>``: after the first call at which ``when()`` holds, a real SIGINT arrives, which the
    run's own handler (installed by ``run()``) must catch."""
    orig, fired, found = getattr(obj, name), [], signal.getsignal(signal.SIGINT)

    def wrapped(*a, **kw):
        out = orig(*a, **kw)
        if not fired and when():
            fired.append(True)
            assert signal.getsignal(signal.SIGINT) is not found, "no stop handler installed"
            signal.raise_signal(signal.SIGINT)
        return out

    setattr(obj, name, wrapped)


def _stopped_search(out: Path, tmp_path_factory):
    cfg = _cfg("darts")
    ref, ref_dir = _reference("darts", (), tmp_path_factory)
    run = Search(cfg, out / "run", progress=False, log=lambda m: None)
    _sigint_after(run, "weight_step", lambda: run.epoch == 1 and run.step_in_epoch == 1)  # epoch 2, step 2
    resume = lambda: Search(cfg, out / "run", resume=True, progress=False, log=lambda m: None).run()  # noqa: E731

    def same(a, b) -> None:
        assert_same_search(a, b, ref_dir, out / "run")

    return run, resume, ref, same


def _stopped_training(out: Path, _factory):
    from stablenas.evaluate.train import train_genotype
    from stablenas.evaluate.trainer import ImageTrainer

    cfg = tiny_train(epochs=3, auxiliary=True, drop_path=0.3)
    ref = train_genotype(s5_genotype(), cfg, out / "ref", log=lambda m: None)
    run = ImageTrainer(s5_genotype(), cfg, out / "run", resume=False, progress=False, log=lambda m: None)
    _sigint_after(run, "_train_step", lambda: run.epoch == 1)  # in epoch 2: the checkpoint of epoch 1 is kept
    resume = lambda: train_genotype(s5_genotype(), cfg, out / "run", resume=True, log=lambda m: None)  # noqa: E731

    def same(a, b) -> None:
        assert (a["test_acc"], a["test_loss"]) == (b["test_acc"], b["test_loss"])
        wa, wb = (torch.load(out / d / "checkpoint.pt", weights_only=True)["model"] for d in ("ref", "run"))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)

    return run, resume, ref, same


def _stopped_recurrent(out: Path, _factory):
    from stablenas.skeletons.rnn.genotype import DARTS_V2_RNN
    from stablenas.skeletons.rnn.train import RNNTrainer

    corpus, cfg = synthetic_corpus(lines=60), rnn_cfg(epochs=2)
    ref = RNNTrainer(DARTS_V2_RNN, cfg, out / "ref", corpus=corpus, log=lambda m: None).run()
    run = RNNTrainer(DARTS_V2_RNN, cfg, out / "run", corpus=corpus, log=lambda m: None)
    _sigint_after(run, "train_step", lambda: run.epoch == 1 and run.stream.position == 2)  # epoch 2, window 2
    resume = lambda: RNNTrainer(DARTS_V2_RNN, cfg, out / "run", corpus=corpus, resume=True,  # noqa: E731
                                log=lambda m: None).run()

    def same(a, b) -> None:
        assert (a["test_loss"], a["valid_loss"]) == (b["test_loss"], b["valid_loss"])

    return run, resume, ref, same


@pytest.mark.parametrize("kind", ["search", "training", "recurrent"])
def test_sigint_stops_every_kind_of_run_alike(kind, tmp_path, tmp_path_factory):
    """A search, an image training and a recurrent training, each stopped by SIGINT mid-epoch: InterruptedRun
    (exit 130), status "interrupted", the stop handler gone again, and a checkpoint from which the resumed
    run ends as the uninterrupted one does."""
    torch.set_num_threads(1)
    make = {"search": _stopped_search, "training": _stopped_training, "recurrent": _stopped_recurrent}[kind]
    run, resume, ref, same = make(tmp_path, tmp_path_factory)
    found = signal.getsignal(signal.SIGINT)
    with pytest.raises(InterruptedRun) as e:
        run.run()
    assert e.value.exit_code == 130 and "interrupted by SIGINT" in str(e.value) and "--resume" in str(e.value)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "interrupted" and status["reason"] == str(e.value)
    assert signal.getsignal(signal.SIGINT) is found  # the run restored the handler it found
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    same(ref, resume())
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "complete"
