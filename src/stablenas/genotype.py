"""Discrete architectures (genotypes): the type, its JSON form and loading; each skeleton owns
the rest (its fields, reading and writing, text forms, discretisation rules: ``skeletons.<name>``).

A DARTS-skeleton genotype lists, per cell type, ``[op, input]`` pairs two per intermediate node
(inputs 0 and 1 are the cell inputs c_{k-2}, c_{k-1}; 2.. the intermediate nodes) and the nodes
concatenated into the cell output. A NAS-Bench-201 genotype is its arch string
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``. Both round-trip through JSON so a search result can be
handed straight to ``stablenas train``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import GenotypeError
from .registry import DEFAULT_SKELETON, SKELETONS, SPACES
from .spaces.catalog import SearchSpace, get_space

Pair = tuple[str, int]


@dataclass(frozen=True)
class Genotype:
    """A discrete architecture. The fields are the union of what the built-in skeletons store
    (DARTS: per cell type ``[op, input]`` pairs and the concatenated nodes; NB201: ``arch``);
    reading, writing, printing and the per-cell views belong to the space's skeleton
    (:mod:`stablenas.skeletons`), which every method here asks."""

    space: str
    normal: tuple[Pair, ...] = ()
    normal_concat: tuple[int, ...] = ()
    reduce: tuple[Pair, ...] = ()
    reduce_concat: tuple[int, ...] = ()
    arch: str | None = None  # NAS-Bench-201 arch string
    extra: dict = field(default_factory=dict, compare=False)

    # -- views -------------------------------------------------------------------------------
    @property
    def skeleton(self):
        """The :class:`~stablenas.skeletons.base.Skeleton` this genotype belongs to."""
        return genotype_skeleton(self)

    def cell_types(self) -> list[str]:
        return self.skeleton.cell_types(self)

    def cell(self, cell_type: str) -> tuple[Pair, ...]:
        return self.skeleton.cell_pairs(self, cell_type)

    def concat(self, cell_type: str) -> tuple[int, ...]:
        return {"normal": self.normal_concat, "reduce": self.reduce_concat}[cell_type]

    def ops(self, cell_type: str | None = None) -> list[str]:
        types = [cell_type] if cell_type else self.cell_types()
        return [op for ct in types for op, _ in self.cell(ct)]

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return self.skeleton.genotype_to_dict(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> None:
        from .utils import atomic_write_text

        atomic_write_text(Path(path), self.to_json(indent=2) + "\n")

    @classmethod
    def from_dict(cls, d: Mapping) -> Genotype:
        if not isinstance(d, Mapping):
            raise GenotypeError(f"a genotype must be a JSON object, got {type(d).__name__}")
        return genotype_skeleton(d).genotype_from_dict(d)

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise GenotypeError(f"genotype is not valid JSON: {e}") from None

    @classmethod
    def from_text(cls, text: str, space: str = "darts") -> Genotype:
        """JSON, or a text form a skeleton reads (:meth:`Skeleton.parse_genotype_text`; DARTS: the
        repositories' Python form ``Genotype(normal=[('sep_conv_3x3', 0), ...], ...)``, read with
        :mod:`ast`, never evaluated). ``space``: the space a form without one belongs to."""
        t = text.strip()
        if not t.startswith(("{", "[")):
            g = cls.from_skeleton_text(t, space)
            if g is not None:
                return g
        return cls.from_json(t)

    @classmethod
    def from_skeleton_text(cls, text: str, space: str = "darts") -> Genotype | None:
        """The genotype of a text form some skeleton reads as its own, else None (the text is in
        no such form: JSON, a path, a published name)."""
        for sk in SKELETONS.values():
            d = sk.parse_genotype_text(text.strip(), space)
            if d is not None:
                return cls.from_dict(d)
        return None

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        path = Path(path)
        if path.is_dir():
            path = path / "genotype.json"
        if not path.exists():
            raise GenotypeError(f"no genotype at {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            why = getattr(e, "strerror", None) or "not UTF-8 text: a genotype is a JSON file"
            raise GenotypeError(f"{path}: cannot read the genotype ({why})") from None
        try:
            return cls.from_text(text)
        except GenotypeError as e:
            raise GenotypeError(f"{path}: {e}") from None

    def validate(self) -> None:
        """The skeleton's structural checks (DARTS: every node takes inputs from earlier nodes)."""
        self.skeleton.validate_genotype(self)

    def __str__(self) -> str:
        return self.skeleton.genotype_str(self)


def genotype_skeleton(obj: Genotype | Mapping):
    """The skeleton of a genotype (or genotype dict): its space's, else the first registered
    skeleton that claims it, else the default (``darts``)."""
    space = obj.space if isinstance(obj, Genotype) else obj.get("space")
    if isinstance(space, str) and space in SPACES:
        return SKELETONS[SPACES[space].skeleton]
    for sk in SKELETONS.values():
        if sk.owns(obj) if isinstance(obj, Genotype) else sk.claims(obj):
            return sk
    return SKELETONS[DEFAULT_SKELETON]


def derive(space: SearchSpace | str, op_weights: Mapping[str, torch.Tensor],
           edge_weights: Mapping[str, torch.Tensor] | None = None) -> Genotype:
    """The default value-based rule of the space's skeleton."""
    if isinstance(space, str):
        space = get_space(space)
    return SKELETONS[space.skeleton].derive(space, op_weights, edge_weights)
