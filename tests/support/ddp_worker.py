"""One 2-rank gloo job that checks every method under data parallelism (tests/core/test_distributed.py).

Run per rank (torch.multiprocessing.spawn). For each case, at a fixed state: the gradients the ranks
reduce (alpha, weights, hypergradient, lambda_max, iDARTS Gram matrices) against a one-process
reference on the two shards, computed on rank 0 with the collectives switched off; then K steps
after which alpha and the genotype must be bit-identical on both ranks; then the same K steps of a
second search with the same seed, which must give the same alpha bits.
"""

from __future__ import annotations

import copy
import json
import os
import traceback

import torch
from conftest import TINY_SEARCH

TINY = [*TINY_SEARCH, "space=s3", "search.val_batches=2", "data.crop_padding=2", "data.flip=true", "threads=1"]
CASES = {
    "darts": ("darts", []),
    "darts-2nd-fd": ("darts-2nd", ["search.unrolled_hvp=finite-difference"]),
    "darts-2nd-autograd": ("darts-2nd", ["search.unrolled_hvp=autograd"]),
    "sdarts-rs": ("sdarts-rs", []),
    "sdarts-adv": ("sdarts-adv", ["methods.0.steps=2"]),
    "ms-darts": ("ms-darts", []),
    "single-darts": ("single-darts", []),
    "gdas": ("gdas", []),
    "drnas": ("drnas", []),
    "snas": ("snas", []),
    "pc-darts": ("pc-darts", []),
    "idarts": ("idarts", ["methods.0.images=48", "methods.0.batch_size=16"]),
    "hessian": ("darts", ["methods=[{name: hessian, iters: 6}]"]),
    "rs-ws": ("rs-ws", []),
    "darts-es": ("darts-es", ["methods.0.iters=4"]),
    "beta-darts": ("beta-darts", ["methods.0.start=5.0"]),  # lambda > 0 from epoch 0: the term in play
    "fair-darts": ("fair-darts", []),
    "budget": ("darts", ["methods=[{name: budget, max_madds: 0.01}]"]),  # over budget: the penalty in play
    "darts-minus": ("darts-minus", ["network.layers=3"]),  # 3 cells: the reduction edges' FactorizedReduce path
    "oles": ("oles", ["methods.0.window=1"]),  # a freeze decision at every step, from the reduced gradients
    "lambda-darts": ("lambda-darts", ["methods.0.ramp=false"]),  # the term in play from step 1
    "drnas-progressive": ("drnas-progressive", ["network.channels=12", "network.layers=3", "optim.epochs=2",
                                                "methods.0.stages=[1, 1]", "methods.0.stage_warmup_epochs=0"]),
}
# the epoch a case starts at: progressive DrNAS's second stage, pruned and widened by each rank alone
START = {"drnas-progressive": 1}
K = 3


class _Shards:
    """The skeleton seen through a list of shard batches: every loss is the mean of the shard
    losses (the objective the ranks optimise together), computed in one process."""

    def __init__(self, sk):
        self._sk = sk

    def __getattr__(self, name):
        return getattr(self._sk, name)

    def _each(self, search, fn, xs, ys) -> list:
        """``fn`` on every shard from the same BN statistics, which end as the mean of the shards'
        updates (what the ranks hold after their buffer average)."""
        slots = [(m, n) for m in search.net.modules() for n, b in m._buffers.items()
                 if b is not None and b.is_floating_point()]
        start = [m._buffers[n].clone() for m, n in slots]
        outs, after = [], []
        for xi, yi in zip(xs, ys):
            for (m, n), s0 in zip(slots, start):  # fresh tensors: the graphs keep the ones they saw
                m._buffers[n] = s0.clone()
            outs.append(fn(xi, yi))
            after.append([m._buffers[n] for m, n in slots])
        for k, (m, n) in enumerate(slots):
            m._buffers[n] = sum(a[k] for a in after) / len(after)
        return outs

    def loss(self, search, x, y, mix, params=None):
        if isinstance(x, torch.Tensor):
            return self._sk.loss(search, x, y, mix, params)
        parts = self._each(search, lambda xi, yi: self._sk.loss(search, xi, yi, mix, params), x, y)
        return sum(parts) / len(parts)

    def weight_loss(self, search, x, y, mix):
        parts = self._each(search, lambda xi, yi: self._sk.weight_loss(search, xi, yi, mix), x, y)
        return sum(p[0] for p in parts) / len(parts), sum(p[1] for p in parts)


def _shard_batch(loader, rank: int, world: int = 2):
    was = loader.shard
    loader.set_shard(rank, world)
    try:
        return loader.batch(0, 0)
    finally:
        loader.shard = was


