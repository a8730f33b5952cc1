"""User plug-ins: a method from a file, through the CLI (search -> analyze -> report), from a
config's ``plugins:`` key, the errors for plug-ins that are missing or broken, and the rule that a
run directory's plug-ins are not imported by the commands that read it unless trusted."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

import stablenas as sn
from stablenas.cli import main
from stablenas.errors import ConfigError, PluginError
from stablenas.plugins import load_plugin

CLI = [sys.executable, "-m", "stablenas.cli"]
TOY = Path(__file__).resolve().parents[2] / "examples" / "toy_method.py"
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
    # no --plugin now: the run's config names it, but reading a run imports nothing unasked
    analyze = ["analyze", str(run), "--batches", "1", "--iters", "3", "--no-landscape", "--no-grad-corr",
               "--spectrum", "no"]
    r = _cli(*analyze)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 2, r.stderr
    assert lines[0] == f"note: {run} names plug-in(s) {TOY}, not loaded; pass --trust-plugins to load them"
    assert lines[1].startswith("error: ") and "unknown method 'toy'" in lines[1] and "--trust-plugins" in lines[1]
    assert not (run / "analysis.json").exists()
    r = _cli(*analyze, "--trust-plugins")
    assert r.returncode == 0 and "note:" not in r.stderr, r.stderr
    assert (run / "analysis.json").exists()
    r = _cli("--plugin", str(TOY), "report", str(run))  # loaded already: nothing to decline
    assert r.returncode == 0 and "note:" not in r.stderr, r.stderr
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


@pytest.mark.parametrize("body,what", [("import sys\nsys.exit(3)\n", "SystemExit: 3"),
                                       ("raise KeyboardInterrupt\n", "KeyboardInterrupt"),
                                       ("raise SystemExit('bye')\n", "SystemExit: bye"),
                                       ("import nonexistent_mod_q\n", "ModuleNotFoundError")],
                         ids=["sys.exit(3)", "KeyboardInterrupt", "SystemExit-text", "import-error"])
def test_a_plugin_that_exits_or_is_interrupted_is_one_line(tmp_path, capsys, body, what):
    bad = tmp_path / "exits.py"
    bad.write_text(body)
    with pytest.raises(PluginError, match=what):
        load_plugin(str(bad))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["--plugin", str(bad), "methods"])
    err = capsys.readouterr().err
    assert e.value.code == PluginError.exit_code == 2, err
    assert err.strip().count("\n") == 0 and err.startswith(f"error: plugin '{bad}' failed to import: {what}"), err


# --------------------------------------------------------------------------------------------- received runs

EVIL = "from pathlib import Path\nPath(__file__).with_suffix('.imported').write_text('ran')\n"


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> Path:
    """A finished tiny search with no plug-in (each test adds one to a copy's config.yaml)."""
    run = tmp_path_factory.mktemp("plain") / "run"
    sets = ["optim.epochs=1", "data.subset=256", "data.batch_size=32", "network.layers=2", "network.channels=8",
            "search.steps_per_epoch=2", "search.val_batches=1", "threads=1"]
    sn.run_search(sn.load_config("quickstart", sets), run, progress=False, log=lambda m: None, loggers="none")
    return run


def _received(plain_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of a finished run whose config.yaml names a plug-in that leaves a marker when imported."""
    run = tmp_path / "received"
    shutil.copytree(plain_run, run)
    evil = tmp_path / "evil.py"
    evil.write_text(EVIL)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "plugins": [str(evil)]}, sort_keys=False))
    return run, evil.with_suffix(".imported")


READING = {"show": ["show"], "info": ["info"], "report": ["report"], "train-print-config": ["train", "--print-config"],
           "analyze": ["analyze", "--batches", "1", "--iters", "3", "--no-landscape", "--no-grad-corr",
                       "--spectrum", "no"]}


@pytest.mark.parametrize("name", list(READING))
def test_reading_a_run_names_its_plugins_and_imports_none(plain_run, tmp_path, capsys, name):
    """In process: an import of the plug-in would leave its marker file whichever process ran it."""
    run, marker = _received(plain_run, tmp_path)
    command, *opts = READING[name]
    code, _, err = run_cli([command, run, *opts], capsys)
    assert code == 0, err
    notes = [ln for ln in err.splitlines() if ln.startswith("note: ")]
    assert notes == [f"note: {run} names plug-in(s) {tmp_path / 'evil.py'}, not loaded; pass --trust-plugins "
                     "to load them"], err
    assert not marker.exists()


def test_show_imports_a_runs_plugins_only_when_trusted(plain_run, tmp_path):
    run, marker = _received(plain_run, tmp_path)
    r = _cli("show", str(run))
    assert r.returncode == 0 and "evil.py, not loaded" in r.stderr and f"run: {run}" in r.stdout
    assert not marker.exists()
    for args in (["--trust-plugins", "show", str(run)], ["show", str(run), "--trust-plugins"]):
        marker.unlink(missing_ok=True)
        r = _cli(*args)
        assert r.returncode == 0 and "note:" not in r.stderr, r.stderr
        assert marker.read_text() == "ran"


def test_a_refused_resume_imports_nothing(plain_run, tmp_path, capsys):
    run, marker = _received(plain_run, tmp_path)
    code, _, err = run_cli(["search", run / "config.yaml", "--out", tmp_path / "elsewhere", "--resume"], capsys)
    assert code == 2 and err.startswith("error: --resume:") and "does not exist" in err, err
    assert not marker.exists()
