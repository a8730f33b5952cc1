"""What the CLI prints: help and listings without torch, one table format, the method pages, the
effective config, the one-line genotype and the stability numbers of ``show``, one result line
from ``train``, log lines that a live progress bar does not break."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from support.s5 import fake_table

import stablenas as sn
from stablenas.analysis.run import Run
from stablenas.analysis.summary import show_lines
from stablenas.skeletons.darts import s5_table

# ops without weights, counted by hand from the op definitions (pooling, identity, zero, noise)
PARAM_FREE = {"none", "skip_connect", "max_pool_3x3", "avg_pool_3x3", "noise"}



def _torch_loaded_after(code: str) -> bool:
    """Run ``code`` in a fresh interpreter; whether it left torch in ``sys.modules``."""
    probe = f"import sys\n{code}\nprint('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("argv", [["--help"], ["search", "--help"], ["presets"], ["--version"]])
def test_help_and_presets_do_not_import_torch(argv):
    run = f"from stablenas.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert not _torch_loaded_after(run)


def test_the_torch_probe_sees_an_import():
    assert not _torch_loaded_after("import stablenas")  # the package itself loads nothing heavy
    assert _torch_loaded_after("import stablenas\nstablenas.Genotype")  # a public name loads its module


def _columns(header: str) -> list[int]:
    """Start offsets of the header's column names."""
    return [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]


@pytest.mark.parametrize("command,first,names", [
    ("spaces", "space", lambda: list(sn.SPACES)),
    ("presets", "preset", lambda: sn.list_presets()),
    ("methods", "method", lambda: list(sn.METHODS)),
])
def test_listings_share_one_table_format(command, first, names, capsys):
    code, out, err = run_cli([command], capsys)
    assert code == 0, err
    lines = out.split("\n\n")[0].splitlines()  # the table (methods adds a hint below it)
    header = lines[0]
    assert header.split()[0] == first and header == header.lower()
    starts = _columns(header)
    listed = []
    for row in lines[1:]:
        for s, e in zip(starts, [*starts[1:], len(row)]):  # each cell starts at its header's column, or is empty
            cell = row[s:e]
            assert (s == 0 or row[s - 2:s] == "  ") and (cell[:1] != " " or not cell.strip()), (row, s)
        if row[0] != " ":
            listed.append(row.split()[0])
    assert sorted(listed) == sorted(names())


def _default_text(field) -> str:
    v = field.get_default(call_default_factory=True)
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


@pytest.mark.parametrize("name", sorted(sn.METHODS))
def test_method_page_lists_every_option_with_type_default_and_meaning(name, capsys):
    cls = sn.METHODS[name]
    code, out, err = run_cli(["methods", name], capsys)
    assert code == 0, err
    assert out.startswith(f"{name}: {cls.description}\n")
    assert (f"\npaper: {cls.paper}\n" in out) == bool(cls.paper)
    fields = cls.Options.model_fields
    rows = {line.split()[0]: line for line in out.splitlines()[4:] if line.strip()}
    for key, f in fields.items():
        assert f.description and "\n" not in f.description, f"{name}.{key} has no one-line description"
        row = rows[key]
        assert row.rstrip().endswith(f.description)
        assert f"  {_default_text(f)}  " in row, row
    if cls.preset:
        assert f"preset: stablenas search {cls.preset} " in out
    if not fields:
        assert "options: none" in out


def test_every_built_in_method_names_its_paper_except_the_budget():
    built_in = {n: cls for n, cls in sn.METHODS.items() if cls.__module__.startswith("stablenas.methods.")}
    assert [n for n, cls in built_in.items() if not cls.paper] == ["budget"]


def test_unknown_method_name_is_one_error_line(capsys):
    code, out, err = run_cli(["methods", "no-such-method"], capsys)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: unknown method 'no-such-method'; available: ")
    assert err.strip().split("available: ")[1].split(", ") == sn.METHODS.list()


def test_print_config_fills_in_every_method_option(tmp_path, capsys):
    code, out, err = run_cli(["search", "gdas", "--print-config", "--set", "methods=[{name: gdas, tau_min: 0.5}]"],
                             capsys)
    assert code == 0, err
    printed = yaml.safe_load(out)
    want = {k: f.get_default(call_default_factory=True) for k, f in sn.METHODS["gdas"].Options.model_fields.items()}
    assert printed["methods"] == [{"name": "gdas", **want, "tau_min": 0.5}]
    (tmp_path / "c.yaml").write_text(out)  # the printed config is a config that loads to the same thing
    assert sn.load_config(str(tmp_path / "c.yaml")).to_yaml(effective=True) == out


