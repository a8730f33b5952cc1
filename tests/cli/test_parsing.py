"""One --set parser and one error formatter for every command; sweep on typer with
multi-value options (``--seeds 0 1 2``)."""

import pytest

import stablenas as sn
from stablenas import cli
from stablenas.config import apply_overrides
from stablenas.errors import ConfigError
from stablenas.evaluate.train import train_config


def test_one_set_parser_for_search_and_train():
    assert apply_overrides({}, ["a.b=3", "c=[1, 2]", "d=text:x", "e=null"]) == \
        {"a": {"b": 3}, "c": [1, 2], "d": "text:x", "e": None}
    assert train_config("darts", ["epochs=3", "cutout=0"]).epochs == 3
    assert sn.load_config("quickstart", ["optim.epochs=3"]).optim.epochs == 3
    for bad, call in (("epochs", lambda o: train_config("darts", o)), ("optim", lambda o: sn.load_config("darts", o))):
        with pytest.raises(ConfigError, match=rf"--set '{bad}': expected KEY=VALUE, e.g. "):
            call([bad])


def test_one_error_formatter():
    with pytest.raises(ConfigError, match=r"^invalid training config: epoch: unknown key; valid keys here: dataset"):
        train_config("darts", ["epoch=3"])
    with pytest.raises(ConfigError, match=r"^invalid config: optim.epoch: unknown key; valid keys here: epochs"):
        sn.config_from_dict({"optim": {"epoch": 3}})
    with pytest.raises(ValueError, match=r"^method sdarts-rs: unknown option 'eps'; valid options: "):
        sn.METHODS["sdarts-rs"].parse_options({"eps": 1})


def test_sweep_takes_several_values_per_option(monkeypatch, tmp_path):
    seen = {}

    def fake_run(plan, out, jobs=1, threads=None, backend=None, progress=None):
        seen.update(plan=plan, out=out, jobs=jobs, backend=backend)
        (out / "table.md").parent.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text("table\n")
        return {"selected": "none"}

    monkeypatch.setattr("stablenas.experiments.sweep.run_sweep", fake_run)
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", "r-darts-l2", "--seeds", "0", "1", "2", "--l2", "3e-4", "27e-4", "--out",
                  str(tmp_path / "s"), "--final-seeds", "4", "5", "--set", "optim.epochs=2", "-j", "2"])
    assert e.value.code in (0, None)
    p = seen["plan"]
    assert p.seeds == [0, 1, 2] and p.reg == "l2" and p.reg_values == [3e-4, 27e-4]
    assert p.final_seeds == [4, 5] and p.overrides == ["optim.epochs=2"] and seen["jobs"] == 2
    assert seen["backend"].name == "local" and seen["backend"].jobs == 2


def test_sweep_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", "darts", "--seeds", "0", "--l2", "1e-4", "--drop-path", "0.1", "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --l2 and --drop-path") and err.strip().count("\n") == 0


