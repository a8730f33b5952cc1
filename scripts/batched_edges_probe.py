"""Probe for issue 17's suggested lever: batch the edges that leave one node.

Every edge out of a node reads only that node, so the E separable convolutions of those edges can
run as one: the node repeated E times along channels, one depthwise conv over E*C channels, the
pointwise convs as one grouped conv (groups=E), one batch norm over the stacked channels. This
times that against E separate sep_conv stacks (forward + backward, per-process CPU time, one
thread, interleaved), at the shapes the supernets have. Run before building the batched path into
the engine: if the batched kernels lose on this CPU, fewer dispatches do not pay.

    python scripts/batched_edges_probe.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def _bn(x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, None, None, training=True)


def per_edge(x: torch.Tensor, ws: list[list[torch.Tensor]], c: int, k: int) -> list[torch.Tensor]:
    r = F.relu(x)
    outs = []
    for dw1, pw1, dw2, pw2 in ws:
        y = F.relu(_bn(F.conv2d(F.conv2d(r, dw1, padding=k // 2, groups=c), pw1)))
        outs.append(_bn(F.conv2d(F.conv2d(y, dw2, padding=k // 2, groups=c), pw2)))
    return outs


def batched(x: torch.Tensor, wb: list[torch.Tensor], c: int, k: int) -> list[torch.Tensor]:
    dw1, pw1, dw2, pw2 = wb
    e = dw1.shape[0] // c
    r = F.relu(x).repeat(1, e, 1, 1)  # (edge, channel) order, so the pointwise convs group by edge
    y = F.relu(_bn(F.conv2d(F.conv2d(r, dw1, padding=k // 2, groups=e * c), pw1, groups=e)))
    y = _bn(F.conv2d(F.conv2d(y, dw2, padding=k // 2, groups=e * c), pw2, groups=e))
    return list(y.split(c, 1))


def _time(fn, x, w, c: int, k: int, n: int) -> float:
    t = time.process_time()
    for _ in range(n):
        sum((o * o).sum() for o in fn(x, w, c, k)).backward()
    return (time.process_time() - t) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print("| N | C | H | edges | k | per edge, ms | batched, ms | per edge / batched |")
    print("|---|---|---|---|---|---|---|---|")
    for n, c, h, e in [(64, 8, 28, 4), (64, 16, 14, 4), (64, 32, 7, 4), (64, 8, 28, 2), (64, 16, 32, 4),
                       (64, 64, 8, 4)]:
        for k in (3, 5):
            x = torch.randn(n, c, h, h).to(memory_format=torch.channels_last).requires_grad_()
            ws = [[torch.randn(c, 1, k, k), torch.randn(c, c, 1, 1), torch.randn(c, 1, k, k), torch.randn(c, c, 1, 1)]
                  for _ in range(e)]
            wb = [torch.cat([w[i] for w in ws]).requires_grad_() for i in range(4)]
            ws = [[t.requires_grad_() for t in w] for w in ws]
            with torch.no_grad():  # the two compute the same thing
                assert all(torch.allclose(u, v, atol=1e-4) for u, v in zip(per_edge(x, ws, c, k), batched(x, wb, c, k)))
            _time(per_edge, x, ws, c, k, 3), _time(batched, x, wb, c, k, 3)  # warm-up
            a = b = 0.0
            for _ in range(3):  # interleaved rounds
                a += _time(per_edge, x, ws, c, k, args.repeats)
                b += _time(batched, x, wb, c, k, args.repeats)
            print(f"| {n} | {c} | {h} | {e} | {k} | {a / 3:.1f} | {b / 3:.1f} | {a / b:.2f} |", flush=True)


if __name__ == "__main__":
    main()
