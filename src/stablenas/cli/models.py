"""The options of the commands whose options obey rules beyond their type: ranges, choices,
comma-separated lists and rules between options (``bench``'s are :class:`stablenas.bench.BenchOptions`).
A command parses its model first (:meth:`~stablenas.config.CommandOptions.parse`), so a bad option is
one ``error: --option ...`` line before anything loads. Commands import this module inside their body:
``stablenas --help`` and the listings load no pydantic."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ..config import CommandOptions, option_flag


class AnalyzeOptions(CommandOptions):
    """``analyze``: the options :func:`~stablenas.analysis.analyze.analyze_run` and its ``--dry-run``
    plan (``plan_run``) share, as their keyword arguments (:meth:`model_dump`)."""

    batches: int = Field(2, ge=1)
    curvature_batches: int = Field(1, ge=1)
    iters: int = Field(20, ge=1)
    spectrum: Literal["auto", "yes", "no"] = "auto"
    landscape: bool = True
    grid: int = 5
    grad_corr: bool = True
    seed: int = 0
    overrides: list[str] = Field(default_factory=list)

    @field_validator("grid")
    @classmethod
    def _two_points(cls, v: int) -> int:
        if v < 2:
            raise ValueError(f"--grid {v}: need at least 2 points per axis")
        return v


class ReportOptions(CommandOptions):
    """``report``: ``--out`` is the comparison page, which only several runs have."""

    run_dirs: list[Path]
    out: Path | None = None

    @model_validator(mode="after")
    def _out_is_a_comparison(self) -> ReportOptions:
        if self.out is not None and len(self.run_dirs) < 2:
            raise ValueError("--out names the comparison page: give two or more run directories")
        return self


class SweepOptions(CommandOptions):
    """``sweep``: one regularisation swept at most (R-DARTS(DP) or R-DARTS(L2), robust-darts Sec.
    5.1-5.3), and what is retrained at the end."""

    l2: list[float] | None = None
    drop_path: list[float] | None = None
    final: Literal["selected", "all", "none"] = "selected"

    @model_validator(mode="after")
    def _one_regularisation(self) -> SweepOptions:
        if self.l2 and self.drop_path:
            raise ValueError("--l2 and --drop-path: give one regularisation to sweep, not both")
        return self

    def regularisation(self) -> tuple[str | None, list[float]]:
        """The swept regularisation (``l2``, ``drop-path`` or None) and its values."""
        if self.l2:
            return "l2", list(self.l2)
        return ("drop-path", list(self.drop_path)) if self.drop_path else (None, [])


class RunOptions(CommandOptions):
    """``search`` and ``train``: a run writes to ``--out`` unless it only prints (``--dry-run``,
    ``--print-config``); ``--nproc`` counts ranks."""

    out: Path | None = None
    dry_run: bool = False
    print_config: bool = False
    nproc: int | None = Field(None, ge=1)
    directory: ClassVar[str] = "the run directory"  # what --out names, for the error line

    @model_validator(mode="after")
    def _out_unless_printing(self) -> RunOptions:
        if self.out is None and not (self.dry_run or self.print_config):
            raise ValueError(f"--out DIR is required ({self.directory}); --dry-run and --print-config need none")
        return self


class TrainOptions(RunOptions):
    """``train``: ``--out`` is the training run's directory."""

    directory: ClassVar[str] = "the training run directory"


class StudyOptions(CommandOptions):
    """``study``: every mode but ``--plan`` reads or writes the study directory."""

    out: Path | None = None
    plan: bool = False

    @model_validator(mode="after")
    def _out_unless_plan(self) -> StudyOptions:
        if self.out is None and not self.plan:
            raise ValueError("--out DIR is required (the study directory); --plan needs none")
        return self


class S5TableOptions(CommandOptions):
    """``s5-table``: the architectures trained with extra seeds, those seeds, and the seeds every
    architecture is trained with, each as comma-separated integers (empty: none)."""

    repeat_archs: list[int] = Field(default_factory=list)
    repeat_seeds: list[int] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=list)

    @field_validator("repeat_archs", "repeat_seeds", "seeds", mode="before")
    @classmethod
    def _integers(cls, v: Any, info: ValidationInfo) -> Any:
        if not isinstance(v, str):
            return v
        try:
            return [int(i) for i in v.split(",") if i.strip()]
        except ValueError:
            raise ValueError(f"{option_flag(info.field_name)} {v!r}: comma-separated integers, "
                             "e.g. 0,17,40,80") from None


class InfoOptions(CommandOptions):
    """``info``: a genotype unless ``--list`` (``listing``); ``--input-size`` a side (32) or C,H,W."""

    genotype: str | None = None
    listing: bool = False
    input_size: int | tuple[int, int, int] | None = None

    @field_validator("input_size", mode="before")
    @classmethod
    def _side_or_shape(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        try:
            dims = [int(s) for s in v.replace("x", ",").split(",")]
        except ValueError:
            dims = []
        if len(dims) not in (1, 3) or min(dims) < 1:
            raise ValueError(f"--input-size {v!r}: expected a side (32) or C,H,W (1,28,28), positive integers")
        return dims[0] if len(dims) == 1 else tuple(dims)

    @model_validator(mode="after")
    def _genotype_unless_list(self) -> InfoOptions:
        if self.genotype is None and not self.listing:
            raise ValueError("give a GENOTYPE (or --list for the published ones)")
        return self
