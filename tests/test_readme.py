"""The README is a contract: every `stablenas` command in its fenced blocks runs, in order, in one
scratch directory, with tiny overrides appended (digits-sized supernets, one epoch, a few steps), so a
renamed option, a preset, a run directory that no earlier line creates or a wrong path fails here.

Each subcommand has one tiny form below; a README command whose subcommand has none fails the test
(add one rather than skipping it). The Python block runs too, with the same tiny overrides."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY
from typer.testing import CliRunner

import stablenas as sn
from stablenas.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"

TINY_SEARCH = [*TINY, "optim.epochs=1", "search.steps_per_epoch=2", "search.val_batches=1"]
TINY_TRAIN = ["dataset=digits", "subset=null", "channels=8", "layers=2", "batch_size=32", "epochs=1",
              "steps_per_epoch=2", "test_subset=64", "channels_last=false"]


def _sets(items):
    return [a for o in items for a in ("--set", o)]


def _tiny(argv: list[str]) -> list[str] | None:
    """The tiny form of one README command (None: it cannot run without what the README says it
    needs, e.g. placeholders in a synopsis line)."""
    lead = []  # global options before the subcommand (--plugin FILE)
    while argv and argv[0] == "--plugin":
        lead, argv = lead + argv[:2], argv[2:]
    if lead:
        return lead + _tiny(argv)
    cmd, rest = argv[0], argv[1:]
    if cmd == "search":
        return argv + _sets(TINY_SEARCH) + ["--log", "tensorboard"]
    if cmd == "train":
        return argv + _sets(TINY_TRAIN) + ["--log", "none"]
    if cmd == "analyze":
        return argv + ["--iters", "3", "--grid", "2", "--batches", "1", "--spectrum", "no"]
    if cmd == "sweep":
        # same options, smaller grid: the first seed and the first regularisation value
        out, i = [], 0
        while i < len(rest):
            a = rest[i]
            if a in ("--seeds", "--l2", "--drop-path"):
                vals = []
                i += 1
                while i < len(rest) and not rest[i].startswith("--"):
                    vals.append(rest[i])
                    i += 1
                out += [a, vals[0]]
                continue
            out.append(a)
            i += 1
        return ["sweep", *out, *_sets(TINY_SEARCH), "--holdout", "64", "--retrain-epochs", "1", "--final-epochs", "1",
                *[x for o in TINY_TRAIN if not o.startswith("epochs") for x in ("--train-set", o)]]
    if cmd == "study":
        return ["study", rest[0], "--plan"]  # 144 long units: the queue and cost estimate instead
    if cmd == "s5-table":
        return ["s5-table", "--show"]  # 81 trainings: the packaged table's summary instead
    if cmd == "bench":
        return argv + ["--cells", "1", "--channels", "8", "--batch", "4", "--input", "3x8x8", "--repeats", "1",
                       "--warmup", "0", "--no-memory", "--no-plain", "--no-second-order", "--no-exact"]
    if cmd in ("info", "spaces", "presets", "methods", "show", "report", "--version"):
        return argv
    raise AssertionError(f"README command `stablenas {shlex.join(argv)}` has no tiny form in tests/test_readme.py")


def readme_commands(text: str) -> list[list[str]]:
    """`stablenas ...` commands of the fenced blocks, in order (comments dropped; in a `&&` chain
    only the stablenas part; synopsis lines with placeholders such as DIR or CONFIG.yaml|PRESET skipped)."""
    cmds = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():  # shell line continuations
            for part in line.split("&&"):
                part = part.strip()
                m = re.match(r"(?:\.venv/bin/)?stablenas(\s.*|$)", part)
                if not m:
                    continue
                argv = shlex.split(m.group(1), comments=True)
                if any(a in ("DIR", "N", "D") or a.startswith("[") or "|" in a for a in argv):
                    continue  # a synopsis line
                cmds.append(argv)
    return cmds


def test_readme_lists_the_commands_it_promises():
    cmds = readme_commands(README.read_text())
    subs = [c[0] for c in cmds]
    for sub in ("search", "analyze", "report", "train", "info", "sweep", "s5-table", "bench", "study"):
        assert sub in subs, sub
    assert ["search", "quickstart", "--out", "runs/quickstart"] in cmds  # the main job


def run_all(workdir: str) -> None:
    """Every README command in order in ``workdir`` (in-process CLI calls)."""
    import os

    os.chdir(workdir)
    os.symlink(README.parent / "examples", Path(workdir) / "examples")  # README paths are repo-relative
    runner = CliRunner()
    for argv in readme_commands(README.read_text()):
        tiny = _tiny(argv)
        res = runner.invoke(app, tiny)
        assert res.exit_code == 0, f"stablenas {shlex.join(argv)}\n-> {shlex.join(tiny)}\n{res.output}"


def test_every_readme_command_runs(tmp_path):
    pytest.importorskip("tensorboard")
    # one fresh interpreter for the whole sequence: registries exactly as a user's `stablenas` sees them,
    # whatever other tests registered or removed in this process
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_readme; " \
           f"test_readme.run_all({str(tmp_path)!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # what the README says the commands leave behind
    for f in ("config.yaml", "metrics.jsonl", "genotype.json", "checkpoint.pt", "tensorboard"):
        assert (tmp_path / "runs/quickstart" / f).exists(), f
    assert (tmp_path / "runs/es/analysis.json").exists()
    assert (tmp_path / "runs/es/report.html").exists() and (tmp_path / "runs/l2/report.html").exists()
    assert (tmp_path / "runs/quickstart-train/result.json").exists()


def test_readme_python_block_runs(tmp_path, monkeypatch):
    block = re.search(r"```python\n(.*?)```", README.read_text(), flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    real = sn.load_config
    monkeypatch.setattr(sn, "load_config", lambda name, overrides=None: real(name, [*(overrides or []),
                                                                                      *TINY_SEARCH]))
    exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "runs/s5/genotype.json").exists()
