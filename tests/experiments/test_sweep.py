"""Sweeps: the selection rule of robust-darts Sec. 5.3, resumption and the table."""

from __future__ import annotations

import json

import pytest
import yaml

from stablenas.config import ConfigError
from stablenas.experiments.sweep import SweepPlan, format_markdown, run_sweep, search_runs, select_best

TRAIN = [
    "channels=4",
    "layers=2",
    "stem_multiplier=2",
    "batch_size=32",
    "steps_per_epoch=2",
    "channels_last=false",
    "auxiliary=false",
]


def _quiet(_: str) -> None:
    pass


def test_select_best_rule():
    c = [{"valid_acc": 0.5}, {"valid_acc": 0.7}, {"valid_acc": 0.7}, {"valid_acc": None}, {"valid_acc": 0.6}]
    assert select_best(c) == 1  # highest; the tie goes to the earlier run
    assert select_best([{"valid_acc": None}, {"valid_acc": 0.1}]) == 1
    with pytest.raises(ValueError, match="no candidate"):
        select_best([{"valid_acc": None}])


def test_plan_validation():
    with pytest.raises(ConfigError, match="at least one search seed"):
        SweepPlan(config="darts", seeds=[])
    with pytest.raises(ConfigError, match="repeated seeds"):
        SweepPlan(config="darts", seeds=[1, 1])
    with pytest.raises(ConfigError, match="needs at least one value"):
        SweepPlan(config="darts", seeds=[0], reg="l2")
    with pytest.raises(ConfigError, match="unknown regularisation"):
        SweepPlan(config="darts", seeds=[0], reg="l1", reg_values=[1.0])


def test_runs_cover_strengths_times_seeds(tiny_overrides):
    plan = SweepPlan(
        config="darts", seeds=[0, 1], overrides=tiny_overrides, reg="drop-path", reg_values=[0.0, 0.4]
    )
    runs = search_runs(plan)
    assert [r.name for r in runs] == [
        "drop-path=0-seed0",
        "drop-path=0-seed1",
        "drop-path=0.4-seed0",
        "drop-path=0.4-seed1",
    ]
    assert [(r.config["seed"], r.config["regularization"]["drop_path_max"]) for r in runs] == [
        (0, 0.0),
        (1, 0.0),
        (0, 0.4),
        (1, 0.4),
    ]


def test_sweep_selects_by_stubbed_scores_and_resumes(tmp_path, tiny_overrides):
    plan = SweepPlan(
        config="darts",
        seeds=[0, 1],
        overrides=[*tiny_overrides, "space=s5", "optim.epochs=1"],
        reg="l2",
        reg_values=[3e-4, 9e-4],
        train_overrides=TRAIN,
        final_epochs=1,
        holdout=100,
    )
    scores = [0.5, 0.7, 0.7, 0.6]
    seen: list[list[str]] = []

    def scorer(cands):
        seen.append([c["name"] for c in cands])
        return scores

    t = run_sweep(plan, tmp_path, scorer=scorer, log=_quiet)
    assert seen[0] == ["l2=0.0003-seed0", "l2=0.0003-seed1", "l2=0.0009-seed0", "l2=0.0009-seed1"]
    assert t["selected"] == "l2=0.0003-seed1"
    for r in t["runs"]:
        wd = yaml.safe_load((tmp_path / "search" / r["name"] / "config.yaml").read_text())["optim"][
            "weight_decay"
        ]
        assert wd == pytest.approx(r["reg_value"])
    sel = [r for r in t["runs"] if r["selected"]]
    assert len(sel) == 1 and len(sel[0]["final"]) == 1
    assert all(not r["final"] for r in t["runs"] if not r["selected"])
    assert t["test_error_mean"] == pytest.approx(100 * (1 - sel[0]["final"][0]["test_acc"]))
    md = (tmp_path / "table.md").read_text()
    assert md.startswith("| Method | Test error (%) | Params (M) | Search cost (h) | Selected |")
    assert "R-DARTS(L2)" in md and "l2=0.0003-seed1 (selected)" in md
    # resume: nothing is searched or trained again, same table
    stamp = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("checkpoint.pt")}
    t2 = run_sweep(plan, tmp_path, scorer=scorer, log=_quiet)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("checkpoint.pt")} == stamp
    assert t2["selected"] == t["selected"] and t2["test_error_mean"] == t["test_error_mean"]
    other = SweepPlan(config="darts", seeds=[0, 1, 2], overrides=plan.overrides, reg="l2", reg_values=[3e-4])
    with pytest.raises(ConfigError, match="different settings"):
        run_sweep(other, tmp_path, scorer=scorer, log=_quiet)


def test_sweep_short_retraining_scores_on_validation_only(tmp_path, tiny_overrides):
    plan = SweepPlan(
        config="darts",
        seeds=[0, 1],
        overrides=[*tiny_overrides, "space=s5", "optim.epochs=1"],
        train_overrides=TRAIN,
        retrain_epochs=1,
        final="none",
        holdout=100,
    )
    t = run_sweep(plan, tmp_path, log=_quiet)
    scores = {}
    for r in t["runs"]:
        res = json.loads((tmp_path / "select" / r["name"] / "result.json").read_text())
        assert "test_acc" not in res and res["config"]["holdout"] == 100 and res["epochs"] == 1
        scores[r["name"]] = res["valid_acc"]
        assert r["valid_acc"] == res["valid_acc"]
    assert t["selected"] == max(scores, key=lambda k: (scores[k], -list(scores).index(k)))
    assert t["test_error_mean"] is None


@pytest.mark.parametrize("regret", [None, 0.0123])
def test_table_has_an_s5_column_only_where_an_s5_table_scored_a_run(regret):
    run = {"name": "l2-0.0003-seed0", "selected": True, "supernet_val_acc": 0.5, "valid_acc": 0.6,
           "test_regret": regret, "final": [{"test_acc": 0.9, "params": 120_000}], "search_seconds": 90.0}
    table = {"method": "r-darts-l2", "test_error_mean": 10.0, "test_error_std": 0.0, "params_M": 0.12,
             "search_cost_hours": 0.025, "selected": run["name"], "test_error_over": "1 run",
             "selection_rule": "highest selection val acc", "runs": [run]}
    lines = format_markdown(table).splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("| Run "))
    header, sep, body = lines[i:i + 3]
    assert ("S5 test regret" in header) == (regret is not None)
    cells = [c.strip() for c in body.strip("|").split("|")]
    assert len(cells) == header.count("|") - 1 == (7 if regret is not None else 6)
    assert cells[3] == ("1.23" if regret is not None else "10.00")  # regret in %, else the final test error
    assert sep.count("---") == len(cells)
