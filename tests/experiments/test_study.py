"""Collapse studies: the unit queue, resume after a kill, records, and the table against the per-run records."""

from __future__ import annotations

import json
import statistics

import pytest
import yaml

from stablenas import cli
from stablenas.errors import ConfigError
from stablenas.experiments import study as st
from stablenas.experiments.study import measures, records
from stablenas.experiments.study import run as study_run
from stablenas.genotype import Genotype
from stablenas.skeletons.darts.s5_table import load_table
from stablenas.spaces.ops import is_parameter_free

# 2 methods x 1 seed x 2 epochs on the 8x8 digits; S3 is retrained, S5 uses its lookup (no digits table: none)
TINY = {
    "name": "tiny",
    "base": "quickstart",
    "set": ["data.dataset=digits", "data.subset=null", "data.batch_size=32", "network.channels=8", "network.layers=2",
            "network.stem_multiplier=2", "optim.epochs=2", "search.steps_per_epoch=3", "search.val_batches=2",
            "network.channels_last=false", "threads=1"],
    "spaces": ["s3", "s5"],
    "seeds": [0],
    "methods": {"darts": [], "sdarts-rs": ["methods=[{name: sdarts-rs}]"]},
    "track": {"name": "hessian", "iters": 3, "record_alpha": False},
    "retrain": {"set": {"channels": 8, "layers": 2, "stem_multiplier": 2, "epochs": 1, "batch_size": 32,
                        "steps_per_epoch": 2, "test_subset": 64, "auxiliary": False, "drop_path": 0.0,
                        "channels_last": False, "threads": 1}},
    "discretization_batches": 1,
}


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    p = tmp_path_factory.mktemp("protocol") / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY, sort_keys=False))
    return st.load_protocol(p)


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """The tiny study run once, uninterrupted, with a records directory: (summary, out, records)."""
    root = tmp_path_factory.mktemp("study")
    return st.run_study(tiny, root / "out", records=root / "rec", log=_quiet), root / "out", root / "rec"


def _strip_times(obj):
    """Results without wall-clock fields (they differ between any two runs)."""
    if isinstance(obj, dict):
        return {k: _strip_times(v) for k, v in obj.items()
                if not any(t in k for t in ("seconds", "wall", "rel"))}
    if isinstance(obj, list):
        return [_strip_times(v) for v in obj]
    return obj


def test_queue_is_seed_major_and_configs_are_the_methods(tmp_path):
    p = st.load_protocol("cpu-collapse", ["seeds=[0,1]"])
    units = st.study_units(p)
    assert [u.seed for u in units] == sorted(u.seed for u in units)  # every unit of seed 0 first
    first = [u for u in units if u.seed == 0]
    assert {(u.space, u.method) for u in first} == {(s, m) for s in p.spaces for m in p.methods}
    by = {u.name: u for u in units}
    assert by["s3-darts-2nd-seed0"].search["search"]["update"] == "second"
    assert by["s3-darts-seed0"].search["search"]["update"] == "first"
    assert by["s3-darts-seed1"].search["seed"] == 1
    # every unit tracks lambda_max; S5 is looked up in its table, S3/S2 are retrained
    assert all(u.search["methods"][-1]["name"] == "hessian" for u in units)
    assert by["s5-darts-seed0"].train is None and by["s2-darts-seed0"].train is not None
    assert st.load_protocol("gpu-paper").spaces  # the GPU protocol validates too


