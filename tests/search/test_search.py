"""End-to-end searches on digits: files written, resume after a kill, and user errors."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import metric_records, run_cli

import stablenas as sn
from stablenas.config import ConfigError
from stablenas.search.loop import RunExistsError, Search

CLI = [sys.executable, "-m", "stablenas.cli"]


def _cli(*args, **kw):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.parametrize("space", ["s5", "darts", "nb201"])
def test_two_epoch_search_writes_every_file(tmp_path, tiny_overrides, space):
    extra = ["network.layers=1"] if space == "nb201" else ["network.layers=3"]
    cfg = sn.load_config("darts", tiny_overrides + [f"space={space}"] + extra)
    result = sn.run_search(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    run = tmp_path / "run"
    for f in ["config.yaml", "metrics.jsonl", "genotype.json", "checkpoint.pt"]:
        assert (run / f).exists(), f
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    space_obj = sn.get_space(space)
    for r in lines:
        for key in ["train_loss", "train_acc", "val_loss", "val_acc", "lr", "op_weights", "genotype"]:
            assert key in r
        for ct in space_obj.cell_types:
            ws = r["op_weights"][ct]
            assert len(ws) == space_obj.n_edges
            assert all(abs(sum(e) - 1) < 1e-4 for e in ws)  # softmax rows
    # the saved genotype is the one derived from the final alpha, and the config is the resolved one
    assert sn.Genotype.load(run) == result.genotype == sn.derive(space_obj, result.arch.op_weights())
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["space"] == space and saved["optim"]["epochs"] == 2
    assert sn.config_from_dict(saved) == cfg
    # cosine lr: epoch 2 runs at the annealed rate
    assert lines[1]["lr"] < lines[0]["lr"]


def test_alpha_moves_only_after_warmup(tiny_overrides):
    cfg = sn.load_config("darts", tiny_overrides + ["space=s5", "optim.warmup_epochs=1", "network.layers=3"])
    s = Search(cfg, None, progress=False, log=lambda m: None)
    a0 = {k: v.clone() for k, v in s.arch.state_dict().items()}
    s.start_epoch(0)
    s.train_epoch()
    assert all(torch.equal(a0[k], v) for k, v in s.arch.state_dict().items())
    s._end_epoch()
    s.start_epoch(1)
    s.train_epoch()
    assert not torch.equal(a0["alphas.normal"], s.arch.state_dict()["alphas.normal"])


@pytest.mark.parametrize("update", ["first", "second"])
def test_step_returns_the_loss_without_its_graph(tiny_overrides, update):
    """The weight loss a step hands back is detached: the caller keeps it until the next step, and
    with its graph it would keep the graph's node objects alive too, small heap chunks among the
    freed activations of the next step (measured +0.6 GB peak RSS, second order, cpu-study size)."""
    cfg = sn.load_config("darts", tiny_overrides + [f"search.update={update}"])
    s = Search(cfg, None, progress=False, log=lambda m: None)
    s.start_epoch(0)
    train, val = next(iter(s.train_loader)), next(s.val_stream)
    loss = s.step(train, val)
    assert loss.grad_fn is None and not loss.requires_grad
    assert torch.isfinite(loss) and float(loss) > 0


class _Crash(RuntimeError):
    pass


def test_resume_after_interrupt_is_bit_identical(tmp_path, tiny_overrides):
    over = tiny_overrides + ["space=s3", "network.layers=3", "optim.epochs=3", "search.checkpoint_every=2",
                             "search.steps_per_epoch=5", "data.cutout=4", "data.flip=true"]
    cfg = sn.load_config("darts", over)
    ref = sn.run_search(cfg, tmp_path / "ref", progress=False, log=lambda s: None)

    # interrupt in the middle of epoch 2 (after a mid-epoch checkpoint at step 2)
    s = Search(cfg, tmp_path / "cut", progress=False, log=lambda m: None)
    orig = s.weight_step

    def crashing(batch):
        if s.epoch == 1 and s.step_in_epoch == 3:
            raise _Crash()
        return orig(batch)

    s.weight_step = crashing
    with pytest.raises(_Crash):
        s.run()
    assert not (tmp_path / "cut" / "genotype.json").exists()
    resumed = sn.run_search(cfg, tmp_path / "cut", resume=True, progress=False, log=lambda m: None)
    for mine, theirs in ((ref.arch, resumed.arch), (ref.search.net, resumed.search.net)):
        other = theirs.state_dict()  # once, not per key: a supernet's state dict walks every module
        for k, v in mine.state_dict().items():
            assert torch.equal(v, other[k]), k
    assert resumed.genotype == ref.genotype

    assert metric_records(tmp_path / "cut" / "metrics.jsonl") == metric_records(tmp_path / "ref" / "metrics.jsonl")


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    args = ["darts", "--set", "data.dataset=digits", "--set", "data.subset=null", "--set", "space=s5",
            "--set", "network.layers=3", "--set", "network.channels=8", "--set", "optim.epochs=4",
            "--set", "data.batch_size=32", "--set", "search.checkpoint_every=1", "--set", "threads=2",
            "--set", "search.val_batches=2", "--set", "network.channels_last=false",
            "--set", "search.steps_per_epoch=8"]  # 4 x 8 steps: the kill still lands mid-run (asserted)
    ref = _cli("search", *args, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    cut = tmp_path / "cut"
    proc = subprocess.Popen([*CLI, "search", *args, "--out", str(cut)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill during epoch 2, once a mid-epoch checkpoint exists
        m = cut / "metrics.jsonl"
        if m.exists() and len(m.read_text().splitlines()) >= 1:
            time.sleep(0.3)
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cut / "genotype.json").exists(), "the run finished before the kill; make it longer"
    res = _cli("search", *args, "--out", str(cut), "--resume")
    assert res.returncode == 0, res.stderr
    a = torch.load(tmp_path / "ref" / "checkpoint.pt", weights_only=False)["arch"]
    b = torch.load(cut / "checkpoint.pt", weights_only=False)["arch"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (cut / "genotype.json").read_text() == (tmp_path / "ref" / "genotype.json").read_text()


def test_existing_run_is_not_overwritten(tmp_path, tiny_overrides):
    cfg = sn.load_config("darts", tiny_overrides + ["space=s5", "optim.epochs=1", "network.layers=3"])
    sn.run_search(cfg, tmp_path / "r", progress=False, log=lambda s: None)
    before = (tmp_path / "r" / "metrics.jsonl").read_text()
    with pytest.raises(RunExistsError, match="--resume"):
        Search(cfg, tmp_path / "r")
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == before
    other = sn.load_config("darts", tiny_overrides + ["space=s5", "optim.epochs=1", "network.layers=3",
                                                      "seed=9"])
    with pytest.raises(ConfigError, match="seed"):
        Search(other, tmp_path / "r", resume=True)


@pytest.mark.parametrize("overrides,match", [
    (["optim.epocs=3"], r"optim.epocs: unknown key; valid keys here: epochs"),
    (["space=s9"], r"unknown search space 's9'; available: darts"),
    (["optim.lr=-1"], r"optim.lr: Input should be greater than 0"),
    (["data.dataset=imagenet"], r"unknown dataset 'imagenet'"),
    (["methods=[{name: nope}]"], r"unknown method 'nope'"),
    (["network.channels=10", "network.partial_channels=4"], "divisible"),
])
def test_bad_config_values_give_one_clear_error(overrides, match):
    with pytest.raises(ConfigError, match=match):
        sn.load_config("darts", overrides)


def test_cli_errors_are_one_line(tmp_path, capsys):
    """In process (conftest's runner), as tests/cli/test_bad_inputs.py's battery: the error path is
    the CLI's own, not the interpreter's."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("space: darts\noptim: {epochs: 2, learning_rate: 0.1}\n")
    code, _, err = run_cli(["search", bad, "--out", tmp_path / "x"], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "optim.learning_rate: unknown key" in err and "lr" in err

    code, _, err = run_cli(["search", "darts", "--out", tmp_path / "y", "--set", "space=nope"], capsys)
    assert code == 2 and "unknown search space 'nope'" in err

    code, _, err = run_cli(["search", "darts", "--out", tmp_path / "z", "--set", f"data.root={tmp_path / 'none'}"],
                           capsys)
    assert code == 2
    assert "cifar10" in err and "data_batch_1" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "z" / "checkpoint.pt").exists()

    code, _, err = run_cli(["search", tmp_path / "missing.yaml", "--out", tmp_path / "w"], capsys)
    assert code == 2 and "presets" in err

    (tmp_path / "notyaml.yaml").write_text("space: [darts\n")
    code, _, err = run_cli(["search", tmp_path / "notyaml.yaml", "--out", tmp_path / "v"], capsys)
    assert code == 2 and "not valid YAML" in err


def test_cli_spaces_and_show(tmp_path, tiny_overrides, capsys):
    code, out, _ = run_cli(["spaces"], capsys)
    assert code == 0
    for name in ["darts", "s1", "s2", "s3", "s4", "s5", "idarts-s2", "nb201"]:
        assert name in out
    header = out.splitlines()[0].split()
    s5 = dict(zip(header, next(x.split() for x in out.splitlines() if x.startswith("s5 "))))
    assert (s5["skeleton"], s5["nodes"], s5["edges"], s5["archs"]) == ("darts", "1", "2", "81")  # 3 ops ** 4 edges
    cfg = sn.load_config("darts", tiny_overrides + ["space=s5", "optim.epochs=1", "network.layers=3"])
    res = sn.run_search(cfg, tmp_path / "r", progress=False, log=lambda s: None)
    code, out, _ = run_cli(["show", tmp_path / "r"], capsys)
    assert code == 0 and "complete" in out and f"genotype: {res.genotype}\n" in out


def test_deterministic_switch_sets_torch_flags():
    import torch.utils.deterministic as det

    from stablenas.utils import use_deterministic_algorithms

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              det.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(False)
    det.fill_uninitialized_memory = True
    try:
        use_deterministic_algorithms()
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert det.fill_uninitialized_memory is False  # no NaN fill of every new tensor (a 1.12x step cost)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        det.fill_uninitialized_memory = before[2]
