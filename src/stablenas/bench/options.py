"""What one bench run measures and at which size: :class:`BenchConfig` (one size, every switch),
the named sizes, and :class:`BenchOptions`, the validated ``stablenas bench`` options that expand
into one :class:`BenchConfig` per size."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import ValidationInfo, field_validator, model_validator

from ..config import CommandOptions, option_flag

# the named sizes: (cells, channels, batch, input)
SIZES: dict[str, dict[str, Any]] = {
    "paper": {"cells": 8, "channels": 16, "batch": 64, "input": (3, 32, 32)},
    "cpu-study": {"cells": 5, "channels": 8, "batch": 64, "input": (1, 28, 28)},
}
ENGINES = ("fast", "plain", "plain_cl")


@dataclass
class BenchConfig:
    space: str = "darts"
    cells: int = 8
    channels: int = 16
    batch: int = 64
    input: tuple[int, int, int] = (3, 32, 32)
    classes: int = 10
    repeats: int = 3
    warmup: int = 1
    methods: list[str] | None = None  # None = every preset in configs/ that configures a method
    second_order: bool = True
    plain: bool = True
    plain_cl: bool = True  # also the plain model in channels_last (with or without plain)
    curvature: bool = True
    curvature_iters: int = 20
    exact: bool = True  # exact Hessian for the fast engine (one HVP per alpha entry)
    plain_exact: bool = False  # also for the plain model (else extrapolated from its per-HVP time)
    memory: bool = True
    scaling: bool = False
    threads: int | None = None
    device: str = "auto"
    seed: int = 0
    channels_last: bool = True
    size: str = "custom"  # a name from SIZES, or custom
    notes: list[str] = field(default_factory=list)

    def engines(self) -> tuple[str, ...]:
        return ("fast",) + (("plain",) if self.plain else ()) + (("plain_cl",) if self.plain_cl else ())


def sized(name: str, **overrides: Any) -> BenchConfig:
    """A named size from ``SIZES`` (cells, channels, batch, input), other fields from ``overrides``
    (a ``None`` override keeps the size's value)."""
    if name not in SIZES:
        raise ValueError(f"--size {name!r}: unknown; available: {', '.join(SIZES)}")
    fields = dict(SIZES[name])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return BenchConfig(size=name, **fields)


def parse_input(text: str) -> tuple[int, int, int]:
    """'3x32x32' -> (3, 32, 32)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"--input {text!r}: expected CxHxW with positive integers, e.g. 3x32x32")
    return shape  # type: ignore[return-value]


def add_size_arguments(parser: Any, default_size: str) -> None:
    """The size options of the engine benchmarks (benchmarks/engine_*.py): a named size, each field overridable,
    the update rule and the thread count; read back with :func:`sized_from_args`."""
    parser.add_argument("--space", default="darts")
    parser.add_argument("--size", default=default_size, choices=sorted(SIZES))
    parser.add_argument("--cells", type=int)
    parser.add_argument("--channels", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--input")
    parser.add_argument("--update", default="first", choices=["first", "second"])
    parser.add_argument("--threads", type=int, default=None)


def sized_from_args(args: Any) -> BenchConfig:
    """The :class:`BenchConfig` of :func:`add_size_arguments`' options (sets the thread count first)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return sized(args.size, space=args.space, cells=args.cells, channels=args.channels, batch=args.batch,
                 input=parse_input(args.input) if args.input else None)


# the lower bound of each counted option
_LOW = {"cells": 1, "channels": 1, "batch": 1, "repeats": 1, "warmup": 0, "curvature_iters": 1}


