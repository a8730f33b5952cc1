"""Data parallelism (stablenas.distributed) on CPU with gloo, 2 ranks x 1 thread.

One spawned 2-rank job checks every method (tests/support/ddp_worker.py): at a fixed state the reduced
alpha / weight gradients, the hypergradient, lambda_max and iDARTS's Gram matrices equal a
one-process computation of the mean over the two shards; after K steps alpha and the genotype are
bit-identical on both ranks; the same seed gives the same bits twice. Then, through the launchers:
a 2-"node" torchrun (two launchers, c10d rendezvous on 127.0.0.1) completes, a
`stablenas search --nproc 2` killed with SIGKILL mid-epoch resumes to that run's final alpha, and
every signal to the launcher or a rank ends in one line with no process left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from support import ddp_worker
from support.ddp import assert_case_agrees, free_port, shared_job

from stablenas.data import TensorLoader
from stablenas.data.datasets import ImageDataset


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The results of one 2-rank job over every case (a rank's death: see support.ddp.shared_job)."""
    return shared_job(tmp_path_factory, [*ddp_worker.CASES, "train"])


@pytest.mark.parametrize("case", [*ddp_worker.CASES, "train"])
def test_two_ranks_reduce_to_the_mean_of_shards_and_stay_in_lockstep(job, case):
    assert_case_agrees(job, case)


def test_shards_are_disjoint_slices_of_the_global_batch_with_their_own_augmentation():
    from stablenas.data import Augment

    n = 40
    ds = ImageDataset(x=torch.randint(0, 255, (n, 1, 8, 8), dtype=torch.uint8), y=torch.arange(n) % 10,
                      mean=(0.5,), std=(0.25,), num_classes=10, name="t")
    aug = Augment(crop_padding=2, flip=True)
    one = TensorLoader(ds, None, 8, shuffle=True, drop_last=True, augment=None, seed=3)
    parts = []
    for r in range(2):
        ld = TensorLoader(ds, None, 8, shuffle=True, drop_last=True, augment=None, seed=3)
        ld.set_shard(r, 2)
        parts.append(ld.batch(1, 2))
    xg, yg = one.batch(1, 2)
    assert torch.equal(torch.cat([p[0] for p in parts]), xg) and torch.equal(torch.cat([p[1] for p in parts]), yg)
    # augmentation: on identical images, rank 1 does not repeat rank 0's random crops and flips
    img = torch.randint(0, 255, (1, 1, 8, 8), dtype=torch.uint8).expand(n, 1, 8, 8).contiguous()
    flat = ImageDataset(x=img, y=torch.zeros(n, dtype=torch.int64), mean=(0.5,), std=(0.25,), num_classes=10,
                        name="t")
    a = [TensorLoader(flat, None, 16, shuffle=False, drop_last=True, augment=aug, seed=3) for _ in range(2)]
    for r, ld in enumerate(a):
        ld.set_shard(r, 2)
    assert not torch.equal(a[0].batch(0, 0)[0], a[1].batch(0, 0)[0])
    with pytest.raises(ValueError, match="not divisible"):
        TensorLoader(ds, None, 9, drop_last=True).set_shard(0, 2)


# -- through the launcher: a 2-"node" torchrun, and --nproc killed with SIGKILL and resumed -------------

