"""Engine options per device: the defaults of each device type, the ``bench --tune`` file (written,
read by searches, recorded in status.json; a bad one ignored with one warning line, never run as
code), and the compiled first-order forward (refused on the CPU, eager fallback, eager under double
backward)."""

from __future__ import annotations

import json
from dataclasses import asdict, fields

import pytest
import torch
from conftest import TINY_SEARCH
from typer.testing import CliRunner

import stablenas as sn
from stablenas.bench import tune
from stablenas.cli import app
from stablenas.errors import ConfigError
from stablenas.search.loop import Search
from stablenas.supernet import engine
from stablenas.supernet.kernels import EngineOptions
from stablenas.supernet.network import double_backward_mode

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
TINY = [*TINY_SEARCH, "space=s3", "evaluation.lookup=false", "search.val_batches=1", "threads=1"]
TUNE = ["bench", "--tune", "--cells", "1", "--channels", "8", "--batch", "8", "--input", "1x8x8", "--threads", "1",
        "--device", "cpu", "--warmup", "0", "--repeats", "1"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private engine cache directory: the CPU file's path in it."""
    monkeypatch.setenv(engine.DIR_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "engine-cpu.json"


def _search(out=None, log=None):
    return Search(sn.load_config("darts", TINY), out, progress=False, log=log or (lambda m: None))


def test_cpu_defaults_are_the_measured_options_and_cuda_differs_only_where_cudnn_differs():
    assert engine.defaults_for("cpu") == EngineOptions()
    changed = {f.name for f in fields(EngineOptions)
               if getattr(engine.defaults_for("cuda"), f.name) != getattr(EngineOptions(), f.name)}
    assert changed == {"conv_avg_pool", "phase_dilation", "linear_pw", "light_recompute", "recompute"}
    assert not engine.defaults_for("cuda").compile_step


def test_cache_file_follows_the_env_then_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(engine.DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert engine.cache_file("cuda") == tmp_path / "xdg" / "stablenas" / "engine-cuda.json"
    monkeypatch.setenv(engine.DIR_ENV, str(tmp_path / "mine"))
    assert engine.cache_file("cpu") == tmp_path / "mine" / "engine-cpu.json"


def test_a_search_without_a_file_runs_and_records_the_cpu_defaults(cache, tmp_path):
    s = _search(tmp_path / "run")
    assert s.net.engine == EngineOptions() and s.engine.source == "cpu defaults"
    s.run()
    st = json.loads((tmp_path / "run" / "status.json").read_text())
    assert st["state"] == "complete"
    assert st["engine"] == {"options": asdict(EngineOptions()), "source": "cpu defaults"}


def test_a_tuned_file_is_what_searches_run_and_record(cache, tmp_path):
    path = engine.write_tuned(CPU, {"linear_pw": "never", "recompute": False}, {})
    assert path == cache
    s = _search(tmp_path / "run")
    want = EngineOptions(linear_pw="never", recompute=False)
    assert s.net.engine == want and s.net.cells[0].engine == want
    assert s.engine.source == f"tuned: {cache}"
    st = json.loads((tmp_path / "run" / "status.json").read_text())
    assert st["engine"]["options"]["linear_pw"] == "never" and st["engine"]["source"] == f"tuned: {cache}"
    s.close()


@pytest.mark.parametrize("text,why", [
    ("{not json", "not JSON"),
    ("import os; os.system('touch /tmp/x')", "not JSON"),
    ('["a list"]', "not a stablenas-engine/1 file"),
    (None, "unknown engine option 'bogus'"),
    (None, "engine option 'recompute': bad value 'yes'"),
    (None, "engine option 'small_map': bad value -1"),
    (None, "engine option 'double_backward'"),
    (None, "tuned for device 'cuda', not 'cpu'"),
    (None, "tuned on 'Some Other CPU'"),
])
def test_a_bad_file_is_ignored_with_one_warning_and_left_as_it_is(cache, text, why):
    good = {"format": engine.FORMAT, "device": "cpu", "device_name": engine.device_name(CPU), "options": {}}
    if text is None:
        bad = dict(good)
        if "bogus" in why:
            bad["options"] = {"bogus": 1}
        elif "recompute" in why:
            bad["options"] = {"recompute": "yes"}
        elif "small_map" in why:
            bad["options"] = {"small_map": -1}
        elif "double_backward" in why:
            bad["options"] = {"double_backward": True}
        elif "device 'cuda'" in why:
            bad["device"] = "cuda"
        else:
            bad["device_name"] = "Some Other CPU"
        text = json.dumps(bad)
    cache.parent.mkdir(parents=True)
    cache.write_text(text)
    lines: list[str] = []
    s = _search(log=lines.append)
    assert s.net.engine == EngineOptions() and s.engine.source == "cpu defaults"
    warned = [ln for ln in lines if ln.startswith("warning:")]
    assert len(warned) == 1 and why in warned[0] and str(cache) in warned[0] and "\n" not in warned[0]
    assert cache.read_text() == text


def test_compile_step_on_the_cpu_is_refused_in_one_line(cache, tmp_path):
    engine.write_tuned(CPU, {"compile_step": True}, {})
    with pytest.raises(ConfigError, match=r"compile_step \(from tuned: .*\) needs a CUDA device, the device is cpu"):
        _search()
    res = CliRunner().invoke(app, ["search", "darts", *[a for s in TINY for a in ("--set", s)], "--out",
                                   str(tmp_path / "run"), "--no-progress"])
    assert res.exit_code == 2
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "compile_step" in errors[0]
    assert not (tmp_path / "run").exists()


class _Net(torch.nn.Module):
    """A module with engine options, standing in for a supernet."""

    def __init__(self, opts: EngineOptions):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.engine = opts

    def forward(self, x):
        return self.lin(x)


def test_compiled_forward_runs_in_training_and_eager_under_double_backward_or_eval():
    net = _Net(EngineOptions(compile_step=True))
    compiled, calls = [], []

    def compiler(m):
        compiled.append(m)

        def run(*a):
            calls.append(1)
            return m(*a)
        return run

    fwd = engine.StepForward(print, compiler)
    x = torch.randn(4, 3)
    fwd(net, x)
    fwd(net, x)
    assert len(calls) == 2 and compiled == [net]
    with double_backward_mode(net):
        fwd(net, x)
    net.eval()
    fwd(net, x)
    assert len(calls) == 2
    other = _Net(EngineOptions(compile_step=True))
    fwd(other, x)  # another network (a test swapping search.net): compiled for it
    assert compiled == [net, other]
    fwd(_Net(EngineOptions()), x)
    assert len(calls) == 3 and len(compiled) == 2


def test_a_failing_compiled_forward_falls_back_to_eager_with_one_warning():
    net = _Net(EngineOptions(compile_step=True))

    def compiler(m):
        def run(*a):
            raise RuntimeError("no CUDA graphs here\nsecond line")
        return run

    lines: list[str] = []
    fwd = engine.StepForward(lines.append, compiler)
    x = torch.randn(4, 3)
    assert torch.equal(fwd(net, x), net(x)) and torch.equal(fwd(net, x), net(x))
    assert lines == ["warning: engine option compile_step: the compiled forward failed (RuntimeError: no CUDA "
                     "graphs here); eager from here"]
    assert fwd.failed and fwd.compiled is None


def test_bench_tune_times_the_cpu_options_and_stores_a_file_searches_accept(cache, tmp_path):
    res = CliRunner().invoke(app, [*TUNE, "--json", str(tmp_path / "tune.json")])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "tune.json").read_text())
    timed = [r["option"] for r in out["options"]]
    assert timed == [name for name, _ in tune.CANDIDATES["cpu"]]
    for r in out["options"]:
        assert r["kept"] == (r["ratio"] < 1 - tune.MARGIN) and r["default_s"] > 0 and r["tried_s"] > 0
    assert out["changes"] == {r["option"]: r["tried"] for r in out["options"] if r["kept"]}
    assert engine.read_tuned(cache, CPU) == out["changes"]
    assert f"stored: {cache}" in res.output and "phase_dilation" in res.output
    assert _search().engine.source == f"tuned: {cache}"


def test_bench_tune_budget_skips_what_it_cannot_time_and_refuses_nonsense(cache, tmp_path):
    res = CliRunner().invoke(app, [*TUNE, "--tune-budget", "0.001", "--json", str(tmp_path / "t.json")])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "t.json").read_text())
    # the budget starts once the search is built: the first option is timed, the rest are not
    assert ["skipped" in r for r in out["options"]] == [False] + [True] * (len(tune.CANDIDATES["cpu"]) - 1)
    assert set(out["changes"]) <= {tune.CANDIDATES["cpu"][0][0]}
    assert engine.read_tuned(cache, CPU) == out["changes"]
    bad = CliRunner().invoke(app, [*TUNE, "--tune-budget", "0"])
    assert bad.exit_code == 2 and "error: --tune-budget must be > 0, got 0.0" in bad.output


