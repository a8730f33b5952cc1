"""The study protocol: its YAML model, loading a shipped or given file, and which changes a resume refuses.

Kept apart from running: ``--plan``, ``--summary`` and the cost estimate read a protocol without
touching torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from ...config import ConfigModel, Seed, format_validation_error, read_yaml
from ...errors import ConfigError

__all__ = ["PROTOCOL_DIR", "EstimateSpec", "RetrainSpec", "StudyProtocol", "list_protocols", "load_protocol",
           "protocol_diff"]

PROTOCOL_DIR = Path(__file__).resolve().parent.parent.parent / "protocols"


class RetrainSpec(ConfigModel):
    """Retraining of every found cell from scratch (a :class:`~stablenas.evaluate.train.TrainConfig`)."""

    preset: str | None = None  # a training preset (darts, darts-small, nb201) or none: the fields below only
    set: dict[str, Any] = {}  # TrainConfig fields (the S5-table protocol is an example of a CPU budget)
    spaces: list[str] | None = None  # None: every space without a ground-truth lookup table
    # also retrain the cell derived at these search epochs (iDARTS Fig. 7: accuracy of the cell taken at
    # epoch e), for the methods in ``at_epochs_methods`` (None: every method)
    at_epochs: list[int] = []
    at_epochs_methods: list[str] | None = None

    @field_validator("at_epochs")
    @classmethod
    def _positive_epochs(cls, v: list[int]) -> list[int]:
        if any(e < 1 for e in v) or len(set(v)) != len(v):
            raise ValueError(f"at_epochs {v}: distinct search epochs, each >= 1")
        return sorted(v)


class EstimateSpec(ConfigModel):
    """Measured figures for the cost estimate (``--plan``) until units of the study have finished."""

    epoch_seconds: dict[str, float] = {}  # DARTS 1st order, seconds per search epoch, per space
    retrain_seconds: dict[str, float] = {}  # one retraining, per space
    relative: dict[str, float] = {}  # per method: cost of a search epoch relative to DARTS
    track_seconds: dict[str, float] = {}  # one lambda_max measurement of the tracker, per space
    measured: str = ""  # where the figures come from (command, date, load)


class StudyProtocol(ConfigModel):
    name: str
    description: str = ""
    base: str = "quickstart"  # search preset or YAML path every unit starts from
    set: list[str] = []  # --set overrides of the base, for every unit (the search budget)
    space_set: dict[str, list[str]] = {}  # per space: --set overrides after ``set`` (e.g. its dataset)
    spaces: list[str] = Field(min_length=1)
    seeds: list[Seed] = Field(min_length=1)
    methods: dict[str, list[str]] = Field(min_length=1)  # name -> its --set overrides, in queue order
    track: dict[str, Any] | None = {"name": "hessian", "iters": 10, "record_alpha": False}
    retrain: RetrainSpec | None = None
    discretization_batches: int | None = Field(None, gt=0)  # None: the whole validation half
    reference: str = "darts"  # search cost is reported relative to this method
    estimate: EstimateSpec = EstimateSpec()

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"repeated seeds {v}")
        return v

    @field_validator("spaces")
    @classmethod
    def _unique_spaces(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"repeated spaces {v}")
        return v

    @model_validator(mode="after")
    def _space_set_names_spaces(self) -> StudyProtocol:
        extra = sorted(set(self.space_set) - set(self.spaces))
        if extra:
            raise ValueError(f"space_set names {', '.join(extra)}, not in spaces {self.spaces}")
        return self

    def to_dict(self) -> dict:
        d = self.model_dump(mode="json")
        if not d["space_set"]:  # protocols (and records) written before space_set existed compare equal
            del d["space_set"]
        return d


def list_protocols() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))


def load_protocol(name_or_path: str | Path, overrides: list[str] | None = None) -> StudyProtocol:
    """A protocol YAML file or a shipped protocol's name (``cpu-collapse``, ``gpu-paper``), plus
    ``--set`` overrides of its keys (``seeds=[0]``, ``retrain.set.epochs=1``)."""
    from ...config import apply_overrides

    p = Path(name_or_path)
    if not p.is_file():
        cand = PROTOCOL_DIR / f"{name_or_path}.yaml"
        if not cand.is_file():
            raise ConfigError(f"no protocol file {str(name_or_path)!r} and no shipped protocol of that name; "
                              f"shipped: {', '.join(list_protocols())}")
        p = cand
    raw = read_yaml(p, "protocol")
    if raw is None:
        raise ConfigError(f"{p}: the protocol is empty; a protocol is a mapping (name, spaces, seeds, methods, ...)")
    raw = apply_overrides(raw, overrides, example="seeds=[0,1]")
    try:
        return StudyProtocol.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{p}: {format_validation_error(e, StudyProtocol, prefix='invalid protocol')}") from None


def protocol_diff(old: dict, new: dict) -> list[str]:
    """Keys that change results; seeds and methods may grow (a finished unit stays valid)."""
    from ...runs.records import diff_keys

    keys = [k for k in diff_keys(old, new) if k.split(".")[0] not in ("seeds", "methods", "estimate", "description",
                                                                       "spaces")]
    for m, sets in (old.get("methods") or {}).items():
        if m in (new.get("methods") or {}) and new["methods"][m] != sets:
            keys.append(f"methods.{m}")
    return sorted(set(keys))
