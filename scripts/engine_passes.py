"""Where a search iteration's time goes, pass by pass: the engine against the plain supernet in
channels_last (`plain_cl`, bench's fair baseline), interleaved in one process.

    python scripts/engine_passes.py [--size cpu-study | --cells 8 --channels 16 ...] [--threads 1] [--repeats 3]

Passes (each forward + the backward it needs):
  virtual       train loss at w, gradient w.r.t. the weights (alpha fixed): the unrolled step's w'
  val_at_w'     validation loss at the unrolled weights w', gradient w.r.t. alpha and w'
  fd_hvp        train loss at w + eps v (a finite-difference point), gradient w.r.t. alpha only
  alpha         validation loss at w, gradient w.r.t. alpha only (the first-order alpha step)
  weights       train loss at w, gradient w.r.t. the weights (the weight step)
  hessian       the alpha-gradient graph (create_graph) and 2 Hessian-vector products (lambda_max's unit)
A first-order iteration is alpha + weights; a second-order one is virtual + val_at_w' + 2 fd_hvp + weights.
Prints one line per pass: median seconds for each engine and plain_cl / engine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from stablenas import bench as B
from stablenas import curvature as C
from stablenas.supernet.reference import _grads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    B.add_size_arguments(p, "cpu-study")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    bc = B.sized_from_args(args)
    s = B.make_search(B._base_config(bc, "second"), bc)
    train, val = B._batches(s)
    model, _ = B._plain_model(s, bc, channels_last=True)
    tc, vc = B._cl(train), B._cl(val)
    xt, yt = train
    xv, yv = val
    names, weights = zip(*s.net.named_parameters())
    arch = list(s.arch.parameters())
    g = torch.autograd.grad(s.loss(xt, yt, s.mix("arch", train).detached()), weights)
    w_virtual = [(w - 0.01 * gi).detach().requires_grad_(True) for w, gi in zip(weights, g)]
    w_shift = [(w + 1e-3 * gi).detach() for w, gi in zip(weights, g)]  # a finite-difference point
    plain_params, plain_arch = list(model.parameters()), model.arch_parameters()
    plain_virtual = [w.detach().clone().requires_grad_(True) for w in plain_params]
    obj_fast, obj_plain = B._objective(C, s), B._objective(C, s, model.net, B._cl)
    v = torch.randn(s.arch.flat().numel())

    def hessian(obj):
        with C.HVP(obj) as h:
            return [h(v) for _ in range(2)]

    def plain_at(ws, x, y, wrt):
        old = [p.data for p in plain_params]
        for p_, w in zip(plain_params, ws):
            p_.data = w.data
        try:
            return torch.autograd.grad(model.loss(x, y), wrt, allow_unused=True)
        finally:
            for p_, o in zip(plain_params, old):
                p_.data = o

    passes = {
        "virtual": (lambda: torch.autograd.grad(s.loss(xt, yt, s.mix("arch", train).detached(),
                                                       dict(zip(names, weights))), weights),
                    lambda: torch.autograd.grad(model.loss(*tc), plain_params)),
        "val_at_w'": (lambda: torch.autograd.grad(s.loss(xv, yv, s.mix("arch", val), dict(zip(names, w_virtual))),
                                                  arch + w_virtual, allow_unused=True),
                      lambda: plain_at(plain_virtual, *vc, plain_params + plain_arch)),
        "fd_hvp": (lambda: torch.autograd.grad(s.loss(xt, yt, s.mix("arch", train), dict(zip(names, w_shift))),
                                               arch, allow_unused=True),
                   lambda: _grads(model.loss(*tc), plain_arch)),
        "alpha": (lambda: s.first_order_grad(val), lambda: _grads(model.loss(*vc), plain_arch)),
        "weights": (lambda: torch.autograd.grad(s.loss(xt, yt, s.mix("weights", train)), weights),
                    lambda: torch.autograd.grad(model.loss(*tc), plain_params)),
        "hessian": (lambda: hessian(obj_fast), lambda: hessian(obj_plain)),
    }
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(args.repeats + 1):  # round 0: warm-up
        for name, fns in passes.items():
            for eng, fn in zip(("engine", "plain_cl"), fns if r % 2 else fns[::-1]):
                t = time.perf_counter()
                fn()
                if r:
                    times.setdefault((name, eng), []).append(time.perf_counter() - t)
    print(f"{bc.size}: {bc.cells} cells x {bc.channels} channels, batch {bc.batch}, input {bc.input}; "
          f"{torch.get_num_threads()} threads; load1 {B._load()}")
    print("| pass | engine s | plain_cl s | plain_cl / engine |")
    print("|---|---|---|---|")
    med = {k: statistics.median(t) for k, t in times.items()}
    for name in passes:
        e, pl = med[(name, "engine")], med[(name, "plain_cl")]
        print(f"| {name} | {e:.3f} | {pl:.3f} | {pl / e:.2f} |")
    first = [med[("alpha", e)] + med[("weights", e)] for e in ("engine", "plain_cl")]
    second = [med[("virtual", e)] + med[("val_at_w'", e)] + 2 * med[("fd_hvp", e)] + med[("weights", e)]
              for e in ("engine", "plain_cl")]
    print(f"| first-order sum | {first[0]:.3f} | {first[1]:.3f} | {first[1] / first[0]:.2f} |")
    print(f"| second-order sum | {second[0]:.3f} | {second[1]:.3f} | {second[1] / second[0]:.2f} |")


if __name__ == "__main__":
    main()