def test_bad_protocols_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="no protocol file 'nope'.*shipped: .*cpu-collapse"):
        st.load_protocol("nope")
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({**TINY, "seeds": [0, 0]}))
    with pytest.raises(ConfigError, match="repeated seeds"):
        st.load_protocol(p)
    p.write_text(yaml.safe_dump({**TINY, "methods": {"darts": ["optim.epocs=3"]}}))
    with pytest.raises(ConfigError, match="method darts, space s3: .*optim.epocs"):
        st.study_units(st.load_protocol(p))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        cli.main(["study", str(p), "--out", str(out)])
    assert e.value.code == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_study_resumes_after_a_kill_to_the_uninterrupted_result(tmp_path, tiny, finished, monkeypatch):
    full = finished[0]
    assert not full["partial"] and full["units_done"] == 4
    s3 = tiny.model_copy(update={"spaces": ["s3"]})
    # killed right after the first checkpoint of the first search, then the same call again
    from stablenas.search.loop import Search

    orig = Search.save_checkpoint
    calls = {"n": 0}

    def dying(self, *a, **k):
        orig(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 1:
            raise SystemExit("killed")

    monkeypatch.setattr(Search, "save_checkpoint", dying)
    with pytest.raises(SystemExit):
        st.run_study(s3, tmp_path / "cut", log=_quiet)
    first = tmp_path / "cut" / "runs" / "s3-darts-seed0"
    assert (first / "search" / "checkpoint.pt").exists() and not (first / "result.json").exists()
    monkeypatch.setattr(Search, "save_checkpoint", orig)
    resumed = st.run_study(s3, tmp_path / "cut", log=_quiet)
    ref = {r["name"]: r for r in full["runs"]}
    assert [r["name"] for r in resumed["runs"]] == ["s3-darts-seed0", "s3-sdarts-rs-seed0"]
    for r in resumed["runs"]:
        assert _strip_times(r) == _strip_times(ref[r["name"]])


def test_table_and_results_match_the_per_run_records(tmp_path, tiny, finished, monkeypatch):
    s, out, rec_dir = finished
    for u in st.study_units(tiny):
        rec = rec_dir / u.name
        assert sorted(f.name for f in rec.iterdir()) == ["config.yaml", "genotype.json", "metrics.jsonl",
                                                          "result.json"]
        res = json.loads((rec / "result.json").read_text())
        g = Genotype.load(rec / "genotype.json")
        ops = g.ops("normal")
        assert res["share_normal"] == sum(map(is_parameter_free, ops)) / len(ops)
        metrics = [json.loads(x) for x in (rec / "metrics.jsonl").read_text().splitlines()]
        assert res["lambda_max_final"] == metrics[-1]["lambda_max"]  # the tracker measured the last epoch
        assert len(res["curves"]["share_normal"]) == len(metrics) == 2
        if u.space == "s5":  # no S5 table for digits: looked up, nothing found
            assert res["test_source"] == "lookup" and res["test_acc"] is None
        else:
            train = json.loads((out / "runs" / u.name / "train" / "result.json").read_text())
            assert res["test_source"] == "retrained" and res["test_acc"] == train["test_acc"]
    rows = {(r["space"], r["method"]): r for r in s["rows"]}
    runs = {r["name"]: r for r in s["runs"]}
    assert rows[("s3", "darts")]["share_normal_mean"] == runs["s3-darts-seed0"]["share_normal"]
    pairs = [(r["lambda_max_final"], 1 - r["test_acc"]) for r in s["runs"] if r["space"] == "s3"]
    assert s["lambda_error_correlation"]["all"]["n"] == 2 and s["lambda_error_correlation"]["all"]["r"] is None
    assert pairs and len(pairs) == 2  # r needs >= 3 points
    md = (out / "table.md").read_text()
    r = rows[("s3", "sdarts-rs")]
    assert (f"| sdarts-rs | 1 | {r['share_normal_mean']:.3f} ± 0.000 | {100 * r['test_acc_mean']:.2f} ± 0.00 | "
            f"{100 * r['acc_drop_mean']:.2f} ± 0.00 | {100 * r['acc_drop_batch_bn_mean']:.2f} ± 0.00 | "
            f"{r['lambda_max_final_mean']:.4f} ± 0.0000 | 2.0 |") in md
    batch_bn = runs["s3-sdarts-rs-seed0"]["discretization"]["batch_bn"]
    assert batch_bn["bn"] == "train" and r["acc_drop_batch_bn_mean"] == batch_bn["acc_drop"]
    assert "complete: all 4 units" in md
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "lambda_max_s3.png", "lambda_max_s5.png", "lambda_vs_error.png", "share_normal_s3.png", "share_normal_s5.png"]
    # a fresh directory picks every finished unit up from the records, running nothing
    monkeypatch.setattr(study_run, "run_unit", lambda args: pytest.fail(f"ran {args[0]} again"))
    again = st.run_study(tiny, tmp_path / "fresh", records=rec_dir, log=_quiet)
    assert _strip_times(again["rows"]) == _strip_times(s["rows"])
    # a record made with other settings is not taken; changed settings in the same directory are refused
    other = tiny.model_copy(update={"set": [*tiny.set, "optim.arch_lr=1e-3"]})
    with pytest.raises(ConfigError, match="different protocol"):
        st.run_study(other, out, log=_quiet)
    logs: list[str] = []
    st.run_study(other, tmp_path / "other", records=rec_dir, log=logs.append, max_units=0)
    assert sum("other settings (search.optim.arch_lr)" in m for m in logs) == 4
    assert "4 units, 0 done here, 0 from records, 0 to run now" in logs[-2]


