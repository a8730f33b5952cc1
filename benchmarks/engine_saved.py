"""What a forward keeps for backward, by the function that kept it: the tensors autograd saves (unique
storages, so a map shared by several ops counts once), summed per source line of the supernet code.

    python benchmarks/engine_saved.py [--size cpu-study|paper] [--engine fast|plain_cl]
                                   [--what alpha|weights|both|lambda_max] [--top 15]

``alpha``: the first-order alpha step's forward (weights frozen); ``weights``: the weight step's (alpha
detached); ``both``: the unrolled step's validation pass (alpha and the virtual weights); ``lambda_max``:
the forward plus the ``create_graph`` backward of one Hessian-vector-product graph (``curvature.HVP``),
the backward's savings named by the autograd node that made them. Peak memory is this plus the
temporaries of the pass and whatever the allocator keeps (``benchmarks/engine_memory.py`` measures that
peak); this script shows which part of it is the graph, and whose. Tensors saved inside a
``torch.utils.checkpoint`` region are held by the checkpoint and not seen here.
"""

from __future__ import annotations

import argparse
import collections
import sys

import torch

from stablenas.bench import add_size_arguments, sized_from_args
from stablenas.bench.steps import base_config, batches, engine_objective, make_search, plain_model
from stablenas.supernet.network import weights_frozen


def _where(stage: str) -> str:
    if stage == "bwd":
        node = torch._C._current_autograd_node()
        return "backward: " + (node.name() if node is not None else "?")
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename
        if ("supernet" in name or "spaces" in name) and "functional" not in name:
            return f"{name.rsplit('/', 1)[-1]}:{f.f_code.co_name}:{f.f_lineno}"
        f = f.f_back
    return "?"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(p, "cpu-study")
    p.add_argument("--engine", choices=("fast", "plain_cl"), default="fast")
    p.add_argument("--what", choices=("alpha", "weights", "both", "lambda_max"), default="both")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    bc = sized_from_args(args)
    s = make_search(base_config(bc, "first"), bc)
    store: dict[int, tuple[int, str]] = {}
    stage = ["fwd"]

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.nbytes() and st.data_ptr() not in store:
            store[st.data_ptr()] = (st.nbytes(), _where(stage[0]))
        return t

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    if args.what == "lambda_max":
        from stablenas import curvature as cur

        obj = engine_objective(cur, s, bc, args.engine)
        hvp = cur.HVP(obj)
        with hvp, hooks:
            loss = obj.batch_loss(hvp.alpha, obj.batches[0]) / obj.count
            stage[0] = "bwd"
            torch.autograd.grad(loss, hvp.alpha, create_graph=True)
    else:
        x, y = batches(s)[1]
        if args.engine == "plain_cl":
            model, _ = plain_model(s, bc, channels_last=True)
            params, alphas = list(model.net.parameters()), list(model.arch_parameters())
            x = x.contiguous(memory_format=torch.channels_last)
        else:
            params, alphas = list(s.net.parameters()), list(s.arch.parameters())
        for q in params:
            q.requires_grad_(args.what in ("weights", "both"))
        for q in alphas:
            q.requires_grad_(args.what in ("alpha", "both"))
        with hooks:
            if args.engine == "plain_cl":
                model.loss(x, y)
            elif args.what == "alpha":
                with weights_frozen(s.net):
                    s.loss(x, y, s.mix("arch"))
            else:
                mix = s.mix("arch")
                s.loss(x, y, mix.detached() if args.what == "weights" else mix)
    by: collections.Counter = collections.Counter()
    for n, w in store.values():
        by[w] += n
    total = sum(n for n, _ in store.values())
    print(f"{args.engine} {args.what} ({bc.cells} cells x {bc.channels} channels, batch {bc.batch}): "
          f"{total / 2**20:,.1f} MB saved in {len(store)} storages")
    for w, n in by.most_common(args.top):
        print(f"  {n / 2**20:9.1f} MB  {w}")


if __name__ == "__main__":
    main()