def test_help_shows_flags_as_flags():
    """Every command's --help in plain click layout: a boolean flag reads ``--resume``, never ``--resume <bool>``
    (typer's rich help prints a value placeholder after every flag), and no box drawing."""
    from typer.main import get_command
    from typer.testing import CliRunner

    group = get_command(cli.app)
    runner = CliRunner()
    names = sorted(group.commands)
    assert "search" in names and len(names) >= 10
    for name in [None, *names]:
        result = runner.invoke(cli.app, ([name] if name else []) + ["--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "<bool>" not in result.output and "\u256d" not in result.output, (name, result.output)
        assert "Usage: " in result.output
    out = runner.invoke(cli.app, ["search", "--help"]).output
    assert "  --resume  " in out and "--progress / --no-progress" in out


# every option rule of the commands' option models: the bad value, then what the one error line must name
OPTION_RULES = [
    (["analyze", "r", "--batches", "0"], ["--batches 0", "greater than or equal to 1"]),
    (["analyze", "r", "--curvature-batches", "0"], ["--curvature-batches 0", "greater than or equal to 1"]),
    (["analyze", "r", "--iters", "-1"], ["--iters -1", "greater than or equal to 1"]),
    (["analyze", "r", "--spectrum", "maybe"], ["--spectrum 'maybe'", "'auto', 'yes' or 'no'"]),
    (["analyze", "r", "--grid", "1"], ["--grid 1", "at least 2 points per axis"]),
    (["report", "r", "--out", "page.html"], ["--out", "two or more run directories"]),
    (["sweep", "darts", "--seeds", "0", "--final", "best"], ["--final 'best'", "'selected', 'all' or 'none'"]),
    (["study", "cpu-collapse"], ["--out DIR is required", "--plan"]),
    (["s5-table", "--repeat-archs", "0,x"], ["--repeat-archs '0,x'", "comma-separated integers"]),
    (["s5-table", "--repeat-seeds", "1;2"], ["--repeat-seeds '1;2'", "comma-separated integers"]),
    (["s5-table", "--seeds", "0,1.5", "--show"], ["--seeds '0,1.5'", "comma-separated integers"]),
    (["info", "DARTS_V2", "--input-size", "3x32"], ["--input-size '3x32'", "a side (32) or C,H,W"]),
    (["info", "DARTS_V2", "--input-size", "1,0,28"], ["--input-size '1,0,28'", "positive integers"]),
    (["info"], ["GENOTYPE", "--list"]),
    (["search", "quickstart"], ["--out DIR is required (the run directory)", "--dry-run", "--print-config"]),
    (["search", "quickstart", "--out", "r", "--nproc", "0"], ["--nproc 0", "greater than or equal to 1"]),
    (["train", "DARTS_V2"], ["--out DIR is required (the training run directory)", "--dry-run"]),
]


@pytest.mark.parametrize("argv,names", OPTION_RULES, ids=[" ".join(a[:1] + a[2:]) for a, _ in OPTION_RULES])
def test_option_rules_are_one_line_naming_the_option(tmp_path, capsys, monkeypatch, argv, names):
    """Each rule refuses before anything loads or is written: exit 2, one line naming the option and
    what is allowed."""
    from conftest import run_cli

    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli([*argv, *(["--out", "out"] if argv[0] == "sweep" else [])], capsys)
    assert code == 2 and err.startswith("error: ") and err.strip().count("\n") == 0, (code, err)
    for name in names:
        assert name in err, (name, err)
    assert list(tmp_path.iterdir()) == []


def test_option_models_parse_what_the_command_line_spells():
    from stablenas.cli.models import AnalyzeOptions, InfoOptions, S5TableOptions, SweepOptions

    lists = S5TableOptions.parse(repeat_archs="0,17, 40,", repeat_seeds="", seeds=" 3 ")
    assert (lists.repeat_archs, lists.repeat_seeds, lists.seeds) == ([0, 17, 40], [], [3])
    assert InfoOptions.parse(genotype="g", input_size="1x28x28").input_size == (1, 28, 28)
    assert InfoOptions.parse(genotype="g", input_size="32").input_size == 32
    assert InfoOptions.parse(listing=True).input_size is None
    assert SweepOptions.parse(drop_path=[0.0, 0.2]).regularisation() == ("drop-path", [0.0, 0.2])
    assert SweepOptions.parse(l2=[3e-4]).regularisation() == ("l2", [3e-4])
    assert SweepOptions.parse().regularisation() == (None, [])
    assert AnalyzeOptions.parse(overrides=["device=cpu"]).model_dump() == {
        "batches": 2, "curvature_batches": 1, "iters": 20, "spectrum": "auto", "landscape": True, "grid": 5,
        "grad_corr": True, "seed": 0, "overrides": ["device=cpu"]}


def test_option_errors_name_the_first_bad_option_in_field_order():
    """pydantic's own errors get the option's spelling and the value; an unknown field is named
    without one."""
    from stablenas.cli.models import AnalyzeOptions

    with pytest.raises(ConfigError, match=r"^--curvature-batches 0: Input should be greater than or equal to 1$"):
        AnalyzeOptions.parse(curvature_batches=0, spectrum="maybe", grid=1)
    with pytest.raises(ConfigError, match=r"^--landscapes: Extra inputs are not permitted$"):
        AnalyzeOptions.parse(landscapes=False)
