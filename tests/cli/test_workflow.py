"""A researcher's path through the CLI: cost before commitment (--dry-run), search -> train -> info
without re-stating the dataset, genotypes in the DARTS repositories' Python form, shared options."""

import json

import pytest
import yaml
from typer.testing import CliRunner

import stablenas as sn
from stablenas.cli import app
from stablenas.estimate import estimate_search, estimate_train, format_estimate
from stablenas.evaluate.train import resolve_genotype, train_config
from stablenas.genotype import GenotypeError
from stablenas.networks.published import PUBLISHED

DARTS_V2_PY = """DARTS_V2 = Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0),
 ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)],
 normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2),
 ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)],
 reduce_concat=range(2, 6))"""


def _sets(overrides):
    out = []
    for o in overrides:
        out += ["--set", o]
    return out


def test_darts_python_genotype_form_inline_and_file(tmp_path):
    want = PUBLISHED["DARTS_V2"]
    g = resolve_genotype(DARTS_V2_PY)
    assert g.normal == want.normal and g.reduce == want.reduce
    assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)
    f = tmp_path / "genotypes.py"
    f.write_text(DARTS_V2_PY + "\n")
    assert resolve_genotype(str(f)).normal == want.normal
    res = CliRunner().invoke(app, ["info", DARTS_V2_PY])
    assert res.exit_code == 0, res.output
    assert "3,349,342" in res.output  # the same count as `info DARTS_V2`


def test_darts_python_form_is_parsed_never_run(tmp_path):
    marker = tmp_path / "ran"
    evil = (f"Genotype(normal=__import__('pathlib').Path({str(marker)!r}).touch(), normal_concat=[2], "
            "reduce=[], reduce_concat=[2])")
    with pytest.raises(GenotypeError, match="normal must be a literal"):
        resolve_genotype(evil)
    assert not marker.exists()
    res = CliRunner().invoke(app, ["info", "Genotype(normal=[('sep_conv_3x3', 0)"])
    assert res.exit_code == 2 and "error:" in res.output and "File name too long" not in res.output


def test_dry_run_writes_nothing_and_estimates(tmp_path, tiny_overrides):
    out = tmp_path / "never"
    res = CliRunner().invoke(app, ["search", "darts", "--out", str(out), "--dry-run", *_sets(tiny_overrides)])
    assert res.exit_code == 0, res.output
    assert "estimated wall time:" in res.output and "peak memory" in res.output
    assert not out.exists()
    cfg = sn.load_config("darts", tiny_overrides)
    e = estimate_search(cfg, steps=2)
    assert e["steps_per_epoch"] == 3 and e["epochs"] == 2 and e["timed_steps"] == 2
    assert e["seconds_per_step"] > 0 and e["seconds_epoch_end"] > 0
    assert e["estimated_seconds"] == pytest.approx(2 * (3 * e["seconds_per_step"] + e["seconds_epoch_end"]))
    assert e["peak_memory_bytes"] > 10 * 2**20
    assert "2 epochs x 3 steps" in format_estimate(e)


def test_train_dry_run_and_print_config(tmp_path):
    cfg = train_config("darts-small", dataset="digits", epochs=3, channels=8, layers=2, batch_size=32,
                       test_subset=64, channels_last=False)
    e = estimate_train("DARTS_V2", cfg, steps=2)
    assert e["timed_steps"] == 2 and e["seconds_eval"] > 0
    assert e["estimated_seconds"] == pytest.approx(3 * e["steps_per_epoch"] * e["seconds_per_step"]
                                                   + e["seconds_eval"])
    res = CliRunner().invoke(app, ["train", "DARTS_V2", "--dataset", "digits", "--epochs", "7", "--print-config"])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(res.output)["epochs"] == 7


