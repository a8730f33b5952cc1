"""The spawned 2-rank gloo job (tests/support/ddp_worker.py) and the check of one case's results
(tests/core/test_distributed.py, tests/methods/test_harness.py, tests/methods/test_darts_pt.py)."""

from __future__ import annotations

import json
import socket
import warnings
from pathlib import Path

import pytest
import torch
from torch.multiprocessing.spawn import ProcessException

from support import ddp_worker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_logs(out: Path) -> list[str]:
    """Each rank's log (stage lines, the faulthandler stack, gloo's messages); '' where none was written."""
    paths = [Path(f"{out}.rank{r}.log") for r in range(2)]
    return [p.read_text(errors="replace") if p.exists() else "" for p in paths]


def spawn_job(out: Path) -> tuple[dict, str | None]:
    """Run the 2-rank job once: (rank 0's results by case, None) or, when a rank died, what the
    ranks' logs say."""
    try:
        torch.multiprocessing.spawn(ddp_worker.main, args=(2, free_port(), str(out)), nprocs=2, join=True)
        failure = None
    except ProcessException as e:
        failure = f"{e}\n" + "\n".join(f"--- rank {r} ---\n{log[-4000:]}" for r, log in enumerate(rank_logs(out)))
    results = {r["case"]: r for r in json.loads(out.read_text())} if out.exists() else {}
    return results, failure


_FINISHED: list[dict] = []  # the results of every 2-rank job this pytest process ran, by case


def shared_job(tmp_path_factory, cases: list[str]) -> dict:
    """The results, by case, of a 2-rank job that ran every case in ``cases``: one that already ran in
    this pytest process when it covered them (tests/core/test_distributed.py's job runs them all, so
    tests/methods/test_harness.py reads its results), else a new job over just these cases.

    A rank killed by a signal (seen: gloo's SIGABRT, 'terminate called without an active exception',
    in about one full CI suite in three, never in isolation) fails nothing by itself when every case
    had finished on both ranks (the tests judge the results; the launcher tests check a clean exit); a
    death mid-job gets one rerun, and its logs go out as a warning so the crash stays visible."""
    for results in _FINISHED:
        if set(cases) <= set(results):
            return results
    failure = None
    for attempt in range(2):
        out = tmp_path_factory.mktemp("ddp") / "results.json"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DDP_CASES", ",".join(cases))
            results, failure = spawn_job(out)
        finished = set(results) == set(cases) and all("error" not in r for r in results.values()) and all(
            "all cases done" in log for log in rank_logs(out))
        if failure is not None:
            warnings.warn(f"2-rank job, attempt {attempt + 1}: a rank died "
                          f"({'after' if finished else 'before'} every case had finished): {failure}", stacklevel=1)
        if failure is None or finished:
            if finished:
                _FINISHED.append(results)
            return results
    pytest.fail(f"the 2-rank job died twice; last time: {failure}")


# finite-difference HVPs divide a difference by 2 eps: float32 round-off of the reduction order grows there
TOL = {"darts-2nd-fd": 1e-3}


def assert_case_agrees(job: dict, case: str) -> None:
    """At a fixed state the reduced gradients equal the one-process mean over the shards, and after K
    steps alpha, the genotype and the weights are the same on both ranks (``job``: results by case)."""
    r = job.get(case)
    assert r is not None, f"{case} did not run (an earlier case failed: {list(job)})"
    assert "error" not in r, r["error"]
    errs = r["grad_rel_err"]
    assert "keys" not in errs, errs["keys"]
    assert r["n_checked"] >= 3
    assert any(k.startswith("grad.") or "weight" in k for k in errs)
    tol = TOL.get(case, 1e-5)
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert not bad, bad
    if case == "hessian":
        assert "lambda_max" in errs
    if case == "idarts":
        assert any(k.startswith("gram.") for k in errs)
    assert r["alpha_moved"] or case == "rs-ws"  # RS-ws never trains alpha: its sampled paths move the weights
    assert r["alpha_same_on_ranks"] and r["genotype_same_on_ranks"]
    if case != "train":
        assert r["weights_same_on_ranks"]
    if case != "train":  # training's same-seed reproducibility: tests/evaluate/test_train.py's resume test
        assert r["same_seed_same_alpha"]
