"""Per-epoch ground truth for searches in spaces whose every architecture has a known test accuracy.

Called by the search loop at every epoch end with the epoch record (which already holds the
derived ``genotype``). Adds, without training anything:

* space ``s5`` with a packaged S5 table for the search dataset: ``test_acc`` (the table's test
  accuracy of the current architecture) and ``test_regret`` (best in S5 minus it), both fractions
  -- robust-darts Fig. 2 plots the regret in %;
* space ``nb201`` with the NAS-Bench-201 file configured (``evaluation.nb201_file`` or
  ``$STABLENAS_NB201_FILE``): ``nb201_test_acc`` = {cifar10, cifar100, ImageNet16-120: test
  accuracy at 200 epochs, mean over the benchmark's trials} and, when the search dataset is one of
  them, ``test_acc``.

Without the data, a search says once how to get it and how to evaluate by training instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..genotype import Genotype
from ..registry import LOOKUPS

if TYPE_CHECKING:
    from ..search.loop import Search

__all__ = ["annotate_record"]

_NB201_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100"}


def _note_once(search: Search, key: str, msg: str) -> None:
    noted = getattr(search, "notes", None)  # Search.notes: the keys of messages already said
    if noted is None:
        noted = search.notes = set()
    if key not in noted:
        noted.add(key)
        search.log(msg)


def _setting(search: Search, name: str, default: Any) -> Any:
    ev = getattr(search.cfg, "evaluation", None)
    return getattr(ev, name, default) if ev is not None else default


def annotate_record(search: Search, record: dict) -> None:
    """Add benchmark test accuracy / regret of ``record['genotype']`` to ``record`` (in place)."""
    if not _setting(search, "lookup", True) or "genotype" not in record:
        return
    lookup = LOOKUPS.get(search.space.name)  # registered per space below (and by plug-ins)
    if lookup is not None:
        lookup(search, record)


@LOOKUPS.register("s5")
def _s5(search: Search, record: dict) -> None:
    from ..skeletons.darts.s5_table import load_table, table_path

    dataset = search.cfg.data.dataset
    table = load_table(dataset)
    if table is None or not table.covers():
        _note_once(
            search,
            "s5",
            f"s5: no complete ground-truth table for {dataset} ({table_path(dataset)}); "
            "test regret is not recorded (generate one with `stablenas s5-table "
            f"--set dataset={dataset}`)",
        )
        return
    g = Genotype.from_dict(record["genotype"])
    record["test_acc"] = table.test_acc(g)
    record["test_regret"] = table.regret(g)


@LOOKUPS.register("nb201")
def _nb201(search: Search, record: dict) -> None:
    from ..skeletons.nb201.benchmark import NB201FileError, get_benchmark, resolve_nb201_file

    path = resolve_nb201_file(_setting(search, "nb201_file", None))
    if path is None:
        _note_once(
            search,
            "nb201",
            "nb201: no NAS-Bench-201 file given, so the benchmark test accuracy of the found cell is "
            "not recorded. Pass the official NAS-Bench-201-v1_0-e61699.pth or v1_1-096897.pth with "
            "--set evaluation.nb201_file=PATH (or $STABLENAS_NB201_FILE), or evaluate by training "
            "the cell: `stablenas train RUN_DIR --preset nb201 --dataset cifar10 --out DIR`",
        )
        return
    try:
        bench = get_benchmark(str(path), str(_setting(search, "nb201_hp", "200")))
    except NB201FileError as e:
        _note_once(search, "nb201-error", f"nb201: {e}")
        return
    g = Genotype.from_dict(record["genotype"])
    try:
        accs = bench.test_accs(g)
    except KeyError as e:
        _note_once(search, "nb201-missing", f"nb201: {e}")
        return
    record["nb201_test_acc"] = accs
    ds = _NB201_DATASETS.get(search.cfg.data.dataset)
    if ds in accs:
        record["test_acc"] = accs[ds]