def test_search_then_train_and_info_follow_the_run(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["search", "darts", "--out", str(run), "--seed", "5", "--threads", "1",
                                   "--device", "cpu", "--log", "none", *_sets(tiny_overrides)])
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["seed"], saved["threads"], saved["device"]) == (5, 1, "cpu")
    # train RUN inherits the run's dataset (digits, 1x8x8), not CIFAR-10
    res = CliRunner().invoke(app, ["train", str(run), "--print-config"])
    assert yaml.safe_load(res.output)["dataset"] == "digits"
    res = CliRunner().invoke(app, ["train", str(run), "--dataset", "mnist", "--print-config"])
    assert yaml.safe_load(res.output)["dataset"] == "mnist"  # an explicit choice wins
    # info RUN counts for the run's input: 1x8x8, 10 classes (fewer multiply-adds than 3x32x32)
    res = CliRunner().invoke(app, ["info", str(run)])
    assert res.exit_code == 0, res.output
    assert "input 1x8x8" in res.output
    g = sn.Genotype.load(run / "genotype.json")
    from stablenas.networks.profile import info as profile_info

    want = profile_info(g, "cifar", input_size=(1, 8, 8), num_classes=10)
    assert f"({want['macs']:,})" in res.output
    # train a tiny network from the run; show and info work on the training directory
    t = tmp_path / "t"
    res = CliRunner().invoke(app, ["train", str(run), "--out", str(t), "--preset", "darts-small", "--epochs", "1",
                                   "--channels", "8", "--layers", "2", "--batch", "32", "--set", "test_subset=64",
                                   "--set", "steps_per_epoch=2", "--set", "channels_last=false", "--log", "none"])
    assert res.exit_code == 0, res.output
    assert json.loads((t / "result.json").read_text())["input_shape"] == [1, 8, 8]
    res = CliRunner().invoke(app, ["info", str(t)])
    assert res.exit_code == 0 and "input 1x8x8" in res.output, res.output
    result = json.loads((t / "result.json").read_text())
    res = CliRunner().invoke(app, ["show", str(t)])
    assert res.exit_code == 0, res.output
    assert "training run:" in res.output and "epochs: 1/1  status: complete" in res.output
    assert f"test_acc {result['test_acc'] * 100:.2f}%" in res.output and f"genotype: {g}\n" in res.output
    res = CliRunner().invoke(app, ["report", str(t)])
    assert res.exit_code == 0, res.output
    page = (t / "report.html").read_text()
    assert "training run" in page and f"{result['test_acc']:.4f}" in page and 'id="cells"' in page
    res = CliRunner().invoke(app, ["report", str(run), str(t), "--out", str(tmp_path / "cmp.html")])
    assert res.exit_code == 2 and "compares search runs" in res.output and not (tmp_path / "cmp.html").exists()


def test_version_flag():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"stablenas {sn.__version__}"


def test_sweep_and_s5_table_dry_runs_count_every_stage(tmp_path, monkeypatch, tiny_overrides):
    """The stage arithmetic of `sweep --dry-run` / `s5-table --dry-run` against the plan, with the
    timed parts stubbed (they are the search/train estimates tested above); nothing is written."""
    import stablenas.estimate as est

    def fake(kind, seconds):
        def f(*a, **kw):
            return {"kind": kind, "estimated_seconds": seconds, "peak_memory_bytes": 2**20 * seconds,
                    "device": "cpu", "threads": 1, "what": kind, "genotype": {"space": "s5"}}
        return f

    monkeypatch.setattr(est, "estimate_search", fake("search", 100.0))
    calls = []
    monkeypatch.setattr(est, "estimate_train", lambda g, cfg, **kw: calls.append(cfg.epochs)
                        or fake("train", float(cfg.epochs))())
    out = tmp_path / "sweep"
    res = CliRunner().invoke(app, ["sweep", "darts", "--seeds", "0", "--seeds", "1", "--seeds", "2",
                                   "--l2", "1e-4", "--l2", "1e-3", "--out", str(out), "--final-epochs", "12",
                                   "--final-seeds", "0", "--final-seeds", "1", "--jobs", "4", "--dry-run",
                                   *_sets([*tiny_overrides, "space=s5"])])
    assert res.exit_code == 0, res.output
    assert not out.exists()
    assert calls == [2, 12]  # selection: final // 6 epochs; final: 12
    # 6 searches and 6 selection trainings in 2 waves of 4 jobs, 2 final trainings in 1 wave
    assert "search: 6 x 1.7 min = 3.3 min" in res.output
    assert "selection retraining: 6 x 2s = 4s" in res.output and "final retraining: 2 x 12s = 12s" in res.output
    e = est.estimate_sweep(__import__("stablenas.experiments.sweep", fromlist=["SweepPlan"]).SweepPlan(
        config="darts", seeds=[0, 1, 2], overrides=[*tiny_overrides, "space=s5"], reg="l2", reg_values=[1e-4, 1e-3],
        final_epochs=12, final_seeds=[0, 1], final="all"), jobs=4)
    assert [(r["stage"], r["runs"]) for r in e["stages"]] == [
        ("search", 6), ("selection retraining", 6), ("final retraining", 12)]
    assert e["estimated_seconds"] == 2 * 100 + 2 * 2 + 3 * 12
    res = CliRunner().invoke(app, ["s5-table", "--dry-run", "--work", str(tmp_path / "s5"), "--set", "epochs=3",
                                   "--repeat-archs", "0,17", "--repeat-seeds", "1"])
    assert res.exit_code == 0, res.output
    assert "training: 83 x 3s = 4.2 min" in res.output and not (tmp_path / "s5").exists()  # 81 + 2 repeats


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_get_the_mode_a_plain_open_would(tmp_path, umask):
    """Files written via temp file + rename (configs, metrics, results, checkpoints, tables, reports) get
    0666 minus the umask like any new file, not mkstemp's 0600."""
    import os
    import stat

    from stablenas.utils import atomic_torch_save, atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}\n")
        atomic_torch_save({"x": 1}, tmp_path / "b.pt")
        with open(tmp_path / "c.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"a.json": 0o666 & ~umask, "b.pt": 0o666 & ~umask, "c.txt": 0o666 & ~umask}
