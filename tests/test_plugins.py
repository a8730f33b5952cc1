"""User plug-ins: a method from a file, through the CLI (search -> analyze -> report), from a
config's ``plugins:`` key, and the errors for plug-ins that are missing or broken."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import stablenas as sn
from stablenas.errors import ConfigError
from stablenas.plugins import load_plugin

CLI = [sys.executable, "-m", "stablenas.cli"]
TOY = Path(__file__).resolve().parent.parent / "examples" / "toy_method.py"
TINY = ["--set", "optim.epochs=2", "--set", "data.subset=256", "--set", "data.batch_size=32",
        "--set", "network.layers=3", "--set", "network.channels=4", "--set", "search.steps_per_epoch=2",
        "--set", "search.val_batches=1", "--set", "methods=[{name: toy, temperature: 3}]"]


def _cli(*args, **kw):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600, **kw)


def _entropy(op_weights: dict) -> float:
    return sum(-p * math.log(max(p, 1e-12)) for rows in op_weights.values() for row in rows for p in row)


def test_plugin_method_through_the_cli_search_analyze_report(tmp_path):
    run = tmp_path / "run"
    r = _cli("--plugin", str(TOY), "search", "quickstart", "--out", str(run), "--no-progress", *TINY)
    assert r.returncode == 0, r.stderr
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["plugins"] == [str(TOY)] and saved["methods"] == [{"name": "toy", "temperature": 3}]
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 2
    for rec in recs:  # the hook ran: its number is the entropy of the epoch's op weights
        assert rec["toy_entropy"] == pytest.approx(_entropy(rec["op_weights"]), abs=1e-3)
    # no --plugin now: the run's config brings it back
    r = _cli("analyze", str(run), "--batches", "1", "--iters", "3", "--no-landscape", "--no-grad-corr",
             "--spectrum", "no")
    assert r.returncode == 0, r.stderr
    assert (run / "analysis.json").exists()
    r = _cli("report", str(run))
    assert r.returncode == 0, r.stderr
    assert "toy" in (run / "report.html").read_text()
    # --resume of the finished run finds the method too (and changes nothing)
    before = (run / "metrics.jsonl").read_bytes()
    r = _cli("search", str(run / "config.yaml"), "--out", str(run), "--resume", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (run / "metrics.jsonl").read_bytes() == before


def test_without_the_plugin_the_method_is_unknown(tmp_path):
    r = _cli("search", "quickstart", "--out", str(tmp_path / "x"), *TINY)
    assert r.returncode == 2 and "unknown method 'toy'" in r.stderr and r.stderr.strip().count("\n") == 0
    assert not (tmp_path / "x").exists()


def test_plugins_key_resolves_relative_to_the_config_file(tmp_path):
    sub = tmp_path / "cfgs"
    sub.mkdir()
    (sub / "toy_plugin.py").write_text(TOY.read_text().replace('name = "toy"', 'name = "toy-yaml"'))
    (sub / "c.yaml").write_text("plugins: [toy_plugin.py]\nspace: s3\nmethods: [{name: toy-yaml}]\n")
    cfg = sn.load_config(sub / "c.yaml")
    assert cfg.plugins == [str((sub / "toy_plugin.py").resolve())]
    assert cfg.to_dict()["plugins"] == cfg.plugins and "toy-yaml" in sn.METHODS
    again = sn.config_from_dict(cfg.to_dict())  # the saved form loads without re-importing
    assert again.plugins == cfg.plugins


def test_plugin_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_plugin(str(tmp_path / "nope.py"))
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match="failed to import: RuntimeError: boom"):
        load_plugin(str(bad))
    with pytest.raises(ConfigError, match="no module named 'no_such_mod_xyz'"):
        load_plugin("no_such_mod_xyz")
    r = _cli("--plugin", str(tmp_path / "nope.py"), "methods")
    assert r.returncode == 2 and r.stderr.startswith("error: plugin") and r.stderr.strip().count("\n") == 0