def _tiny_record(genotype: Genotype, regret: float | None) -> dict:
    """A finished unit's result.json, written by hand: one 2-epoch search, its cell looked up."""
    share = st.param_free_share(genotype)
    return {"name": "", "genotype": genotype.to_dict(), "epochs": 2, "search_seconds": 4.0, "track_seconds": 0.0,
            "share_normal": share, "share_all": st.param_free_share(genotype, None), "discretization": None,
            "curves": {"share_normal": [share, share], "lambda_max": [None, None], "test_regret": [regret, regret]},
            "lambda_max_final": None, "test_acc": None, "test_source": "lookup", "test_regret_final": regret}


def _space_sections(md: str) -> dict[str, str]:
    return {part.split("\n", 1)[0]: part for part in md.split("## space ")[1:]}


def test_s5_regret_column_only_where_an_s5_table_scores_the_space(tmp_path):
    """The S5 regret column belongs to a space whose cells the S5 table of its dataset scores, decided from
    the protocol: shown (with the record's regret) for S5 on Fashion-MNIST, absent for NAS-Bench-201 and for
    S5 on a dataset without a table."""
    from stablenas.skeletons.darts.s5_table import enumerate_s5

    table = load_table("fashion-mnist")
    s5_cell = enumerate_s5()[17]
    d = {"name": "cols", "base": "quickstart", "set": ["optim.epochs=2", "threads=1"], "spaces": ["s5", "nb201"],
         "seeds": [0], "methods": {"darts": []}, "track": None}
    nb201_cell = Genotype.from_dict({"space": "nb201", "arch": "|nor_conv_3x3~0|+|skip_connect~0|none~1|"
                                                               "+|avg_pool_3x3~0|skip_connect~1|nor_conv_1x1~2|"})
    for space, g, regret in (("s5", s5_cell, table.regret(s5_cell)), ("nb201", nb201_cell, None)):
        (tmp_path / "runs" / f"{space}-darts-seed0").mkdir(parents=True)
        (tmp_path / "runs" / f"{space}-darts-seed0" / "result.json").write_text(json.dumps(_tiny_record(g, regret)))
    st.summarise(st.StudyProtocol.model_validate(d), tmp_path, plots=False)
    sections = _space_sections((tmp_path / "table.md").read_text())
    assert "| S5 regret % |" in sections["s5"] and "S5 regret" not in sections["nb201"]
    share = st.param_free_share(s5_cell)
    assert (f"| darts | 1 | {share:.3f} ± 0.000 | - | {100 * table.regret(s5_cell):.2f} ± 0.00 | - | - | - | "
            "2.0 | 1.00 |") in sections["s5"]
    assert "| darts | 1 | 0.667 ± 0.000 | - | - | - | - | 2.0 | 1.00 |" in sections["nb201"]  # 4 of 6 ops
    no_table = {**d, "space_set": {"s5": ["data.dataset=digits", "data.subset=null"]}}
    st.summarise(st.StudyProtocol.model_validate(no_table), tmp_path, plots=False)
    assert "S5 regret" not in (tmp_path / "table.md").read_text()


def test_pearson_and_lookup_against_references():
    xs, ys = [0.1, 0.4, 0.2, 0.9], [3.0, 5.0, 2.5, 9.0]
    assert st.pearson(xs, ys) == pytest.approx(statistics.correlation(xs, ys))
    assert st.pearson([1, 1, 1], [1, 2, 3]) is None and st.pearson([1, 2], [1, 2]) is None
    from stablenas.config import load_config
    from stablenas.skeletons.darts.s5_table import enumerate_s5

    table = load_table("fashion-mnist")
    cfg = load_config("quickstart", ["space=s5"]).to_dict()
    for g in enumerate_s5()[::20]:
        assert measures.lookup_test_acc(cfg, g) == table.test_acc(g)
        assert measures.lookup(cfg, g)["test_regret"] == pytest.approx(table.regret(g))
    assert measures.lookup_test_acc(load_config("quickstart").to_dict(), enumerate_s5()[0]) is None  # s3: no table