def _measure(s, tb, vb) -> dict[str, torch.Tensor]:
    """Everything a step reduces, at the current state: alpha gradient of the rule, weight (and
    single-level alpha) gradients of the weight step, lambda_max, Gram matrices."""
    from stablenas.curvature import AlphaObjective, dominant_eigenvalue
    from stablenas.methods.idarts import collect_grams

    out: dict[str, torch.Tensor] = {}
    rule = s.cfg.search.update
    if rule == "first":
        g = s.first_order_grad(vb)
    elif rule == "second":
        g = s.second_order_grad(tb, vb)
    else:
        g = None
    s.sync_buffers()  # as Search.step does after the alpha step
    if g is not None:
        out.update({f"alpha_grad.{i}": t.detach().clone() for i, t in enumerate(g) if t is not None})
    for m in s.methods:
        if m.name == "hessian":
            o = m.opts
            if isinstance(vb[0], torch.Tensor):
                lam = m.observer.measure(s).lambda_max
            else:  # the reference: one objective over both shards of the fixed batch (mean of shard means)
                loader = s.skeleton.fixed_val_loader(s, o.batch_size or s.cfg.data.batch_size, s.cfg.seed * 1000 + 7)
                batches = [_shard_batch(loader, r, len(vb[0])) for r in range(len(vb[0]))]
                obj = AlphaObjective(s.net, s.arch, batches, bn=o.bn, edge_weights=s.arch.edge_weights())
                lam = dominant_eigenvalue(obj, iters=o.iters, algorithm=o.algorithm, seed=o.seed).lambda_max
            out["lambda_max"] = torch.tensor(lam, dtype=torch.float64)
        if m.name == "idarts":
            grams = collect_grams(s, m.opts)
            out.update({f"gram.{ct}": g for ct, g in grams.items()})
    s.weight_step(tb)
    out.update({f"buffer.{n}": b.detach().clone() for n, b in s.net.named_buffers() if b.is_floating_point()})
    for n, p in [*s.net.named_parameters(), *s.arch.named_parameters()]:
        if p.grad is not None:
            out[f"grad.{n}"] = p.grad.detach().clone()
    return out


def _case(name: str, rank: int, world: int) -> dict:
    import stablenas as sn
    from stablenas import distributed as dist
    from stablenas.search.loop import Search

    preset, extra = CASES[name]
    cfg = sn.load_config(preset, TINY + extra)
    s = Search(cfg, None, progress=False, log=lambda m: None)
    res: dict = {"case": name}
    s.start_epoch(START.get(name, 0))
    if name == "ms-darts":
        s.methods[0]._memo["no_vmap"] = True  # the reference's list-of-shards batches go through search.loss
    snap = copy.deepcopy(s.state_dict(snapshot=True))
    # (b) reduced vs one-process mean of shards
    reduced = _measure(s, s.train_loader.batch(0, 0), s.val_stream.loader.batch(0, 0))
    if rank == 0:
        with dist.local():
            s.load_state_dict(copy.deepcopy(snap))
            tb = [_shard_batch(s.train_loader, r, world) for r in range(world)]
            vb = [_shard_batch(s.val_stream.loader, r, world) for r in range(world)]
            sk = s.skeleton
            s.skeleton = _Shards(sk)
            try:
                ref = _measure(s, ([b[0] for b in tb], [b[1] for b in tb]), ([b[0] for b in vb], [b[1] for b in vb]))
            finally:
                s.skeleton = sk
        diffs = {}
        if set(ref) != set(reduced):
            diffs["keys"] = sorted(set(ref) ^ set(reduced))
        for k in sorted(set(ref) & set(reduced)):
            a, b = reduced[k].double(), ref[k].double()
            scale = float(b.abs().max()) or 1.0
            diffs[k] = float((a - b).abs().max()) / scale
        res["grad_rel_err"] = diffs
        res["n_checked"] = len(diffs)
    s.load_state_dict(copy.deepcopy(snap))
    dist.barrier()

    def k_steps(search) -> tuple[torch.Tensor, str, torch.Tensor]:
        it = iter(search.train_loader)
        for _ in range(K):
            search.step(next(it))
            search.step_in_epoch += 1
            search.global_step += 1
        weights = torch.cat([p.detach().flatten() for p in search.net.parameters()])
        return search.arch.flat().detach().clone(), search.genotype().to_json(), weights

    # (a) K steps: the same alpha bits, weights and genotype on every rank
    alpha0 = s.arch.flat().detach().clone()
    alpha, geno, weights = k_steps(s)
    import torch.distributed as td

    alphas = [torch.empty_like(alpha) for _ in range(world)]
    td.all_gather(alphas, alpha)
    all_w = [torch.empty_like(weights) for _ in range(world)]
    td.all_gather(all_w, weights)
    genos = [None] * world
    td.all_gather_object(genos, geno)
    res["alpha_same_on_ranks"] = all(torch.equal(a, alphas[0]) for a in alphas)
    res["weights_same_on_ranks"] = all(torch.equal(w, all_w[0]) for w in all_w)
    res["genotype_same_on_ranks"] = all(g == genos[0] for g in genos)
    res["alpha_moved"] = not torch.equal(alpha, alpha0)
    # (c) the same seed again: the same alpha bits
    s2 = Search(cfg, None, progress=False, log=lambda m: None)
    s2.start_epoch(START.get(name, 0))
    if name == "ms-darts":
        s2.methods[0]._memo["no_vmap"] = True
    alpha2, geno2, weights2 = k_steps(s2)
    res["same_seed_same_alpha"] = bool(torch.equal(alpha, alpha2)) and geno == geno2 and torch.equal(weights, weights2)
    return res


