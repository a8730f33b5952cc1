"""How far DARTS's finite-difference unrolled gradient is from the exact one (docs: methods, 2nd order).

Exact: d/d alpha L_val(w - xi * grad_w L_train(w, alpha), alpha) by double backward, float64, one
training and one validation batch. Prints the relative error ||g - g*|| / ||g*|| and the cosine of
the finite-difference (default) and the autograd (``search.unrolled_hvp: autograd``) variants.

    OMP_NUM_THREADS=1 python benchmarks/hypergradient_error.py [--seeds 2 3] [--preset quickstart] [--set key=value]
"""

import argparse

import torch
import torch.nn.functional as F

import stablenas as sn
from stablenas.search.loop import Search


def exact(s, train, val, xi):
    names, ws = zip(*s.net.named_parameters())
    arch = list(s.arch.parameters())
    lt = s.loss(*train, s.mix("arch"), dict(zip(names, ws)))
    g = torch.autograd.grad(lt, ws, create_graph=True)
    lv = s.loss(*val, s.mix("arch"), dict(zip(names, [w - xi * gi for w, gi in zip(ws, g)])))
    return torch.autograd.grad(lv, arch)


def compare(a, b):
    a = torch.cat([g.flatten() for g in a])
    b = torch.cat([g.flatten() for g in b])
    return float((a - b).norm() / b.norm()), float(F.cosine_similarity(a, b, dim=0))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[2, 3])
    p.add_argument("--preset", default="quickstart")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="a config override (repeatable)")
    args = p.parse_args()
    for seed in args.seeds:
        cfg = sn.load_config(args.preset, ["search.update=second", f"seed={seed}", "network.channels_last=false",
                                           *args.overrides])
        s = Search(cfg, None, progress=False, log=lambda m: None)
        s.net.double()
        s.arch.double()
        s.start_epoch(0)
        xt, yt = next(iter(s.train_loader))
        xv, yv = next(s.val_stream)
        train, val = (xt.double(), yt), (xv.double(), yv)
        ref = exact(s, train, val, s.lr)
        for mode in ("finite-difference", "autograd"):
            s.cfg.search.unrolled_hvp = mode
            rel, cos = compare(s.second_order_grad(train, val), ref)
            print(f"{args.preset} seed {seed} {mode:17s} relative error {rel:.3g}  cosine {cos:.3f}")


if __name__ == "__main__":
    main()
