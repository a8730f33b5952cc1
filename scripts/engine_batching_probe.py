"""Does batching the edges that leave one node pay on this machine? Kernel-level probe for the
engine (issue 17's proposed lever), before any of it is built into ``supernet.network``.

For ``n`` edges reading the same node ``x`` (N x C x H x W, channels_last), one half of a sep
conv (ReLU -> 3x3/5x5 depthwise -> 1x1 pointwise -> BN with the op weight folded in), forward and
backward, computed three ways:

  per-edge   what the engine runs now: one depthwise, one pointwise, one BN per edge
  stacked    relu(x) replicated n times on the channel axis (one expand-copy), one depthwise conv
             over n*C channels, one grouped (groups=n) pointwise conv, one BN over n*C channels
  multiplier one depthwise conv with channel multiplier n (no replicated input), its output
             regrouped edge-major (one copy), then grouped pointwise and one BN as in `stacked`

and the same split per kernel (depthwise, pointwise, BN: n small calls vs one call n times wider).
All three give the same values (checked here: max abs difference printed). Times are ms per
forward+backward, median of ``--repeats`` after warm-up, one process, ``--threads`` threads.

    python scripts/engine_batching_probe.py [--threads 1] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

CL = torch.channels_last
SHAPES = ((64, 8, 28), (64, 16, 14), (64, 32, 7), (64, 16, 32), (64, 32, 16), (64, 64, 8))


def _ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def _replicate(r: torch.Tensor, n: int) -> torch.Tensor:
    """(N, C, H, W) channels_last -> (N, n*C, H, W), channel i*C + c = r[:, c]."""
    N, C, H, W = r.shape
    return r.permute(0, 2, 3, 1).unsqueeze(3).expand(N, H, W, n, C).reshape(N, H, W, n * C).permute(0, 3, 1, 2)


def half_sep(N: int, C: int, H: int, n: int, k: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, H, H, generator=g).to(memory_format=CL).requires_grad_()
    dws = [torch.randn(C, 1, k, k, generator=g).requires_grad_() for _ in range(n)]
    pws = [torch.randn(C, C, 1, 1, generator=g).requires_grad_() for _ in range(n)]
    w = torch.rand(n, generator=g).requires_grad_()
    p = k // 2

    def per_edge():
        r = F.relu(x)
        return torch.cat([F.batch_norm(F.conv2d(F.conv2d(r, dws[i], None, 1, p, 1, C), pws[i]), None, None,
                                       w[i].expand(C).contiguous(), None, True, 0.0, 1e-5) for i in range(n)], 1)

    def stacked():
        z = F.conv2d(_replicate(F.relu(x), n), torch.cat(dws), None, 1, p, 1, n * C)
        z = F.conv2d(z, torch.cat(pws), None, 1, 0, 1, n)
        return F.batch_norm(z, None, None, w.repeat_interleave(C), None, True, 0.0, 1e-5)

    def multiplier():
        z = F.conv2d(F.relu(x), torch.stack(dws, 1).reshape(n * C, 1, k, k), None, 1, p, 1, C)  # (c, i) order
        z = z.permute(0, 2, 3, 1).reshape(N, H, H, C, n).transpose(3, 4).reshape(N, H, H, n * C).permute(0, 3, 1, 2)
        z = F.conv2d(z, torch.cat(pws), None, 1, 0, 1, n)
        return F.batch_norm(z, None, None, w.repeat_interleave(C), None, True, 0.0, 1e-5)

    with torch.no_grad():
        ref = per_edge()
        err = max(float((f() - ref).abs().max()) for f in (stacked, multiplier))
    out = {"shape": f"{N}x{C}x{H}x{H}", "edges": n, "k": k, "max_abs_diff": err}
    for name, f in (("per-edge", per_edge), ("stacked", stacked), ("multiplier", multiplier)):
        out[name] = _ms(lambda f=f: f().sum().backward(), repeats)
    return out


def kernels(N: int, C: int, H: int, n: int, repeats: int) -> dict:
    x = torch.randn(N, C, H, H).to(memory_format=CL).requires_grad_()
    xn = torch.randn(N, n * C, H, H).to(memory_format=CL).requires_grad_()
    dw, dwn = torch.randn(C, 1, 3, 3, requires_grad=True), torch.randn(n * C, 1, 3, 3, requires_grad=True)
    pw, pwg = torch.randn(C, C, 1, 1, requires_grad=True), torch.randn(n * C, C, 1, 1, requires_grad=True)
    t = {
        "dw n x C": lambda: [F.conv2d(x, dw, None, 1, 1, 1, C).sum().backward() for _ in range(n)],
        "dw 1 x nC": lambda: F.conv2d(xn, dwn, None, 1, 1, 1, n * C).sum().backward(),
        "pw n x C": lambda: [F.conv2d(x, pw).sum().backward() for _ in range(n)],
        "pw grouped": lambda: F.conv2d(xn, pwg, None, 1, 0, 1, n).sum().backward(),
        "bn n x C": lambda: [F.batch_norm(x, None, None, None, None, True, 0.0, 1e-5).sum().backward()
                             for _ in range(n)],
        "bn 1 x nC": lambda: F.batch_norm(xn, None, None, None, None, True, 0.0, 1e-5).sum().backward(),
    }
    return {"shape": f"{N}x{C}x{H}x{H}", "edges": n, **{k: _ms(f, repeats) for k, f in t.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}; ms per forward+backward (median)")
    print("\n| map | edges | k | per-edge | stacked | multiplier | stacked / per-edge | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for N, C, H in SHAPES:
        for n, k in ((4, 3), (2, 3), (4, 5)):
            r = half_sep(N, C, H, n, k, a.repeats)
            print(f"| {r['shape']} | {n} | {k} | {r['per-edge']:.2f} | {r['stacked']:.2f} | {r['multiplier']:.2f} | "
                  f"{r['stacked'] / r['per-edge']:.2f} | {r['max_abs_diff']:.1e} |")
    print("\n| map | edges | dw n x C | dw 1 x nC | pw n x C | pw grouped | bn n x C | bn 1 x nC |")
    print("|---|---|---|---|---|---|---|---|")
    for N, C, H in SHAPES[:4]:
        r = kernels(N, C, H, 4, a.repeats)
        print(f"| {r['shape']} | 4 | " + " | ".join(f"{r[k]:.2f}" for k in list(r)[2:]) + " |")


if __name__ == "__main__":
    main()
