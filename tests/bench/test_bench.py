"""`stablenas bench` runs end to end on a tiny configuration and writes the documented JSON.

These are smoke tests of the harness (no timing is asserted: figures depend on the machine); the
numerical equality of the two engines it compares is tested in tests/supernet/test_perf.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from stablenas.bench import BenchConfig, BenchOptions, parse_input
from stablenas.bench.memory import run_worker
from stablenas.cli import app
from stablenas.config import load_config
from stablenas.errors import ConfigError

TINY = ["--space", "s5", "--cells", "2", "--channels", "4", "--batch", "8", "--input", "1x8x8",
        "--repeats", "1", "--warmup", "0", "--threads", "1"]


def test_bench_cli_writes_json(tmp_path):
    out = tmp_path / "out.json"
    r = CliRunner().invoke(app, ["bench", *TINY, "--methods", "sdarts-rs,no-such-preset", "--no-memory",
                                 "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert {"config", "environment", "timing", "notes"} <= res.keys()
    t = res["timing"]
    for key in ("first_order", "second_order"):
        assert t[key]["fast"]["median_s"] > 0 and t[key]["plain"]["median_s"] > 0
        assert t[key]["fast"]["images_per_s"] > 0
        assert {"of_medians", "paired_median", "cpu_paired_median"} <= t[key]["speedup"].keys()
        assert len(t[key]["fast"]["load1"]) == 1
    assert "fast" in t["second_over_first"]
    assert t["presets"]["sdarts-rs"]["methods"] == ["sdarts-rs"] and t["presets"]["sdarts-rs"]["median_s"] > 0
    # the preset's ratio is over its own interleaved DARTS steps: repeat r of the preset, then of DARTS
    order = [ln.split()[-5].rstrip(":") for ln in r.output.splitlines() if "preset/sdarts-rs" in ln]
    assert order == ["preset/sdarts-rs", "preset/sdarts-rs/darts"]
    assert t["presets"]["sdarts-rs"]["epoch"] == load_config("sdarts-rs").optim.epochs // 2  # timed mid-run
    vs = t["presets"]["sdarts-rs"]["vs_first_order"]
    assert vs["of_medians"] > 0 and {"paired_median", "cpu_paired_median"} <= vs.keys()
    assert "skipped" in t["presets"]["no-such-preset"]
    c = res["curvature"]
    assert c["lambda_max"]["fast"]["hvps"] >= 1
    assert c["exact_hessian"]["fast"]["n"] == 12  # s5: 2 cell types x 2 edges x 3 ops
    # same function, two engines: the estimates agree
    assert abs(c["lambda_max"]["fast"]["value"] - c["lambda_max"]["plain"]["value"]) <= \
        1e-3 * max(1.0, abs(c["lambda_max"]["plain"]["value"]))
    assert res["config"]["input"] == "1x8x8"
    assert "first-order iteration" in r.output and "speedup" in r.output


def test_memory_worker_reports_peak():
    cfg = {"space": "s5", "cells": 2, "channels": 4, "batch": 8, "input": [1, 8, 8], "threads": 1}
    res = run_worker({"config": cfg, "what": "first_order", "engine": "fast"}, timeout=300)
    assert "error" not in res, res
    assert res["peak_mb"] >= res["base_mb"] > 0 and res["growth_mb"] >= 0


def test_no_plain_keeps_the_channels_last_baseline(tmp_path):
    """--no-plain drops the channels-first plain model only; --curvature-iters caps the Lanczos steps."""
    out = tmp_path / "out.json"
    r = CliRunner().invoke(app, ["bench", *TINY, "--methods", "none", "--no-memory", "--no-exact", "--no-plain",
                                 "--no-second-order", "--curvature-iters", "2", "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    t = res["timing"]["first_order"]
    assert "plain" not in t and t["plain_cl"]["median_s"] > 0
    if "curvature" in res:
        lm = res["curvature"]["lambda_max"]
        assert "plain" not in lm and 1 <= lm["fast"]["hvps"] <= 2 and lm["plain_cl"]["hvps"] <= 2


@pytest.mark.parametrize("bad,msg", [(["--input", "3x32"], "CxHxW"), (["--space", "nope"], "unknown"),
                                     (["--repeats", "0"], "--repeats"),
                                     (["--curvature-iters", "0"], "--curvature-iters")])
def test_bench_rejects_bad_input(bad, msg):
    r = CliRunner().invoke(app, ["bench", *bad])
    assert r.exit_code == 2
    assert msg in r.output


@pytest.mark.parametrize("values,msg", [
    ({"space": "nope", "cells": 0}, "--space 'nope': unknown; available: "),
    ({"cells": 0, "input": "x"}, "--cells must be >= 1, got 0"),
    ({"warmup": -1, "repeats": 0}, "--repeats must be >= 1, got 0"),
    ({"warmup": -1}, "--warmup must be >= 0, got -1"),
    ({"curvature_iters": 0}, "--curvature-iters must be >= 1, got 0"),
    ({"input": "0x4x4", "size": "huge"}, "--input '0x4x4': expected CxHxW with positive integers, e.g. 3x32x32"),
    ({"size": "paper,huge"}, "--size 'paper,huge': unknown size 'huge'; available: paper, cpu-study"),
    ({"size": ","}, "--size ',': unknown size ''; available: paper, cpu-study"),
    ({"tune": True, "tune_budget": 0.0}, "--tune-budget must be > 0, got 0.0"),
    ({"bogus": 1}, "--bogus: Extra inputs are not permitted"),
])
def test_bench_options_report_the_first_bad_option_in_command_line_order(values, msg):
    with pytest.raises(ConfigError) as e:
        BenchOptions.parse(**values)
    assert str(e.value).startswith(msg) and e.value.exit_code == 2


def test_bench_options_expand_into_one_config_per_size():
    assert [c.size for c in BenchOptions.parse().configs()] == ["paper", "cpu-study"]
    custom = BenchOptions.parse(cells=2, methods="none").configs()
    assert [(c.size, c.cells, c.channels, c.methods) for c in custom] == [("custom", 2, 16, [])]
    (c,) = BenchOptions.parse(size="cpu-study", input="1x8x8", methods=" a, b", tune_budget=0.0).configs()
    assert (c.size, c.input, c.methods, c.batch, c.cells) == ("cpu-study", (1, 8, 8), ["a", "b"], 64, 5)
    assert BenchOptions.parse(methods="all").methods is None
    assert BenchOptions.parse(device="cpu", tune=True).tune_config().size == "cpu-study"
    assert BenchOptions.parse(device="cpu", tune=True, cells=2).tune_config().size == "custom"


def test_parse_input():
    assert parse_input("3x32x32") == (3, 32, 32)
    with pytest.raises(ValueError):
        parse_input("0x4x4")
    assert BenchConfig().input == (3, 32, 32)


def test_named_sizes():
    from stablenas.bench import SIZES, sized

    assert set(SIZES) == {"paper", "cpu-study"}
    p, c = sized("paper"), sized("cpu-study", batch=None, repeats=2)
    assert (p.cells, p.channels, p.batch, p.input) == (8, 16, 64, (3, 32, 32))
    assert (c.cells, c.channels, c.batch, c.input, c.repeats) == (5, 8, 64, (1, 28, 28), 2)
    assert sized("cpu-study", cells=2).cells == 2
    with pytest.raises(ValueError, match="unknown"):
        sized("huge")
    r = CliRunner().invoke(app, ["bench", "--size", "paper,huge"])
    assert r.exit_code == 2 and "huge" in r.output


def test_plain_channels_last_baseline_is_the_same_computation():
    """The channels_last plain model (the fair baseline) takes the same step as the plain one."""
    import torch

    from stablenas.bench import steps as S

    bc = BenchConfig(space="s5", cells=2, channels=4, batch=8, input=(1, 8, 8), threads=1)
    s = S.make_search(S.base_config(bc, "second"), bc)
    train, val = S.batches(s)
    out = {}
    for eng in ("plain", "plain_cl"):
        model, step = S.plain_model(s, bc, channels_last=(eng == "plain_cl"))
        conv = S.plain_batch(eng)
        step(conv(train), conv(val), unrolled=True)
        out[eng] = [p.detach().clone() for p in list(model.parameters()) + model.arch_parameters()]
        if eng == "plain_cl":
            convs = [m.weight for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
            assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
            assert model.new().memory_format == torch.channels_last
    for a, b in zip(out["plain"], out["plain_cl"]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_each_measurement_holds_only_its_own_models(monkeypatch):
    """Measurements run one after another, each with only its own models alive: while any step is
    timed, at most one plain model per plain engine exists (timed beside every earlier
    measurement's models and graphs, the paper-size steps ran 1.2-1.3x slower), and each
    measurement's models start from the same weights."""
    import gc
    import weakref

    from stablenas.bench import run_bench, timing
    from stablenas.skeletons.darts.reference import PlainNetwork

    live, seen, starts = [], weakref.WeakSet(), []
    timer = timing.time_call

    def counting(fn, device):
        gc.collect()
        models = [o for o in gc.get_objects() if isinstance(o, PlainNetwork)]
        live.append(len(models))
        for m in models:  # every plain model is built from the start weights of its measurement
            if m not in seen:
                seen.add(m)
                starts.append(m.stem[0].weight.detach().clone())
        return timer(fn, device)

    monkeypatch.setattr(timing, "time_call", counting)
    cfg = BenchConfig(space="s5", cells=2, channels=4, batch=8, input=(1, 8, 8), repeats=2, warmup=0,
                      methods=["none"], exact=False, memory=False, curvature_iters=2, threads=1)
    res = run_bench(cfg, log=lambda _: None)
    assert max(live) == 2 and len(live) == 3 * 2 * 3  # 3 measurements x 2 repeats x 3 engines
    assert len(starts) == 6 and all(torch.equal(s, starts[0]) for s in starts)  # 3 measurements x 2 plain
    assert res["timing"]["second_order"]["plain_cl"]["median_s"] > 0
