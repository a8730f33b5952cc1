"""Reading a run directory back (for `show`, analysis and reports)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..genotype import Genotype
from ..plugins import load_plugins


@dataclass
class Run:
    path: Path
    config: dict
    metrics: list[dict]
    genotype: Genotype | None

    @property
    def status(self) -> str:
        total = self.config.get("optim", {}).get("epochs")
        if self.genotype is not None and (self.path / "genotype.json").exists():
            return "complete"
        return f"incomplete ({len(self.metrics)}/{total} epochs; resume with --resume)"


def load_run_plugins(path: str | Path) -> list[str]:
    """Import the plug-ins a run's saved config.yaml records (resolved when it was written)."""
    try:
        config = yaml.safe_load((Path(path) / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    return load_plugins(config.get("plugins") or []) if isinstance(config, dict) else []


def load_run(path: str | Path) -> Run:
    path = Path(path)
    cfg_file = path / "config.yaml"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{path} is not a run directory (no config.yaml)")
    config = yaml.safe_load(cfg_file.read_text()) or {}
    if isinstance(config, dict):
        load_plugins(config.get("plugins") or [])  # the run's user methods/spaces/ops, recorded resolved
    metrics = []
    mfile = path / "metrics.jsonl"
    if mfile.exists():
        for line in mfile.read_text().splitlines():
            if line.strip():
                try:
                    metrics.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a torn last line from a kill; the checkpoint rewrites it on resume
    genotype = None
    if (path / "genotype.json").exists():
        genotype = Genotype.load(path / "genotype.json")
    elif metrics and "genotype" in metrics[-1]:
        genotype = Genotype.from_dict(metrics[-1]["genotype"])
    return Run(path, config, metrics, genotype)
