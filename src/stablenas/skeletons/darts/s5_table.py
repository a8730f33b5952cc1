"""The ground truth of RobustDARTS space S5: every architecture's test accuracy, read from a table.

robust-darts Sec. 3 builds S5 (one intermediate node per cell, ops {sep_conv_3x3, skip_connect,
max_pool_3x3} on both edges, normal and reduction cell: 3^2 x 3^2 = 81 architectures) so that
the global optimum is known and a search is scored by its *test regret*: the test error of the
architecture it deems best minus the lowest test error in the space (their Fig. 2). The table ships
in ``stablenas/resources/s5_<dataset>.json``; :mod:`stablenas.experiments.s5` generates it. This
module only reads it, so a search can look its cells up without importing the experiments.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import product
from pathlib import Path
from typing import Any

from ...genotype import Genotype
from ...spaces.catalog import get_space

RESOURCES = Path(__file__).resolve().parents[2] / "resources"


# --------------------------------------------------------------------------------------------
# the 81 architectures


def enumerate_s5(space: str = "s5") -> list[Genotype]:
    """All architectures of a one-node DARTS-skeleton space, normal-cell-major.

    Index ``i`` has normal ops ``(ops[a], ops[b])`` on the edges from inputs 0 and 1 and reduce
    ops ``(ops[c], ops[d])`` with ``i = ((a * k + b) * k + c) * k + d`` for ``k`` ops per edge.
    """
    sp = get_space(space)
    if set(sp.cell_types) != {"normal", "reduce"} or sp.n_nodes != 1 or sp.n_inputs != 2:
        raise ValueError(f"space {space!r} is not a one-node DARTS-skeleton space like s5")
    cells = {}
    for ct in ("normal", "reduce"):
        e0, e1 = sp.edge_ops[ct]
        cells[ct] = [((a, 0), (b, 1)) for a, b in product(e0, e1)]
    concat = (2,)
    return [
        Genotype(space=space, normal=n, normal_concat=concat, reduce=r, reduce_concat=concat)
        for n, r in product(cells["normal"], cells["reduce"])
    ]


def canonical_key(genotype: Genotype) -> str:
    """Order-free identity of a cell pair: the (op, input) pairs of each node sorted by input.

    The DARTS discretisation lists a node's two edges strongest first, so the same architecture
    appears as ``[(a, 1), (b, 0)]`` or ``[(b, 0), (a, 1)]``; a node is a sum, so both are one cell.
    """
    if genotype.cell_types() != ["normal", "reduce"]:
        raise ValueError(f"a {genotype.skeleton.name}-skeleton genotype has no S5 key")
    parts = []
    for ct in ("normal", "reduce"):
        pairs = genotype.cell(ct)
        nodes = [sorted(pairs[k : k + 2], key=lambda p: (p[1], p[0])) for k in range(0, len(pairs), 2)]
        parts.append(f"{ct}:" + "+".join(",".join(f"{op}~{i}" for op, i in node) for node in nodes))
    return "|".join(parts)


# --------------------------------------------------------------------------------------------
# the table


def table_path(dataset: str = "fashion-mnist") -> Path:
    return RESOURCES / f"s5_{dataset.strip().lower().replace('-', '_')}.json"


@dataclass
class S5Table:
    """Test accuracy (fraction) of every S5 architecture under one protocol, keyed by canonical_key."""

    dataset: str
    entries: dict[str, dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> S5Table:
        entries = {}
        for e in d["architectures"]:
            g = Genotype.from_dict(e["genotype"])
            entries[canonical_key(g)] = e
        meta = {k: v for k, v in d.items() if k != "architectures"}
        return cls(d["dataset"], entries, meta)

    @classmethod
    def load(cls, path: str | Path) -> S5Table:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, genotype: Genotype) -> bool:
        return canonical_key(genotype) in self.entries

    def covers(self, space: str = "s5") -> bool:
        """True when every architecture of ``space`` has an entry."""
        return all(canonical_key(g) in self.entries for g in enumerate_s5(space))

    @property
    def best_acc(self) -> float:
        return max(e["test_acc"] for e in self.entries.values())

    def test_acc(self, genotype: Genotype) -> float:
        key = canonical_key(genotype)
        try:
            return float(self.entries[key]["test_acc"])
        except KeyError:
            raise KeyError(
                f"architecture {key} is not in the S5 table for {self.dataset} ({len(self.entries)} entries)"
            ) from None

    def regret(self, genotype: Genotype) -> float:
        """Best test accuracy in the table minus this architecture's (>= 0; a fraction, x100 for %)."""
        return self.best_acc - self.test_acc(genotype)

    def summary(self) -> dict[str, Any]:
        accs = sorted(e["test_acc"] for e in self.entries.values())
        best_key = max(self.entries, key=lambda k: self.entries[k]["test_acc"])
        return {
            "n": len(accs),
            "best": accs[-1],
            "median": statistics.median(accs),
            "worst": accs[0],
            "std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
            "best_key": best_key,
        }


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float) -> S5Table:
    return S5Table.load(path)


def load_table(dataset: str = "fashion-mnist", path: str | Path | None = None) -> S5Table | None:
    """The shipped (or given) S5 table for ``dataset``; ``None`` when there is none."""
    p = Path(path) if path is not None else table_path(dataset)
    if not p.exists():
        return None
    return _load_cached(str(p), p.stat().st_mtime)


def has_table(space: str, dataset: str) -> bool:
    """True when the shipped table for ``dataset`` holds every architecture of ``space``: a search there
    records its test regret (a space that is not a one-node DARTS-skeleton space never does)."""
    table = load_table(dataset)
    try:
        return table is not None and table.covers(space)
    except ValueError:
        return False


def regret(genotype: Genotype, dataset: str = "fashion-mnist", table: S5Table | None = None) -> float:
    """Test regret of ``genotype`` on ``dataset``: best accuracy in S5 minus its accuracy."""
    table = table or load_table(dataset)
    if table is None:
        raise FileNotFoundError(
            f"no S5 table for {dataset} (expected {table_path(dataset)}); "
            "generate it with `stablenas s5-table`"
        )
    return table.regret(genotype)


def forget_cached() -> None:
    """Drop the tables read so far (a freshly written table is read again)."""
    _load_cached.cache_clear()
