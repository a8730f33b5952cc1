"""NAS-Bench-201 lookups read straight from the official benchmark file (no ``nas_201_api``).

Supported files (Dong & Yang, ICLR 2020; github.com/D-X-Y/NAS-Bench-201):
``NAS-Bench-201-v1_0-e61699.pth`` and ``NAS-Bench-201-v1_1-096897.pth``. The official API is not
used: it is not reliably installable next to this torch, and its query functions changed
signature between releases (``query_by_arch(arch)`` -> ``query_by_arch(arch, hp)``), breaking
callers. The file itself is stable, and is a ``torch.save``-d dict documented by the API source:

* ``meta_archs``: list of the 15,625 arch strings (index -> ``|op~0|+|op~0|op~1|+...``);
* ``evaluated_indexes``: indices with results;
* ``arch2infos``: index -> ``{"full": ArchResults, "less": ArchResults}``, where ``full`` is the
  200-epoch schedule (``hp="200"``, the numbers the papers quote) and ``less`` the 12-epoch one;
* an ``ArchResults`` state is ``{"arch_index", "arch_str", "dataset_seed": {dataset: [seeds]},
  "all_results": {(dataset, seed): ResultsCount}, ...}``;
* a ``ResultsCount`` state has ``epochs`` and ``eval_acc1es`` = ``{"<set>@<epoch>": accuracy in %}``
  (plus losses, times, params, flop).

The numbers reported (NB201 paper Table 5; single-darts Table 1; the papers' "test accuracy" on
NAS-Bench-201) are the last-epoch accuracies averaged over the trials (seeds):

=================  =====================  ==================  =====================
benchmark dataset  test: (data, set)      valid: (data, set)  meaning
=================  =====================  ==================  =====================
cifar10            cifar10 / ori-test     cifar10-valid / x-valid  trained on train+valid
cifar100           cifar100 / x-test      cifar100 / x-valid
ImageNet16-120     ImageNet16-120 / x-test  ImageNet16-120 / x-valid
=================  =====================  ==================  =====================

Reading the 2 GB pickle takes minutes and several GB of memory, so the few numbers we need are
cached in a small JSON file (``$XDG_CACHE_HOME/stablenas/nb201``) keyed by file name and size;
later searches load that in milliseconds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from statistics import fmean
from typing import Any

from ...errors import DataError
from ...genotype import Genotype
from .genotype import parse_nb201

__all__ = [
    "BENCH_DATASETS",
    "NB201Benchmark",
    "NB201FileError",
    "SUPPORTED_FILES",
    "get_benchmark",
    "resolve_nb201_file",
]

SUPPORTED_FILES = ("NAS-Bench-201-v1_0-e61699.pth", "NAS-Bench-201-v1_1-096897.pth")
NB201_FILE_ENV = "STABLENAS_NB201_FILE"
TRUST_ENV = "STABLENAS_NB201_TRUST"

# benchmark dataset -> ((data, set) for test, (data, set) for validation)
BENCH_DATASETS: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "cifar10": (("cifar10", "ori-test"), ("cifar10-valid", "x-valid")),
    "cifar100": (("cifar100", "x-test"), ("cifar100", "x-valid")),
    "ImageNet16-120": (("ImageNet16-120", "x-test"), ("ImageNet16-120", "x-valid")),
}
HP_KEYS = {"200": "full", "12": "less"}
_CACHE_FORMAT = 1


class NB201FileError(DataError, ValueError):
    """The benchmark file is missing, unreadable, or not in the documented structure."""


def _mean_last(info: Mapping, data: str, setname: str) -> float | None:
    """Mean over trials of the last-epoch accuracy (in %) of ``setname`` when trained on ``data``."""
    seeds = info.get("dataset_seed", {}).get(data)
    if not seeds:
        return None
    accs = []
    for seed in seeds:
        res = info["all_results"][(data, seed)]
        key = f"{setname}@{int(res['epochs']) - 1}"
        if key not in res["eval_acc1es"]:
            return None
        accs.append(float(res["eval_acc1es"][key]))
    return fmean(accs)


def _cost(info: Mapping, data: str) -> dict[str, float] | None:
    seeds = info.get("dataset_seed", {}).get(data)
    if not seeds:
        return None
    runs = [info["all_results"][(data, s)] for s in seeds]
    return {
        "params_M": fmean(float(r["params"]) for r in runs),
        "flops_M": fmean(float(r["flop"]) for r in runs),
    }


def extract(raw: Mapping, hp: str = "200") -> dict[str, dict[str, Any]]:
    """arch string -> {dataset: {"test": %, "valid": %}, "params_M", "flops_M"} from the loaded file."""
    missing = [k for k in ("meta_archs", "arch2infos", "evaluated_indexes") if k not in raw]
    if missing:
        raise NB201FileError(f"not a NAS-Bench-201 file: missing top-level keys {missing}")
    if hp not in HP_KEYS:
        raise NB201FileError(
            f"hp must be one of {list(HP_KEYS)} (epochs of the training schedule), got {hp!r}"
        )
    metas = raw["meta_archs"]
    out: dict[str, dict[str, Any]] = {}
    for index, infos in raw["arch2infos"].items():
        info = infos[HP_KEYS[hp]]
        arch = metas[int(index)]
        entry: dict[str, Any] = {}
        for name, ((tdata, tset), (vdata, vset)) in BENCH_DATASETS.items():
            test, valid = _mean_last(info, tdata, tset), _mean_last(info, vdata, vset)
            if test is not None or valid is not None:
                entry[name] = {"test": test, "valid": valid}
        cost = _cost(info, "cifar10") or _cost(info, "cifar10-valid")
        if cost:
            entry.update(cost)
        out[arch] = entry
    return out


def _load_pickle(path: Path) -> Mapping:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # numpy scalars or classes in the pickle: refuse unless trusted
        if os.environ.get(TRUST_ENV) == "1":
            return torch.load(path, map_location="cpu", weights_only=False)
        raise NB201FileError(
            f"{path}: cannot be read as plain data ({type(e).__name__}: {str(e)[:200]}). "
            f"If this is the official file and you trust it, set {TRUST_ENV}=1 to "
            "unpickle it fully"
        ) from None


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stablenas" / "nb201"


@dataclass
class NB201Benchmark:
    """Test/validation accuracies (fractions) of NAS-Bench-201 cells, by canonical arch string."""

    archs: dict[str, dict[str, Any]]
    source: str = ""
    hp: str = "200"

    @classmethod
    def from_file(cls, path: str | Path, hp: str = "200", cache: bool = True) -> NB201Benchmark:
        path = Path(path).expanduser()
        if not path.is_file():
            raise NB201FileError(
                f"NAS-Bench-201 file {path} does not exist (expected one of {', '.join(SUPPORTED_FILES)})"
            )
        stat = path.stat()
        cache_file = _cache_dir() / f"{path.name}-{stat.st_size}-hp{hp}.json"
        if cache and cache_file.exists():
            d = json.loads(cache_file.read_text())
            if d.get("format") == _CACHE_FORMAT:
                return cls(d["archs"], d["source"], d["hp"])
        archs = extract(_load_pickle(path), hp)
        bench = cls(archs, path.name, hp)
        if cache:
            from ...utils import atomic_write_text

            try:
                atomic_write_text(
                    cache_file,
                    json.dumps({"format": _CACHE_FORMAT, "source": path.name, "hp": hp, "archs": archs}),
                )
            except OSError:
                pass  # a read-only home: just no cache
        return bench

    def __len__(self) -> int:
        return len(self.archs)

    @staticmethod
    def arch_string(arch: str | Genotype) -> str:
        if isinstance(arch, Genotype):
            if arch.arch is None:
                raise ValueError("not a NAS-Bench-201 genotype (no arch string)")
            arch = arch.arch
        parse_nb201(arch)  # validates
        return arch

    def entry(self, arch: str | Genotype) -> dict[str, Any]:
        s = self.arch_string(arch)
        try:
            return self.archs[s]
        except KeyError:
            raise KeyError(f"{s} is not in the benchmark ({len(self.archs)} architectures)") from None

    def test_acc(self, arch: str | Genotype, dataset: str = "cifar10") -> float:
        """Mean last-epoch test accuracy as a fraction (the benchmark stores %)."""
        return self._get(arch, dataset, "test")

    def valid_acc(self, arch: str | Genotype, dataset: str = "cifar10") -> float:
        return self._get(arch, dataset, "valid")

    def _get(self, arch: str | Genotype, dataset: str, which: str) -> float:
        if dataset not in BENCH_DATASETS:
            raise KeyError(
                f"unknown NAS-Bench-201 dataset {dataset!r}; choose from {', '.join(BENCH_DATASETS)}"
            )
        e = self.entry(arch)
        v = e.get(dataset, {}).get(which)
        if v is None:
            raise KeyError(f"the benchmark has no {which} accuracy of {self.arch_string(arch)} on {dataset}")
        return v / 100.0

    def test_accs(self, arch: str | Genotype) -> dict[str, float]:
        """Test accuracy (fraction) on every benchmark dataset the file has for this cell."""
        e = self.entry(arch)
        return {d: e[d]["test"] / 100.0 for d in BENCH_DATASETS if d in e and e[d].get("test") is not None}

    def best(self, dataset: str = "cifar10", which: str = "test") -> tuple[str, float]:
        """The optimum of the space (for regret): (arch string, accuracy fraction)."""
        arch, e = max(
            ((a, e) for a, e in self.archs.items() if e.get(dataset, {}).get(which) is not None),
            key=lambda t: t[1][dataset][which],
        )
        return arch, e[dataset][which] / 100.0


def resolve_nb201_file(configured: str | None = None) -> Path | None:
    """The benchmark file from the config, else ``$STABLENAS_NB201_FILE``, else None."""
    p = configured or os.environ.get(NB201_FILE_ENV)
    return Path(p).expanduser() if p else None


@lru_cache(maxsize=2)
def get_benchmark(path: str, hp: str = "200") -> NB201Benchmark:
    """Process-wide cached :meth:`NB201Benchmark.from_file`."""
    return NB201Benchmark.from_file(path, hp)