def test_a_resume_runs_the_options_its_checkpoint_was_written_with(cache, tmp_path):
    """A tuned file written between a run's start and its resume does not change the engine the run
    computes with: the resumed run is bit-identical to an uninterrupted one on the defaults."""
    from conftest import assert_same_search

    class Crash(Exception):
        pass

    ref = _search(tmp_path / "ref").run()
    s = _search(tmp_path / "run")
    step = s.weight_step

    def crashing(batch):
        if s.epoch == 1:  # after the end-of-epoch checkpoint of epoch 1
            raise Crash()
        return step(batch)

    s.weight_step = crashing
    with pytest.raises(Crash):
        s.run()
    engine.write_tuned(CPU, {"conv_avg_pool": False, "linear_pw": "never"}, {})
    logs: list[str] = []
    resumed = Search(sn.load_config("darts", TINY), tmp_path / "run", resume=True, progress=False, log=logs.append)
    assert resumed.net.engine == EngineOptions() and resumed.engine.source.startswith("the checkpoint's")
    assert any("running the checkpoint's options, not those of the tuned" in m for m in logs)
    res = resumed.run()
    st = json.loads((tmp_path / "run" / "status.json").read_text())
    assert st["engine"]["options"] == asdict(EngineOptions())
    assert_same_search(ref, res, tmp_path / "ref", tmp_path / "run")
    assert _search().net.engine == EngineOptions(conv_avg_pool=False, linear_pw="never")  # a new run: the file