def test_search_and_show_print_the_compact_genotype_and_the_stability_numbers(tmp_path, monkeypatch, capsys,
                                                                             tiny_overrides):
    monkeypatch.setattr(s5_table, "RESOURCES", tmp_path)
    s5_table.forget_cached()
    (tmp_path / "s5_digits.json").write_text(json.dumps(fake_table("digits")))
    run = tmp_path / "run"
    sets = [a for o in [*tiny_overrides, "space=s5", "methods=[{name: hessian, iters: 4}]", "threads=1"]
            for a in ("--set", o)]
    code, out, err = run_cli(["search", "darts", "--out", run, "--no-progress", "--log", "none", *sets], capsys)
    assert code == 0, err
    g = sn.Genotype.load(run)
    compact = " ".join(f"{op}<-{i}" for op, i in g.normal), " ".join(f"{op}<-{i}" for op, i in g.reduce)
    assert out.splitlines()[0] == f"genotype: normal: {compact[0]} | reduce: {compact[1]}"
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    code, out, err = run_cli(["show", run], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert f"genotype: normal: {compact[0]} | reduce: {compact[1]}" in lines
    share = {ct: sum(op in PARAM_FREE for op, _ in pairs) / len(pairs) for ct, pairs in
             (("normal", g.normal), ("reduce", g.reduce))}
    every = sum(op in PARAM_FREE for op, _ in (*g.normal, *g.reduce)) / (len(g.normal) + len(g.reduce))
    assert f"parameter-free share: normal {share['normal']:.2f}  reduce {share['reduce']:.2f}  all {every:.2f}" \
        in lines
    assert next(x for x in lines if x.startswith("lambda_max: ")).startswith(
        f"lambda_max: {last['lambda_max']:.4g} at epoch {last['epoch']}")
    table = s5_table.load_table("digits")
    acc, regret = table.test_acc(g), table.best_acc - table.test_acc(g)
    assert f"derived cell (s5 lookup): test acc {acc * 100:.2f}%  regret {regret * 100:.2f}%" in lines


def test_show_of_a_recurrent_training_run_says_perplexity(tmp_path):
    g = sn.Genotype.from_dict({"space": "ptb", "recurrent": [["tanh", 0]] * 8, "concat": list(range(1, 9))})
    run = Run(tmp_path, {"nhid": 32, "batch_size": 8, "seed": 0, "epochs": 1},
              [{"epoch": 1, "train_loss": 5.0, "train_ppl": 148.41, "valid_loss": 5.1, "valid_ppl": 164.02}],
              g, kind="train", result={"valid_ppl": 164.02, "test_ppl": 160.5, "params": 12345})
    lines = show_lines(run, tmp_path)
    assert "last epoch: train loss 5.0000 ppl 148.41  valid loss 5.1000 ppl 164.02" in lines
    assert "result: test ppl 160.50  valid ppl 164.02  params 0.012M" in lines
    assert not any(x.startswith("parameter-free share") for x in lines)  # the rnn skeleton has no share
    assert f"genotype: {g}" in lines


def test_train_prints_its_result_once(tmp_path, capsys):
    g = tmp_path / "g.json"
    sn.Genotype.from_dict({"space": "s5", "normal": [["skip_connect", 0], ["sep_conv_3x3", 1]], "normal_concat": [2],
                           "reduce": [["max_pool_3x3", 0], ["skip_connect", 1]], "reduce_concat": [2]}).save(g)
    code, out, err = run_cli(["train", g, "--out", tmp_path / "t", "--dataset", "digits", "--epochs", "1",
                              "--channels", "4", "--layers", "2", "--batch", "64", "--threads", "1", "--no-progress",
                              "--log", "none", "--set", "steps_per_epoch=2", "--set", "channels_last=false"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "t" / "result.json").read_text())
    both = out + err
    assert both.count("test_acc") == 1 and f"test_acc {result['test_acc'] * 100:.2f}%" in out
    assert out.splitlines()[-1] == f"result: {tmp_path / 't' / 'result.json'}"


def test_log_lines_land_above_a_live_bar(monkeypatch):
    """A line written while a bar is drawn gets a line of its own (a plain print would continue the
    bar's line)."""
    import io

    from stablenas.progress import bar, write

    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    with bar(10, "epoch 1/2", True) as b:
        b.update(3)
        write("estimate: 0.10 s/step x 7 steps left = 1s")
        b.update(1)
    lines = [seg for line in buf.getvalue().split("\n") for seg in [line.split("\r")[-1]]]
    assert "estimate: 0.10 s/step x 7 steps left = 1s" in lines


def test_op_weights_for_recording_carry_no_graph(tmp_path, tiny_overrides):
    """The plug-in example's hook (examples/toy_method.py) records the entropy of detached op
    weights: no autograd warning, the value of the softmax of alpha."""
    import torch

    from stablenas.plugins import load_plugins

    load_plugins([str(Path(__file__).resolve().parents[2] / "examples" / "toy_method.py")])
    cfg = sn.load_config("darts", [*tiny_overrides, "space=s5", "optim.epochs=1", "methods=[{name: toy}]"])
    from stablenas.search.loop import Search

    search = Search(cfg, None, log=lambda s: None)
    assert all(not w.requires_grad for w in search.arch.op_weights(detach=True).values())
    record: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        search.methods[0].on_epoch_end(search, 0, record)
    p = [torch.softmax(a.detach(), -1) for a in search.arch.alphas.values()]
    assert record["toy_entropy"] == pytest.approx(float(sum(-(q * q.log()).sum() for q in p)), rel=1e-6)