class BenchOptions(CommandOptions):
    """The options of ``stablenas bench``, validated in the order the command line reads them (the
    first error is the one reported, as ``--option ...: what is allowed``); :meth:`parse` raises it
    as a :class:`~stablenas.errors.ConfigError`. ``size`` is the comma-separated size names; left
    out, both named sizes run, or one custom size when cells, channels, batch or input is given.
    ``methods``: ``all`` (every preset with a method), ``none``, or comma-separated presets."""

    space: str = "darts"
    cells: int | None = None
    channels: int | None = None
    batch: int | None = None
    repeats: int = 3
    warmup: int = 1
    curvature_iters: int = 20
    input: tuple[int, int, int] | None = None
    size: str | None = None
    methods: list[str] | None = None
    plain: bool = True
    plain_cl: bool = True
    second_order: bool = True
    curvature: bool = True
    exact: bool = True
    plain_exact: bool = False
    memory: bool = True
    scaling: bool = False
    threads: int | None = None
    device: str = "auto"
    seed: int = 0
    nproc: int | None = None  # the data-parallel bench (its own checks: run_dp_bench)
    tune: bool = False
    tune_budget: float = 120.0

    @field_validator("space")
    @classmethod
    def _known_space(cls, v: str) -> str:
        from ..spaces.catalog import SPACES

        if v not in SPACES:
            raise ValueError(f"--space {v!r}: unknown; available: {', '.join(SPACES)}")
        return v

    @field_validator("cells", "channels", "batch", "repeats", "warmup", "curvature_iters")
    @classmethod
    def _at_least(cls, v: int | None, info: ValidationInfo) -> int | None:
        low = _LOW[info.field_name]
        if v is not None and v < low:
            raise ValueError(f"{option_flag(info.field_name)} must be >= {low}, got {v}")
        return v

    @field_validator("input", mode="before")
    @classmethod
    def _shape(cls, v: Any) -> Any:
        if v is None or isinstance(v, str):
            return None if v is None else parse_input(v)
        return parse_input("x".join(map(str, v)))

    @field_validator("size")
    @classmethod
    def _known_sizes(cls, v: str | None) -> str | None:
        if v is not None:
            names = _names(v)
            bad = [n for n in names if n not in SIZES]
            if bad or not names:
                raise ValueError(f"--size {v!r}: unknown size {bad[0] if bad else ''!r}; available: "
                                 f"{', '.join(SIZES)}")
        return v

    @field_validator("methods", mode="before")
    @classmethod
    def _presets(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        key = v.strip().lower()
        return None if key == "all" else [] if key in ("none", "") else _names(v)

    @model_validator(mode="after")
    def _tune_budget(self) -> BenchOptions:
        if self.tune and not self.tune_budget > 0:
            raise ValueError(f"--tune-budget must be > 0, got {self.tune_budget}")
        return self

    def sizes(self) -> list[str]:
        """The size names to run: the named ones, else ``custom`` when a size field is given, else all."""
        if self.size is not None:
            return _names(self.size)
        custom = any(v is not None for v in (self.cells, self.channels, self.batch, self.input))
        return ["custom"] if custom else list(SIZES)

    def configs(self) -> list[BenchConfig]:
        """One :class:`BenchConfig` per size (``custom``: the paper size with the given fields)."""
        common = dict(space=self.space, cells=self.cells, channels=self.channels, batch=self.batch,
                      input=self.input, repeats=self.repeats, warmup=self.warmup, methods=self.methods,
                      plain=self.plain, plain_cl=self.plain_cl, second_order=self.second_order,
                      curvature=self.curvature, curvature_iters=self.curvature_iters, exact=self.exact,
                      plain_exact=self.plain_exact, memory=self.memory, scaling=self.scaling,
                      threads=self.threads, device=self.device, seed=self.seed)
        cfgs = []
        for n in self.sizes():
            cfg = sized("paper" if n == "custom" else n, **common)
            cfg.size = n
            cfgs.append(cfg)
        return cfgs

    def tune_config(self) -> BenchConfig:
        """``--tune`` times one size: the first named, else a custom one, else cpu-study on CPU and
        paper on CUDA."""
        from ..utils import resolve_device

        bc = self.configs()[0]
        if self.size is None and bc.size != "custom":
            name = "paper" if resolve_device(self.device).type == "cuda" else "cpu-study"
            bc = sized(name, **{k: getattr(bc, k) for k in ("space", "repeats", "warmup", "threads", "device",
                                                           "seed")})
        return bc


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]

