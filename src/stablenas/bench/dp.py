"""``stablenas bench --nproc N``: the data-parallel first-order step, N ranks (torchrun, every rank
its slice of the global batch) against one process with the same global batch and all their
threads, and against one process with one rank's threads; rounds alternate the sides, so the
ratios are paired ones (``python -m stablenas.bench dp-worker '<json>'`` is one side of a round)."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict

import torch

from ..runs.lifecycle import sync
from .memory import config_of, json_subprocess
from .options import BenchConfig
from .steps import base_config, batches, make_search
from .timing import load1

DP_STEPS = 3  # timed first-order steps per round and side (after ``warmup`` untimed ones)


def dp_worker(spec: dict) -> dict:
    """One side of a data-parallel round: ``spec["ranks"]`` > 1 runs under torchrun (every rank its
    slice of the global batch), 1 is the single process. Times ``steps`` first-order steps
    (``Search.step``) between two barriers; the slowest rank's time is the job's."""
    from .. import distributed as dist

    bc = config_of(spec)
    torch.set_num_threads(int(spec["threads"]))
    d, _dev = dist.setup(bc.device)
    search = make_search(base_config(bc, "first"), bc)
    train, val = batches(search)
    for _ in range(bc.warmup):
        search.step(train, val)
    dist.barrier()
    sync(search.device)
    t0 = time.perf_counter()
    for _ in range(int(spec["steps"])):
        search.step(train, val)
    sync(search.device)
    mine = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    if d.active:
        import torch.distributed as td

        td.all_reduce(mine, op=td.ReduceOp.MAX)
    out = {"ranks": d.world, "threads": int(spec["threads"]), "per_rank_batch": int(train[1].shape[0]),
           "s_per_step": float(mine) / int(spec["steps"]), "device": str(search.device)}
    dist.shutdown()
    return out


def _dp_side(spec: dict, timeout: float) -> dict:
    import socket

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(spec["threads"])}
    body = ["-m", "stablenas.bench", "dp-worker", json.dumps(spec)]
    if spec["ranks"] > 1:
        with socket.socket() as sock:  # a free port for this round's rendezvous
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={spec['ranks']}",
               "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--local-ranks-filter=0", *body]
    else:
        cmd = [sys.executable, *body]
    return json_subprocess(cmd, env, timeout, "exited")


def _rounds(bc: BenchConfig, nproc: int, threads: int, rounds: int, steps: int, log: Callable[[str], None],
            timeout: float) -> tuple[list[dict], list[dict], list[dict], list[float]]:
    """Each round: the single process, the ranks, one rank's resources; their results and the loads."""
    conf = asdict(bc)
    single = {"config": conf, "ranks": 1, "threads": nproc * threads, "steps": steps}
    multi = {"config": conf, "ranks": nproc, "threads": threads, "steps": steps}
    narrow = {"config": conf, "ranks": 1, "threads": threads, "steps": steps}  # one rank's resources
    one, many, base, loads = [], [], [], []
    for r in range(rounds):
        loads.append(load1())
        a = _dp_side(single, timeout)
        b = _dp_side(multi, timeout)
        c = _dp_side(narrow, timeout)
        for side in (a, b, c):
            if "error" in side:
                raise RuntimeError(f"data-parallel bench: {side['error']}")
        one.append(a)
        many.append(b)
        base.append(c)
        log(f"dp round {r + 1}/{rounds}: 1 x {nproc * threads} threads {a['s_per_step']:.4f} s/step, "
            f"{nproc} ranks x {threads} {b['s_per_step']:.4f} s/step, 1 x {threads} {c['s_per_step']:.4f} "
            f"s/step (load {loads[-1]})")
    return one, many, base, loads


def run_dp_bench(bc: BenchConfig, nproc: int, threads: int = 1, rounds: int | None = None,
                 steps: int = DP_STEPS, log: Callable[[str], None] | None = None,
                 timeout: float = 900.0) -> dict:
    """First-order step time of ``nproc`` ranks x ``threads`` threads against one process with
    ``nproc * threads`` threads (on CUDA: one device against ``nproc``), both at the global batch
    ``bc.batch``; rounds alternate the two sides (paired ratios survive a noisy machine).

    ``speedup`` = single / ranks (paired median); ``efficiency`` = speedup / (the ranks' devices /
    the single side's): on CPU both sides get the same cores, so efficiency = speedup and 1 means
    ranks use the cores as well as intra-op threads; on CUDA it is speedup / nproc. A third side,
    one process with one rank's threads (one device), gives the plain scaling (ideal: nproc)."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if nproc < 2:
        raise ValueError(f"--nproc {nproc}: the data-parallel bench needs 2 or more ranks")
    if bc.batch % nproc:
        raise ValueError(f"--batch {bc.batch} is not divisible by --nproc {nproc} (the batch is global)")
    rounds = rounds or bc.repeats
    one, many, base, loads = _rounds(bc, nproc, threads, rounds, steps, log, timeout)
    t1 = [x["s_per_step"] for x in one]
    tn = [x["s_per_step"] for x in many]
    t0 = [x["s_per_step"] for x in base]
    speedup = statistics.median([a / b for a, b in zip(t1, tn)])
    scaling = statistics.median([c / b for c, b in zip(t0, tn)])
    cuda = many[0]["device"].startswith("cuda")
    return {"nproc": nproc, "threads_per_rank": threads, "single_threads": nproc * threads,
            "global_batch": bc.batch, "per_rank_batch": many[0]["per_rank_batch"], "device": many[0]["device"],
            "size": bc.size, "steps_per_round": steps, "rounds": rounds,
            "single_s": [round(v, 4) for v in t1], "ranks_s": [round(v, 4) for v in tn],
            "one_rank_resources_s": [round(v, 4) for v in t0],
            "speedup_paired_median": round(speedup, 3),
            # against one process with one rank's threads (one device): ideal nproc
            "scaling_vs_one_rank_paired_median": round(scaling, 3),
            "efficiency": round(speedup / (nproc if cuda else 1), 3), "load1": loads}


def format_dp(res: dict) -> str:
    """One line: the ranks against the single side, speedup, efficiency and the plain scaling."""
    side = "1 device" if res["device"].startswith("cuda") else f"1 process x {res['single_threads']} threads"
    return (f"data parallel ({res['size']}, global batch {res['global_batch']}, {res['per_rank_batch']} per rank, "
            f"{res['device']}): {res['nproc']} ranks x {res['threads_per_rank']} thread(s) "
            f"{statistics.median(res['ranks_s']):.4f} s/step vs {side} {statistics.median(res['single_s']):.4f} "
            f"s/step; speedup {res['speedup_paired_median']:.3f} (paired median of {res['rounds']} rounds), "
            f"efficiency {res['efficiency']:.3f}; against 1 process x {res['threads_per_rank']} thread(s) "
            f"{statistics.median(res['one_rank_resources_s']):.4f} s/step: "
            f"{res['scaling_vs_one_rank_paired_median']:.3f}x (ideal {res['nproc']}); load {res['load1']}")
