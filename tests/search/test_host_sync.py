"""No host sync inside a search step: every way the package's own code can read a tensor's value
back to Python (``item``, ``tolist``, ``bool``, ``float``, ``int``, ``numpy``, ``cpu``, a format) is
counted while a step runs on the CPU, where the step's code path is the one CUDA runs. On a GPU each
of those would stall the launch queue; ``tests/test_cuda.py`` checks the whole step there with
``torch.cuda.set_sync_debug_mode("error")``, torch's internals included.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import TINY_SEARCH

import stablenas as sn
from stablenas.search.loop import Search

PACKAGE = str(Path(sn.__file__).parent)
READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "__format__")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def host_reads(monkeypatch):
    """A Counter of ``file:line read`` for every value read by the package's code while patched."""
    seen: Counter = Counter()

    def counting(name, orig):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(PACKAGE):
                seen[f"{Path(caller).name}:{sys._getframe(1).f_lineno} {name}"] += 1
            return orig(self, *args, **kwargs)
        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    return seen


def _search(update: str, *extra: str) -> Search:
    over = [*TINY_SEARCH, "space=darts", "evaluation.lookup=false", f"search.update={update}", *extra]
    s = Search(sn.load_config("darts", over), None, progress=False, log=lambda m: None)
    s.start_epoch(0)
    s.net.train()
    return s


def _steps(s: Search, n: int = 2) -> None:
    """``n`` steps as ``Search.train_epoch`` runs them: the loaders' next batches, then the step."""
    it = iter(s.train_loader)
    for _ in range(n):
        s.step(next(it))


@pytest.mark.parametrize("update,extra", [("first", ()), ("second", ()),
                                          ("second", ("search.unrolled_hvp=autograd",)),
                                          ("single", ()), ("first", ("space=nb201", "network.layers=1"))])
def test_a_search_step_reads_nothing_back_to_the_host(update, extra, host_reads):
    s = _search(update, *extra)
    _steps(s, 1)  # the first step allocates the optimisers' state
    host_reads.clear()
    _steps(s, 2)
    assert not host_reads, dict(host_reads)


def test_the_counter_sees_the_reads_of_the_epoch_end_guard(host_reads):
    """The guard that runs between steps reads one flag back (by design, every GUARD_EVERY steps):
    the hook must see it, or the test above could not fail."""
    s = _search("first")
    _steps(s, 1)
    host_reads.clear()
    s.check_finite()
    assert sum(host_reads.values()) >= 1 and any("__bool__" in k for k in host_reads), dict(host_reads)