def test_partial_study_is_marked_partial_and_estimates_the_rest(tmp_path, tiny, finished):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished[1] / "runs" / "s3-darts-seed0", out / "runs" / "s3-darts-seed0")
    s = st.summarise(tiny, out)
    assert s["partial"] and s["units_done"] == 1
    assert "PARTIAL: 1 of 4 units finished" in (out / "table.md").read_text()
    est = st.estimate_cost(tiny, out)
    assert est["done"] == 1 and est["to_run"] == 3
    # sdarts-rs and S5 have no measured unit and the protocol gives no figures for them
    assert sorted(est["unknown"]) == ["s3-sdarts-rs-seed0", "s5-darts-seed0", "s5-sdarts-rs-seed0"]
    assert est["retrain_unpriced"] == []  # the measured s3 unit prices the s3 retraining
    priced = tiny.model_copy(update={"estimate": st.EstimateSpec(epoch_seconds={"s5": 2.0},
                                                                 relative={"darts": 1.0, "sdarts-rs": 1.5})})
    est = st.estimate_cost(priced, out)
    res = json.loads((out / "runs" / "s3-darts-seed0" / "result.json").read_text())
    assert est["unknown"] == ["s3-sdarts-rs-seed0"]  # no s3 figure in the protocol, no measured sdarts-rs unit
    assert est["per_unit"]["s5-darts-seed0"] == pytest.approx(2.0 * 2)
    assert est["per_unit"]["s5-sdarts-rs-seed0"] == pytest.approx(3.0 * 2)
    assert res["train_seconds"] > 0


def test_a_diverged_search_is_logged_and_the_study_goes_on(tmp_path, tiny, monkeypatch):
    from stablenas.errors import DivergedError
    from stablenas.search.loop import Search

    orig = Search.run

    def run(self):
        if self.cfg.methods and self.cfg.methods[0].name == "sdarts-rs":
            raise DivergedError("search diverged: non-finite loss (test)")
        return orig(self)

    monkeypatch.setattr(Search, "run", run)
    logs: list[str] = []
    s = st.run_study(tiny.model_copy(update={"spaces": ["s5"]}), tmp_path / "out", log=logs.append)
    assert [r["name"] for r in s["runs"]] == ["s5-darts-seed0"]
    assert any("s5-sdarts-rs-seed0: FAILED (search diverged: non-finite loss (test))" in m for m in logs)
    assert json.loads((tmp_path / "out" / "runs" / "s5-sdarts-rs-seed0" / "failed.json").read_text())["failed"]
    assert s["partial"] and "PARTIAL: 1 of 2 units" in (tmp_path / "out" / "table.md").read_text()


def test_space_set_overrides_one_space_only(tmp_path):
    d = {**TINY, "space_set": {"s3": ["data.batch_size=16"]}}
    p = st.StudyProtocol.model_validate(d)
    units = {u.space: u for u in st.study_units(p)}
    assert units["s3"].search["data"]["batch_size"] == 16 and units["s5"].search["data"]["batch_size"] == 32
    assert "space_set" in p.to_dict() and "space_set" not in st.StudyProtocol.model_validate(TINY).to_dict()
    with pytest.raises(ValueError, match=r"space_set names s2, not in spaces \['s3', 's5'\]"):
        st.StudyProtocol.model_validate({**TINY, "space_set": {"s2": []}})


def test_units_finished_here_without_a_record_get_one(tmp_path, tiny, finished, monkeypatch):
    """A study stopped between a unit's result and its record export (or run without --records) writes
    the missing records on the next call, running nothing."""
    import shutil

    _, out, rec_dir = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    monkeypatch.setattr(study_run, "run_unit", lambda args: pytest.fail(f"ran {args[0]} again"))
    st.run_study(tiny, copy, records=tmp_path / "rec", log=_quiet)
    for u in st.study_units(tiny):
        new, old = tmp_path / "rec" / u.name / "result.json", rec_dir / u.name / "result.json"
        assert new.read_bytes() == old.read_bytes()


