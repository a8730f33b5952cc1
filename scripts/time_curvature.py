"""Cost of one lambda_max estimate (Lanczos on double-backward HVPs) versus the exact Hessian
w.r.t. alpha, on the DARTS space at the DARTS search size (8 cells, 16 channels, batch 64).

No CIFAR-10 is available here, so the batch is random 3x32x32 input with random labels: the cost of
a forward/backward does not depend on the pixel values. BN in train mode, as in the search.

Both estimates use the same operator: build the gradient graph once (``create_graph``), then one
backward through it per Hessian-vector product. Lanczos needs ``--lanczos`` products (20 by
default in the ``hessian`` method); the exact Hessian needs one product per alpha entry (224), or
224 rows in vmapped blocks. On a shared 2-core machine the full 224 rows at this size cost far more
CPU than there is to spare, so the script measures the graph build, ``--steps`` Lanczos products,
``--rows`` single exact-Hessian rows and one vmapped block of ``--rows`` rows, and *extrapolates*
the 20-step Lanczos and the 224-row exact Hessian from the measured per-product times (wall and
process CPU time are both reported, since the machine is shared).

    nice -n 5 python scripts/time_curvature.py --steps 6 --rows 2 --out runs/curvature-timing.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import torch

from stablenas.analysis import curvature as cv
from stablenas.spaces.registry import get_space
from stablenas.supernet.arch import ArchParams
from stablenas.supernet.network import build_supernet


class Clock:
    def __init__(self):
        self.w, self.c = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.w, time.process_time() - self.c


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--steps", type=int, default=6, help="Lanczos products actually computed")
    p.add_argument("--lanczos", type=int, default=20, help="Lanczos steps of one estimate (extrapolated)")
    p.add_argument("--rows", type=int, default=2, help="exact-Hessian rows actually computed")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    space = get_space("darts")
    net = build_supernet(space, C=args.channels, layers=args.layers, num_classes=10, in_channels=3)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
        net.channels_last = True
    net.train()
    arch = ArchParams(space, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    obj = cv.AlphaObjective(net, arch, [(x, y)], bn="train")
    n = arch.num_alpha()
    out: dict = {"space": "darts", "layers": args.layers, "channels": args.channels, "batch": args.batch,
                 "n_alpha": n, "threads": torch.get_num_threads(), "input": "random 3x32x32 (no CIFAR here)",
                 "loadavg_start": os.getloadavg()}

    # the unit of cost: one alpha gradient (forward + backward, no graph kept)
    c = Clock()
    with obj.mode():
        a = obj.alpha0().requires_grad_(True)
        torch.autograd.grad(obj(a), a)
    out["grad_wall"], out["grad_cpu"] = c.stop()
    print(f"alpha gradient: {out['grad_wall']:.1f}s wall, {out['grad_cpu']:.1f}s cpu", flush=True)

    eye = torch.eye(n)
    with cv.HVP(obj) as hvp:
        c = Clock()
        hvp._build()
        out["build_wall"], out["build_cpu"] = c.stop()
        print(f"graph build: {out['build_wall']:.1f}s wall, {out['build_cpu']:.1f}s cpu", flush=True)
        c = Clock()
        ritz = cv.lanczos(hvp, n, args.steps, like=hvp.alpha.detach())
        w, cpu = c.stop()
        out["lanczos_steps_measured"] = hvp.calls
        out["hvp_wall"], out["hvp_cpu"] = w / hvp.calls, cpu / hvp.calls
        out["lambda_max_after_steps"] = float(ritz[-1])
        print(f"{hvp.calls} Lanczos products: {out['hvp_wall']:.1f}s wall, {out['hvp_cpu']:.1f}s cpu each",
              flush=True)
        c = Clock()
        rows = [hvp(eye[i]) for i in range(args.rows)]
        w, cpu = c.stop()
        out["row_wall_single"], out["row_cpu_single"] = w / args.rows, cpu / args.rows
        print(f"exact rows one by one: {out['row_wall_single']:.1f}s wall, {out['row_cpu_single']:.1f}s cpu "
              "each", flush=True)
        try:
            c = Clock()
            block = hvp.matmat(eye[: args.rows])
            w, cpu = c.stop()
            out["row_wall_batched"], out["row_cpu_batched"] = w / args.rows, cpu / args.rows
            same = torch.allclose(block, torch.stack(rows), rtol=1e-4, atol=1e-7)
            out["batched_matches_single"] = bool(same)
        except RuntimeError as e:  # e.g. out of memory
            out["batched_error"] = str(e)[:200]
    for kind in ("wall", "cpu"):
        h = out[f"hvp_{kind}"]
        row = min(v for v in (h, out[f"row_{kind}_single"], out.get(f"row_{kind}_batched")) if v)
        out[f"lanczos{args.lanczos}_{kind}_extrapolated"] = out[f"build_{kind}"] + args.lanczos * h
        out[f"exact_{kind}_extrapolated"] = out[f"build_{kind}"] + n * row
        out[f"ratio_exact_over_lanczos_{kind}"] = (out[f"exact_{kind}_extrapolated"]
                                                   / out[f"lanczos{args.lanczos}_{kind}_extrapolated"])
    out["hvp_over_grad_cpu"] = out["hvp_cpu"] / out["grad_cpu"]
    out["max_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    out["loadavg_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