SEARCH = ["darts", "--threads", "1", "--log", "none", "--set", "space=s3", "--set", "data.dataset=digits",
          "--set", "data.subset=null", "--set", "data.batch_size=16", "--set", "network.channels=8",
          "--set", "network.layers=2", "--set", "network.stem_multiplier=2", "--set", "optim.epochs=2",
          "--set", "search.steps_per_epoch=6", "--set", "search.val_batches=1", "--set", "search.checkpoint_every=2",
          "--set", "network.channels_last=false"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _alpha(run: Path) -> dict:
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    return {"arch": ck["arch"], "epoch": ck["epoch"], "genotype": json.loads((run / "genotype.json").read_text())}


def _descendants(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        q = todo.pop()
        out.append(q)
        todo.extend(kids.get(q, []))
    return out


@pytest.fixture(scope="module")
def two_node_run(tmp_path_factory):
    """Two launchers (--nnodes 2, one rank each) meeting at a c10d rendezvous on 127.0.0.1."""
    out = tmp_path_factory.mktemp("nodes") / "run"
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
           f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=stablenas-test", "-m", "stablenas", "--", "search",
           *SEARCH, "--out", str(out)]
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    return out


def test_two_node_torchrun_completes(two_node_run):
    status = json.loads((two_node_run / "status.json").read_text())
    assert status["state"] == "complete"
    assert len((two_node_run / "metrics.jsonl").read_text().splitlines()) == 2


def test_nproc_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path, two_node_run):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "stablenas", "search", *SEARCH, "--out", str(out), "--nproc", "2"]
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").exists():  # the first checkpoint: epoch 1, step 2 of 6
        assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.poll() is not None else "slow"
        time.sleep(0.05)
    for pid in _descendants(p.pid):  # the whole job: launcher, torchrun agent, both ranks
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait()
    assert not (out / "genotype.json").exists()  # killed mid-search
    r = subprocess.run([*cmd, "--resume"], env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    got, want = _alpha(out), _alpha(two_node_run)
    assert got["genotype"] == want["genotype"]
    assert all(torch.equal(got["arch"][k], want["arch"][k]) for k in want["arch"])
    assert (out / "metrics.jsonl").read_text() == (two_node_run / "metrics.jsonl").read_text().replace(
        str(two_node_run), str(out)) or _same_numbers(out, two_node_run)


# -- the launcher's faults: every signal and every dead rank ends in one line, no process left behind ----------

LONG = [*SEARCH, "--set", "search.steps_per_epoch=20", "--no-progress"]  # ~40 steps: a signal lands mid-run


def _job(out: Path) -> dict[int, str]:
    """The live processes of the job writing ``out`` (its path is on their command line), by pid:
    ``"rank N"`` for a rank, ``"launcher"`` otherwise."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if str(out).encode() not in (d / "cmdline").read_bytes().split(b"\0"):
                continue
            if (d / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        rank = [e[5:].decode() for e in env if e.startswith(b"RANK=")]
        found[int(d.name)] = f"rank {rank[0]}" if rank else "launcher"
    return found


def _signal_job(out: Path, target: str, sig: int) -> tuple[int, str]:
    """Start ``search --nproc 2``, send ``sig`` to ``target`` ("launcher", "rank 0", "rank 1") once the
    first checkpoint is written; the launcher's exit code and stderr once no process of the job is left."""
    p = subprocess.Popen([sys.executable, "-m", "stablenas", "search", *LONG, "--out", str(out), "--nproc", "2"],
                         env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not ((out / "checkpoint.pt").exists() and {"rank 0", "rank 1"} <= set(_job(out).values())):
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.poll() is not None else "slow"
            time.sleep(0.05)
        pid = next(q for q, what in _job(out).items() if what == target) if target != "launcher" else p.pid
        os.kill(pid, sig)
        _, err = p.communicate(timeout=180)  # EOF: every rank closed its stderr too
        deadline = time.monotonic() + 30
        while _job(out) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _job(out), f"left running: {_job(out)}"
        return p.returncode, err
    finally:
        for q in [p.pid, *_job(out)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(q, signal.SIGKILL)


def _where(ck: dict) -> str:
    """Where a checkpoint stands, as the messages say it."""
    e, st = ck["epoch"], ck["step_in_epoch"]
    return f"epoch {e + 1}, step {st}" if st else f"the end of epoch {e}"


def _show(out: Path, capsys) -> str:
    """``stablenas show OUT`` in process: it only reads the run directory."""
    code, stdout, stderr = run_cli(["show", out], capsys)
    assert code == 0, stderr
    return stdout


@pytest.mark.parametrize("target,sig,code", [("launcher", signal.SIGINT, 130), ("launcher", signal.SIGKILL, -9)],
                         ids=["sigint-launcher", "sigkill-launcher"])
def test_a_signal_to_the_launcher_stops_every_rank_with_a_checkpoint(tmp_path, target, sig, code):
    """SIGINT to the launcher alone reaches every rank once; a SIGKILLed launcher's ranks get SIGTERM
    (they watch their parent). Either way they save a checkpoint at the same step, rank 0 says one line,
    and no rank outlives the command."""
    out = tmp_path / "run"
    rc, err = _signal_job(out, target, sig)
    assert rc == code, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    name = "SIGINT" if sig == signal.SIGINT else "SIGTERM"
    assert len(errors) == 1 and f"interrupted by {name}" in errors[0], err
    assert "--resume --nproc 2`" in errors[0] and "Traceback" not in err
    st = json.loads((out / "status.json").read_text())
    assert st["state"] == "interrupted" and st["reason"] == errors[0][len("error: "):]
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["world"] == 2 and f"at {_where(ck)}: checkpoint saved" in errors[0]
    assert not (out / "genotype.json").exists()


@pytest.mark.parametrize("dead", [1, 0])
def test_a_killed_rank_ends_the_job_in_one_line_per_survivor(tmp_path, capsys, dead):
    """SIGKILL to one rank: the survivor's collective breaks, and it says which rank died, that the
    last checkpoint is intact (the one on disk) and how to resume (exit 75); `show` says the same;
    no gloo message or traceback reaches the user. The resume command it prints finishes the run."""
    out = tmp_path / "run"
    rc, err = _signal_job(out, f"rank {dead}", signal.SIGKILL)
    assert rc == 75, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, err
    line = errors[0]
    assert line.startswith(f"error: rank {dead} died (process ") and "GLHF" not in err and "Traceback" not in err
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert f"the last checkpoint ({_where(ck).replace('the end', 'end')}) is intact" in line
    assert f"interrupted: rank {dead} died" in _show(out, capsys)
    again = line.split("resume with `")[1].rstrip("`").split()
    assert again[:2] == ["stablenas", "search"] and again[-2:] == ["--nproc", "2"]
    if dead == 1:  # one application of the hint is enough
        r = subprocess.run([sys.executable, "-m", "stablenas", *again[1:], "--log", "none", "--no-progress"],
                           env=ENV, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads((out / "status.json").read_text())["state"] == "complete"


def test_nproc_refuses_a_space_whose_data_cannot_be_split_before_starting_ranks(tmp_path, capsys):
    from stablenas.cli import main

    out = tmp_path / "ptb"
    for argv in (["search", "ptb-cpu", "--out", str(out), "--nproc", "2"],
                 ["search", "quickstart", "--out", str(out), "--nproc", "2", "--set", "data.batch_size=33"]):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
        assert ("space ptb: the rnn skeleton's data streams cannot be split across 2 ranks" in err
                or "data.batch_size 33 is not divisible by the 2 ranks" in err)
        assert not out.exists()


def _same_numbers(a: Path, b: Path) -> bool:
    ra = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    drop = ("seconds",)
    return [{k: v for k, v in r.items() if k not in drop} for r in ra] == \
        [{k: v for k, v in r.items() if k not in drop} for r in rb]


def test_amp_fp16_needs_cuda_and_bf16_runs_on_cpu(capsys):
    from stablenas.config import ConfigError
    from stablenas.evaluate.train import train_config
    from stablenas.evaluate.trainer import ImageTrainer
    from stablenas.genotype import Genotype

    g = Genotype(space="s5", normal=(("sep_conv_3x3", 0), ("skip_connect", 1)), normal_concat=(2,),
                 reduce=(("max_pool_3x3", 0), ("sep_conv_3x3", 1)), reduce_concat=(2,))
    base = dict(dataset="digits", channels=8, layers=3, stem_multiplier=2, epochs=1, batch_size=16,
                steps_per_epoch=1, channels_last=True, evaluate_test=False, device="cpu")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        ImageTrainer(g, train_config(None, {**base, "amp": "fp16"}), None, resume=False, progress=False, log=print)
    said = []
    t = ImageTrainer(g, train_config(None, {**base, "amp": "bf16"}), None, resume=False, progress=False,
                     log=said.append)
    assert any("slower" in m for m in said)
    loss, _ = t.backward(*t.train_loader.batch(0, 0))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)  # CE autocasts to fp32
    grads = [p.grad for p in t.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)


def test_dp_bench_refuses_what_it_cannot_compare():
    from stablenas.bench import run_dp_bench, sized

    with pytest.raises(ValueError, match="not divisible"):
        run_dp_bench(sized("cpu-study", batch=63), 2)
    with pytest.raises(ValueError, match="2 or more"):
        run_dp_bench(sized("cpu-study"), 1)
