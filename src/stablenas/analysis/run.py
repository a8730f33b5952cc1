"""Reading a run directory back (for `show`, analysis and reports): a search run (config.yaml) or
a training run of ``stablenas train`` (train.json, result.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import read_yaml
from ..errors import RunDirError
from ..genotype import Genotype
from ..plugins import run_plugins
from ..runs.records import read_jsonl


@dataclass
class Run:
    path: Path
    config: dict
    metrics: list[dict]
    genotype: Genotype | None
    kind: str = "search"  # "search" | "train"
    result: dict | None = None  # a training run's result.json once it finished

    @property
    def status(self) -> str:
        """running (pid N) / interrupted / complete / failed / diverged (see stablenas.runs.directory)."""
        from ..runs.directory import RunDir

        if self.kind == "train":
            rd = RunDir(self.path, kind="train", config_name=TRAIN_CONFIG)
            return str(rd.status(finished=lambda: (self.path / "result.json").exists()))
        rd = RunDir(self.path, kind="search", config_name="config.yaml")
        return str(rd.status(finished=lambda: (self.path / "genotype.json").exists()))


TRAIN_CONFIG = "train.json"  # stablenas.evaluate.train.CONFIG_FILE (not imported: it pulls in the networks)


def load_run_plugins(path: str | Path) -> list[str]:
    """The plug-ins a run's saved config.yaml records (resolved when it was written), imported as
    :func:`stablenas.plugins.run_plugins` allows."""
    try:
        config = read_yaml(Path(path) / "config.yaml", "run's config", RunDirError) or {}
    except RunDirError:
        return []  # said by whatever reads the config for its content
    return run_plugins(config.get("plugins") or [], path)


def load_run(path: str | Path) -> Run:
    path = Path(path)
    cfg_file = path / "config.yaml"
    if not path.is_dir():
        raise RunDirError(f"{path} is not a run directory (not a directory)")
    if not cfg_file.is_file() and (path / TRAIN_CONFIG).is_file():
        return _load_train_run(path)
    if not cfg_file.is_file():
        raise RunDirError(f"{path} is not a run directory (no config.yaml, no {TRAIN_CONFIG})")
    config = read_yaml(cfg_file, "run's config", RunDirError) or {}
    run_plugins(config.get("plugins") or [], path)  # its user methods/spaces/ops, as trusted
    # a torn last line from a kill stops the read; the checkpoint rewrites the file on resume
    metrics = read_jsonl(path / "metrics.jsonl")
    genotype = None
    if (path / "genotype.json").exists():
        genotype = Genotype.load(path / "genotype.json")
    elif metrics and "genotype" in metrics[-1]:
        genotype = Genotype.from_dict(metrics[-1]["genotype"])
    return Run(path, config, metrics, genotype)


def _load_train_run(path: Path) -> Run:
    """A ``stablenas train`` directory: train.json holds the config and the genotype."""

    def read(name: str) -> dict | None:
        f = path / name
        if not f.is_file():
            return None
        try:
            data = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunDirError(f"{f}: not valid JSON ({type(e).__name__})") from None
        if not isinstance(data, dict):
            raise RunDirError(f"{f}: not a training record (top level is {type(data).__name__})")
        return data

    meta = read(TRAIN_CONFIG) or {}
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    genotype = Genotype.from_dict(meta["genotype"]) if isinstance(meta.get("genotype"), dict) else None
    return Run(path, config, read_jsonl(path / "metrics.jsonl"), genotype, kind="train", result=read("result.json"))