def _train_case(rank: int, world: int) -> dict:
    """``stablenas train``'s step under data parallelism: the reduced gradient against the mean of
    the two shards' gradients computed in one process, then one epoch in lockstep."""
    from stablenas import distributed as dist
    from stablenas.evaluate.train import train_config
    from stablenas.evaluate.trainer import ImageTrainer
    from stablenas.genotype import Genotype

    g = Genotype(space="s5", normal=(("sep_conv_3x3", 0), ("skip_connect", 1)), normal_concat=(2,),
                 reduce=(("max_pool_3x3", 0), ("sep_conv_3x3", 1)), reduce_concat=(2,))
    cfg = train_config(None, dict(dataset="digits", channels=8, layers=3, stem_multiplier=2, epochs=1, batch_size=32,
                                  steps_per_epoch=2, channels_last=False, eval_batch_size=256, threads=1,
                                  evaluate_test=False, drop_path=0.0))
    t = ImageTrainer(g, cfg, None, resume=False, progress=False, log=lambda m: None)
    t.model.train()
    snap = copy.deepcopy(t.model.state_dict())
    t.backward(*t.train_loader.batch(0, 0))
    reduced = {n: p.grad.detach().clone() for n, p in t.model.named_parameters() if p.grad is not None}
    res: dict = {"case": "train"}
    if rank == 0:
        with dist.local():
            parts = []
            for r in range(world):
                t.model.load_state_dict(snap)
                t.backward(*_shard_batch(t.train_loader, r, world))
                parts.append({n: p.grad.detach().clone() for n, p in t.model.named_parameters() if p.grad is not None})
        ref = {n: sum(p[n] for p in parts) / world for n in parts[0]}
        errs = {n: float((reduced[n] - ref[n]).abs().max()) / (float(ref[n].abs().max()) or 1.0) for n in ref}
        if set(ref) != set(reduced):
            errs["keys"] = sorted(set(ref) ^ set(reduced))
        res["grad_rel_err"], res["n_checked"] = errs, len(errs)
    t.model.load_state_dict(snap)
    dist.barrier()
    t.train_epoch()
    try:  # the weights after an epoch: bit-identical on both ranks ("alpha" keys: the test's names)
        dist.check_same(list(t.model.parameters()), "train epoch 1")
        res["alpha_same_on_ranks"] = res["genotype_same_on_ranks"] = True
    except dist.RankMismatchError:
        res["alpha_same_on_ranks"] = res["genotype_same_on_ranks"] = False
    res["alpha_moved"] = not torch.equal(next(t.model.parameters()), snap[next(iter(snap))])
    return res


def main(rank: int, world: int, port: int, out: str) -> None:
    """One rank. Its C-level stderr goes to ``OUT.rankR.log`` with faulthandler on, so a rank that
    dies by a signal leaves the Python stack it died in (the test shows it); rank 0 rewrites the
    results after every case, so a crash shows how far the job got."""
    import faulthandler
    import sys

    log = open(f"{out}.rank{rank}.log", "w", buffering=1)  # noqa: SIM115 (lives as long as the rank)
    os.dup2(log.fileno(), 2)
    sys.stderr = log
    faulthandler.enable(log, all_threads=True)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from stablenas import distributed as dist

    dist.setup("cpu")
    results = []
    import time

    def stage(msg: str) -> None:
        print(f"[rank {rank} {time.strftime('%H:%M:%S')}] {msg}", file=log)

    only = os.environ.get("DDP_CASES")
    for name in (only.split(",") if only else [*CASES, "train"]):
        stage(f"case {name}")
        try:
            t = time.perf_counter()
            results.append(_train_case(rank, world) if name == "train" else _case(name, rank, world))
            results[-1]["seconds"] = round(time.perf_counter() - t, 2)
        except Exception:
            results.append({"case": name, "error": traceback.format_exc()})
            break  # a failed collective leaves the ranks out of step: stop here
        finally:
            if rank == 0:
                tmp = f"{out}.tmp"
                with open(tmp, "w") as f:
                    json.dump(results, f)
                os.replace(tmp, out)
    stage("all cases done; barrier")
    if "error" not in results[-1]:
        dist.barrier()  # neither rank tears the group down while the other still talks to it
    stage("shutdown")
    dist.shutdown()
    stage("exit")
