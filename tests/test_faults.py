"""Fault tests (issue 11): a real SIGKILL or SIGINT at several points of a search, then ``--resume``,
ends bit-identical to an uninterrupted run (alpha, weights, metrics) for one method of each kind;
a diverging run stops with its last good checkpoint; a second writer is refused.

The faults are real signals delivered to a real ``stablenas search`` process: a tiny driver patches
the loop to signal itself at a chosen global step (deterministic, unlike a timer).  The reference
and the resumed runs go in-process to keep the file fast.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import stablenas as sn
from stablenas.errors import DivergedError
from stablenas.search.loop import Search

TINY = ["data.dataset=digits", "data.subset=null", "data.batch_size=32", "data.eval_batch_size=64",
        "network.channels=8", "network.layers=2", "network.stem_multiplier=2", "optim.epochs=2",
        "optim.warmup_epochs=0", "search.steps_per_epoch=3", "search.val_batches=1", "space=s3",
        "network.channels_last=false", "threads=1", "evaluation.lookup=false"]

DRIVER = r"""
import os, signal, sys
from stablenas.search.loop import Search
from stablenas.cli import main
at, sig = int(sys.argv[1]), int(sys.argv[2])
orig = Search.weight_step
def step(self, batch):
    if self.global_step == at:
        os.kill(os.getpid(), sig)   # SIGKILL: dies here; SIGINT: the handler sets the flag
    return orig(self, batch)
Search.weight_step = step
main(sys.argv[3:])
"""


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(preset: str, extra=()):
    return sn.load_config(preset, [*TINY, *extra])


def _sets(preset: str, extra=()) -> list[str]:
    return [preset, *[a for s in (*TINY, *extra) for a in ("--set", s)], "--no-progress"]


def _records(path: Path) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _assert_same(ref, res, ref_dir: Path, res_dir: Path) -> None:
    for k, v in ref.search.arch.state_dict().items():
        assert torch.equal(v, res.search.arch.state_dict()[k]), k
    for k, v in ref.search.net.state_dict().items():
        assert torch.equal(v, res.search.net.state_dict()[k]), k
    assert ref.genotype == res.genotype
    assert _records(ref_dir / "metrics.jsonl") == _records(res_dir / "metrics.jsonl")


_REFS: dict[tuple, tuple] = {}


def _reference(preset: str, extra: tuple, tmp_path_factory):
    key = (preset, extra)
    if key not in _REFS:
        d = tmp_path_factory.mktemp("ref") / preset
        res = Search(_cfg(preset, extra), d, progress=False, log=lambda m: None).run()
        _REFS[key] = (res, d)
    return _REFS[key]


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
def test_signal_then_resume_is_bit_identical(preset, sig, at, tmp_path, tmp_path_factory):
    extra = ("search.checkpoint_every=1",)
    ref, ref_dir = _reference(preset, extra, tmp_path_factory)
    d = tmp_path / "cut"
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(at), str(int(sig)), "search", *_sets(preset, extra),
                           "--out", str(d)], capture_output=True, text=True, timeout=120)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert (d / "run.lock").exists()  # left behind by the dead process: must be taken over
    else:
        assert proc.returncode == 128 + sig, proc.stderr
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1 and "--resume" in errors[0] and "Traceback" not in proc.stderr
        assert not (d / "run.lock").exists()
        ck = torch.load(d / "checkpoint.pt", weights_only=True)
        assert ck["global_step"] == at + 1  # saved at the step the signal arrived in
    assert not (d / "genotype.json").exists()
    res = Search(_cfg(preset, extra), d, resume=True, progress=False, log=lambda m: None).run()
    _assert_same(ref, res, ref_dir, d)
    assert json.loads((d / "status.json").read_text())["state"] == "complete"


def test_sigkill_with_epoch_checkpoints_only_and_torn_metrics(tmp_path, tmp_path_factory):
    ref, ref_dir = _reference("darts", (), tmp_path_factory)
    d = tmp_path / "cut"
    proc = subprocess.run([sys.executable, "-c", DRIVER, "4", str(int(signal.SIGKILL)), "search", *_sets("darts"),
                           "--out", str(d)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')  # a kill in the middle of a write
    code = subprocess.run([sys.executable, "-m", "stablenas.cli", "show", str(d)], capture_output=True, text=True)
    assert code.returncode == 0 and "interrupted" in code.stdout, code.stdout + code.stderr
    res = Search(_cfg("darts"), d, resume=True, progress=False, log=lambda m: None).run()
    _assert_same(ref, res, ref_dir, d)


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


def test_second_writer_is_refused_while_the_first_runs(tmp_path):
    d = tmp_path / "r"
    slow = ["optim.epochs=3", "search.steps_per_epoch=40", "search.checkpoint_every=1"]
    cmd = [sys.executable, "-m", "stablenas.cli", "search", *_sets("darts", slow), "--out", str(d)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (d / "run.lock").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert (d / "run.lock").exists()
        for extra in ([], ["--resume"]):
            second = subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=120)
            errors = [ln for ln in second.stderr.splitlines() if ln.startswith("error: ")]
            assert second.returncode == 2 and len(errors) == 1, second.stderr
            assert f"process {first.pid}" in errors[0]
        show = subprocess.run([sys.executable, "-m", "stablenas.cli", "show", str(d)], capture_output=True,
                              text=True)
        assert f"running (pid {first.pid})" in show.stdout, show.stdout + show.stderr
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