def test_summary_of_committed_records_runs_nothing(tmp_path, tiny, finished, monkeypatch, capsys):
    """`study P --out NEW --records R --summary`: the table of the records alone (a fresh clone's view)."""
    s, _, rec_dir = finished
    monkeypatch.setattr(study_run, "run_unit", lambda args: pytest.fail(f"ran {args[0]}"))
    monkeypatch.setattr(st, "load_protocol", lambda *a, **k: tiny)
    with pytest.raises(SystemExit) as e:
        cli.main(["study", "tiny", "--out", str(tmp_path / "view"), "--records", str(rec_dir), "--summary"])
    assert e.value.code in (0, None)
    md = (tmp_path / "view" / "table.md").read_text()
    assert "complete: all 4 units" in md and md in capsys.readouterr().out
    again = json.loads((tmp_path / "view" / "results.json").read_text())
    assert _strip_times(again["rows"]) == _strip_times(s["rows"])


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        cli.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0
    out = capsys.readouterr()
    return code, out.out, out.err


def _files(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_summary_refuses_what_it_cannot_summarise(tmp_path, tiny, finished, monkeypatch, capsys):
    """--summary writes a table only of this protocol's units: records that are no directory, a
    directory holding no study (or a foreign one), and another protocol's study are refused in one
    line, every file left as it was."""
    _, out, rec_dir = finished
    monkeypatch.setattr(study_run, "run_unit", lambda args: pytest.fail(f"ran {args[0]}"))
    proto = tmp_path / "tiny.yaml"
    proto.write_text(yaml.safe_dump(TINY, sort_keys=False))
    base = ["study", str(proto), "--summary"]
    (tmp_path / "records.txt").write_text("not a directory\n")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.md").write_text("mine\n")
    view = tmp_path / "view"
    assert _cli([*base, "--out", str(view), "--records", str(rec_dir)], capsys)[0] == 0
    before = {"foreign": _files(foreign), "view": _files(view), "out": _files(out)}
    cases = [
        ([*base, "--out", str(tmp_path / "v1"), "--records", str(tmp_path / "records.txt")], "is a file"),
        ([*base, "--out", str(tmp_path / "v2"), "--records", str(tmp_path / "none")], "no such directory"),
        ([*base, "--out", str(foreign)], "holds no study"),
        ([*base, "--out", str(tmp_path / "v3")], "holds no study"),
        ([*base, "--out", str(view), "--set", "set=[optim.epochs=5]"], "different protocol (set)"),
        ([*base, "--out", str(out), "--set", "set=[optim.epochs=5]"], "different protocol (set)"),
    ]
    for argv, what in cases:
        code, stdout, err = _cli(argv, capsys)
        errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert code == 2 and len(errors) == 1 and what in errors[0] and not stdout, (argv, err)
    assert {"foreign": _files(foreign), "view": _files(view), "out": _files(out)} == before
    assert not any((tmp_path / v).exists() for v in ("v1", "v2", "v3"))


def test_summary_names_every_record_it_leaves_out(tmp_path, tiny, finished, monkeypatch, capsys):
    """A truncated record and an edited one (other settings) are left out of the table, each named."""
    import shutil

    _, _, rec_dir = finished
    monkeypatch.setattr(study_run, "run_unit", lambda args: pytest.fail(f"ran {args[0]}"))
    monkeypatch.setattr(st, "load_protocol", lambda *a, **k: tiny)
    rec = tmp_path / "rec"
    shutil.copytree(rec_dir, rec)
    cut = rec / "s3-darts-seed0" / "result.json"
    cut.write_text(cut.read_text()[:100])
    edited = rec / "s5-sdarts-rs-seed0" / "result.json"
    res = json.loads(edited.read_text())
    res["search_config"]["optim"]["epochs"] = 5
    edited.write_text(json.dumps(res))
    code, stdout, err = _cli(["study", "tiny", "--out", str(tmp_path / "view"), "--records", str(rec), "--summary"],
                             capsys)
    assert code == 0 and "PARTIAL: 2 of 4 units finished" in stdout
    notes = err.splitlines()
    assert len(notes) == 2, err
    assert f"record {cut} is unreadable" in notes[0]
    assert f"record {edited.parent} was made with other settings (search.optim.epochs)" in notes[1]


def test_cells_of_earlier_epochs_are_retrained_like_the_final_one(tmp_path):
    """retrain.at_epochs: the cell derived at epoch 1 of a 2-epoch search is retrained with the unit's budget,
    for the methods named; its accuracy equals a separate retraining of that epoch's recorded cell."""
    from stablenas.evaluate.train import TrainConfig, train_genotype

    d = {**TINY, "spaces": ["s3"], "retrain": {**TINY["retrain"], "at_epochs": [1, 2], "at_epochs_methods": ["darts"]}}
    p = st.StudyProtocol.model_validate(d)
    units = {u.method: u for u in st.study_units(p)}
    assert units["darts"].at_epochs == (1,) and units["sdarts-rs"].at_epochs == ()  # epoch 2 is the unit's own cell
    s = st.run_study(p, tmp_path / "out", records=tmp_path / "rec", log=_quiet)
    runs = {r["method"]: r for r in s["runs"]}
    assert "test_acc_at_epoch" not in runs["sdarts-rs"]
    rec = tmp_path / "rec" / "s3-darts-seed0"
    first = json.loads((rec / "metrics.jsonl").read_text().splitlines()[0])
    ref = train_genotype(Genotype.from_dict(first["genotype"]), TrainConfig.model_validate(units["darts"].train),
                         tmp_path / "ref", progress=False, log=_quiet, loggers="none")
    assert runs["darts"]["test_acc_at_epoch"] == {"1": ref["test_acc"]}
    row = next(r for r in s["rows"] if r["method"] == "darts")
    assert row["test_acc_at_epoch"] == {"1": {"mean": ref["test_acc"], "std": 0.0, "n": 1},
                                        "2": {"mean": runs["darts"]["test_acc"], "std": 0.0, "n": 1}}
    md = (tmp_path / "out" / "table.md").read_text()
    assert (f"| s3 | darts | {100 * ref['test_acc']:.2f} ± 0.00 (1) | "
            f"{100 * runs['darts']['test_acc']:.2f} ± 0.00 (1) |") in md
    # a record without the earlier cells does not stand in for a unit that asks for them
    (u,) = [x for x in st.study_units(p) if x.method == "darts"]
    assert records.record_differs({**runs["darts"], "test_acc_at_epoch": None}, u) == ["retrain.at_epochs"]
    with pytest.raises(Exception, match="at_epochs"):
        st.StudyProtocol.model_validate({**d, "retrain": {**d["retrain"], "at_epochs": [0]}})


def test_plan_counts_the_recorded_units_and_prints_no_notes(tmp_path, tiny, finished, monkeypatch, capsys):
    """`study P --plan --records R`: the units a run (or --summary) would import count as done;
    a record made with other settings does not; the protocol's note on its figures stays unprinted."""
    import shutil

    _, _, rec_dir = finished
    noted = tiny.model_copy(update={"estimate": st.EstimateSpec(measured="figures measured on a quiet machine")})
    monkeypatch.setattr(st, "load_protocol", lambda *a, **k: noted)
    code, out, _ = _cli(["study", "tiny", "--plan", "--records", str(rec_dir)], capsys)
    assert code == 0 and "4 units (1 seeds x 2 spaces x 2 methods), 4 done, 0 to run" in out
    assert "quiet machine" not in out and "figures:" not in out
    rec = tmp_path / "rec"
    shutil.copytree(rec_dir, rec)
    shutil.rmtree(rec / "s5-darts-seed0")
    other = json.loads((rec / "s3-darts-seed0" / "result.json").read_text())
    other["search_config"]["optim"]["epochs"] = 3
    (rec / "s3-darts-seed0" / "result.json").write_text(json.dumps(other))
    code, out, _ = _cli(["study", "tiny", "--plan", "--records", str(rec)], capsys)
    assert code == 0 and "2 done, 2 to run" in out
    assert "  s3-darts-seed0: 2 epochs" in out and "  s5-darts-seed0: 2 epochs, table lookup" in out
    assert "sdarts-rs" not in out


def test_cpu_long_protocol_is_priced_within_a_day_of_one_process():
    """The shipped long-search protocol: every unit validates and has a cost figure, the whole study fits
    ~24 h of one process, DARTS has >= 4 seeds and every other method >= 3, DARTS's earlier cells are retrained."""
    p = st.load_protocol("cpu-long")
    units = st.study_units(p)
    est = st.estimate_cost(p)
    assert est["unknown"] == [] and est["retrain_unpriced"] == [] and est["to_run"] == len(units)
    assert 0 < est["seconds"] <= 24 * 3600
    seeds = {m: sum(u.method == m for u in units) for m in p.methods}
    assert seeds["darts"] >= 4 and min(seeds.values()) >= 3
    assert {u.method for u in units if u.at_epochs} == {"darts"}
