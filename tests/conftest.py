"""Fixtures and helpers shared by the test modules in every folder (import the helpers with ``from conftest
import ...``; ``pythonpath`` in pyproject.toml puts this directory on sys.path). Helpers that only some
folders share live in ``support/``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# the shared helpers' assertions report their operands as a test module's do
pytest.register_assert_rewrite("support")

# Note: torch 2.13's CPU oneDNN backward was seen to corrupt the heap with ONE intra-op thread on
# 4-channel supernets fed 8x8 digits (free(): invalid size); the tiny test nets use 8 channels and the
# default thread count unless a module asks for `one_thread`.

# the one tiny search: digits, 2 cells of 8 channels, 2 epochs of 3 steps, in seconds (the preset's
# space unless a test says otherwise); each test module adds only what it tests
TINY = ["data.dataset=digits", "data.subset=null", "data.batch_size=32", "network.channels=8", "network.layers=2",
        "network.stem_multiplier=2", "optim.epochs=2", "search.steps_per_epoch=3", "network.channels_last=false"]
# the methods' harnesses: small evaluation batches, alpha trained from the first step whatever the preset
TINY_SEARCH = [*TINY, "data.eval_batch_size=64", "optim.warmup_epochs=0"]
# a method's own tests: the harness's settings with two validation batches per epoch end
TINY_METHOD = [*TINY_SEARCH, "search.val_batches=2"]


def preset_search(preset: str, *extra: str, out: Path | None = None, resume: bool = False):
    """A quiet ``Search`` of ``preset`` at ``TINY_METHOD`` plus ``extra`` overrides."""
    import stablenas as sn
    from stablenas.search.loop import Search

    return Search(sn.load_config(preset, [*TINY_METHOD, *extra]), out, resume=resume, progress=False,
                  log=lambda m: None)


@pytest.fixture(autouse=True)
def _engine_defaults(monkeypatch, tmp_path_factory):
    """Every test runs its device's engine defaults: a `stablenas bench --tune` file in the user's cache
    is not read (the directory named here holds none unless a test writes one)."""
    monkeypatch.setenv("STABLENAS_ENGINE_DIR", str(tmp_path_factory.getbasetemp() / "engine-cache"))


@pytest.fixture
def tiny_overrides():
    """The tiny search (``TINY``) with two validation batches per epoch end."""
    return [*TINY, "search.val_batches=2"]


@pytest.fixture
def hold_lock():
    """Hold a run directory's lock from another process (a plain flock, as a live writer does);
    returns a function path -> Popen; every holder is killed at teardown."""
    procs: list[subprocess.Popen] = []

    def hold(path: Path) -> subprocess.Popen:
        code = ("import fcntl, os, sys, time\n"
                f"fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                "os.ftruncate(fd, 0); os.write(fd, f'{os.getpid()}\\n'.encode())\n"
                "print('held', flush=True)\n"
                "time.sleep(60)\n")
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p

    yield hold
    for p in procs:
        p.kill()
        p.wait()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny dispatch-bound nets on a busy shared machine: one intra-op thread (with two, the OpenMP
    workers spin-wait on each other and a 0.1 s forward took ~10 s); restored after the module.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_cli(argv: list, capsys) -> tuple[int, str, str]:
    """``stablenas ARGV`` in-process: (exit code, stdout, stderr); a SystemExit is the exit code."""
    from stablenas.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


def metric_records(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl without wall-clock ``seconds``, the one field allowed to differ
    between an interrupted-and-resumed run and an uninterrupted one."""
    rows = [json.loads(x) for x in Path(path).read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def assert_same_search(ref, res, ref_dir: Path, res_dir: Path) -> None:
    """Two finished searches are bit-identical: alpha, weights (and BN buffers), genotype, metrics."""
    for mine, theirs in ((ref.search.arch, res.search.arch), (ref.search.net, res.search.net)):
        other = theirs.state_dict()  # once, not per key: a supernet's state dict walks every module
        for k, v in mine.state_dict().items():
            assert torch.equal(v, other[k]), k
    assert ref.genotype == res.genotype
    assert metric_records(Path(ref_dir) / "metrics.jsonl") == metric_records(Path(res_dir) / "metrics.jsonl")
