"""NAS-Bench-201 lookups on a fake benchmark file written in the official file's structure.

The structure (meta_archs / arch2infos[index]['full'|'less'] = ArchResults state with
dataset_seed and all_results[(dataset, seed)] = ResultsCount state with eval_acc1es['<set>@<epoch>'])
is the one documented by the nas_201_api source; expected values are hand-computed means.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from stablenas.config import load_config
from stablenas.evaluate.lookup import annotate_record
from stablenas.genotype import Genotype
from stablenas.search.loop import Search
from stablenas.skeletons.nb201 import benchmark as nb201
from stablenas.skeletons.nb201.benchmark import NB201Benchmark, NB201FileError, extract

A0 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
A1 = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
A2 = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"


def _result(data: str, seed: int, sets: dict[str, float], epochs: int = 200) -> dict:
    last = epochs - 1
    acc = {f"{s}@{last}": v for s, v in sets.items()}
    acc.update({f"{s}@0": 10.0 for s in sets})  # an early epoch that must not be used
    return {
        "name": data,
        "net_state_dict": None,
        "train_acc1es": {last: 99.0},
        "train_acc5es": None,
        "train_losses": {last: 0.01},
        "train_times": None,
        "arch_config": {"arch_str": "x"},
        "params": 1.5,
        "flop": 200.0,
        "seed": seed,
        "epochs": epochs,
        "latency": None,
        "eval_names": list(sets),
        "eval_acc1es": acc,
        "eval_times": {},
        "eval_losses": {k: 0.1 for k in acc},
    }


def _arch_results(index: int, arch: str, base: float, seeds=(777, 888)) -> dict:
    all_results, dataset_seed = {}, {}
    for data, sets in (
        ("cifar10-valid", {"x-valid": base - 5}),
        ("cifar10", {"ori-test": base}),
        ("cifar100", {"x-valid": base - 20, "x-test": base - 21}),
        ("ImageNet16-120", {"x-valid": base - 40, "x-test": base - 41}),
    ):
        dataset_seed[data] = list(seeds)
        for k, s in enumerate(seeds):
            # seeds differ by +-1: the mean is the base value
            all_results[(data, s)] = _result(data, s, {n: v + (1 if k == 0 else -1) for n, v in sets.items()})
    return {
        "arch_index": index,
        "arch_str": arch,
        "all_results": all_results,
        "dataset_seed": dataset_seed,
        "clear_net_done": True,
    }


@pytest.fixture
def fake_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    nb201.get_benchmark.cache_clear()
    archs = [A0, A1, A2]
    raw = {
        "meta_archs": archs,
        "evaluated_indexes": [0, 1, 2],
        "arch2infos": {
            i: {
                "full": _arch_results(i, a, 90.0 - 20 * i),
                "less": _arch_results(i, a, 50.0 - 10 * i, seeds=(111,)),
            }
            for i, a in enumerate(archs)
        },
    }
    path = tmp_path / "NAS-Bench-201-v1_1-096897.pth"
    torch.save(raw, path)
    return path


def test_lookup_matches_hand_computed_means(fake_file):
    b = NB201Benchmark.from_file(fake_file)
    assert len(b) == 3
    assert b.test_acc(A0, "cifar10") == pytest.approx(0.90)
    assert b.valid_acc(A0, "cifar10") == pytest.approx(0.85)  # cifar10-valid / x-valid
    assert b.test_acc(A0, "cifar100") == pytest.approx(0.69)
    assert b.test_acc(A1, "ImageNet16-120") == pytest.approx(0.29)
    assert b.test_accs(Genotype(space="nb201", arch=A1)) == pytest.approx(
        {"cifar10": 0.70, "cifar100": 0.49, "ImageNet16-120": 0.29}
    )
    assert b.best("cifar10") == (A0, pytest.approx(0.90))
    b12 = NB201Benchmark.from_file(fake_file, hp="12", cache=False)
    assert b12.test_acc(A0, "cifar10") == pytest.approx(0.51)  # single seed: +1
    with pytest.raises(KeyError, match="not in the benchmark"):
        b.test_acc("|avg_pool_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    with pytest.raises(KeyError, match="unknown NAS-Bench-201 dataset"):
        b.test_acc(A0, "svhn")


def test_cache_gives_the_same_numbers(fake_file, tmp_path):
    first = NB201Benchmark.from_file(fake_file)
    cached = list((tmp_path / "cache" / "stablenas" / "nb201").glob("*.json"))
    assert len(cached) == 1
    fake_file.write_bytes(fake_file.read_bytes())  # same size: the cache is used
    again = NB201Benchmark.from_file(fake_file)
    assert again.archs == json.loads(json.dumps(first.archs))


def test_bad_files_are_reported(tmp_path):
    with pytest.raises(NB201FileError, match="does not exist"):
        NB201Benchmark.from_file(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"meta_archs": []}, bad)
    with pytest.raises(NB201FileError, match="missing top-level keys"):
        NB201Benchmark.from_file(bad, cache=False)
    with pytest.raises(NB201FileError, match="hp must be"):
        extract({"meta_archs": [], "arch2infos": {}, "evaluated_indexes": []}, hp="90")


def _fake_search(space: str, dataset: str = "cifar10", nb201_file=None, lookup: bool = True):
    """What annotate_record reads from a Search: cfg.data.dataset, cfg.evaluation, space.name, log."""
    ev = SimpleNamespace(
        lookup=lookup, nb201_file=None if nb201_file is None else str(nb201_file), nb201_hp="200"
    )
    cfg = SimpleNamespace(data=SimpleNamespace(dataset=dataset), evaluation=ev)
    logs: list[str] = []
    return SimpleNamespace(cfg=cfg, space=SimpleNamespace(name=space), log=logs.append, logs=logs)


def test_annotate_record_cases(fake_file, monkeypatch):
    monkeypatch.delenv("STABLENAS_NB201_FILE", raising=False)
    rec = {"genotype": {"space": "nb201", "arch": A1}}
    search = _fake_search("nb201", "cifar100", fake_file)
    annotate_record(search, rec)
    assert rec["nb201_test_acc"] == pytest.approx({"cifar10": 0.70, "cifar100": 0.49, "ImageNet16-120": 0.29})
    assert rec["test_acc"] == pytest.approx(0.49)  # the search dataset's own benchmark number
    rec = {"genotype": {"space": "nb201", "arch": A1}}
    annotate_record(_fake_search("nb201", "fashion-mnist", fake_file), rec)
    assert "test_acc" not in rec and "nb201_test_acc" in rec
    # a cell the file does not hold: no numbers, one message
    rec = {"genotype": {"space": "nb201", "arch": "|avg_pool_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|"}}
    search = _fake_search("nb201", "cifar10", fake_file)
    annotate_record(search, rec)
    annotate_record(search, rec)
    assert "nb201_test_acc" not in rec and sum("not in the benchmark" in m for m in search.logs) == 1
    # no file: the message says how to get the numbers, or how to train instead
    search = _fake_search("nb201")
    annotate_record(search, rec)
    assert "nb201_test_acc" not in rec
    assert len(search.logs) == 1 and "nb201_file" in search.logs[0] and "stablenas train" in search.logs[0]
    # lookups switched off
    rec = {"genotype": {"space": "nb201", "arch": A1}}
    annotate_record(_fake_search("nb201", nb201_file=fake_file, lookup=False), rec)
    assert "nb201_test_acc" not in rec


def test_search_record_uses_a_covering_file(tmp_path, tiny_overrides, monkeypatch):
    """The loop hook end to end: a file holding the cell a search derives; its record is exact."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    nb201.get_benchmark.cache_clear()
    over = [*tiny_overrides, "space=nb201", "optim.epochs=1", "network.layers=1"]
    probe = Search(load_config("darts", over), None, log=lambda s: None).run()
    arch = probe.metrics[0]["genotype"]["arch"]
    raw = {
        "meta_archs": [arch],
        "evaluated_indexes": [0],
        "arch2infos": {0: {"full": _arch_results(0, arch, 80.0), "less": _arch_results(0, arch, 40.0)}},
    }
    path = tmp_path / "NAS-Bench-201-v1_0-e61699.pth"
    torch.save(raw, path)
    monkeypatch.setenv("STABLENAS_NB201_FILE", str(path))
    res = Search(load_config("darts", [*over, "data.dataset=digits"]), None, log=lambda s: None).run()
    assert res.metrics[0]["genotype"]["arch"] == arch  # same seed, same search
    assert res.metrics[0]["nb201_test_acc"] == pytest.approx(
        {"cifar10": 0.80, "cifar100": 0.59, "ImageNet16-120": 0.39}
    )


# ---------------------------------------------------------------------------------------------
# the reduction block on every input side


def test_reduction_block_even_sides_are_the_benchmark_block():
    """On even sides the shortcut pool is the NB201 code's floor-mode AvgPool2d(2, 2): the block's output
    is bit-identical with that pool swapped in."""
    import copy

    from stablenas.spaces.ops import ResNetBasicBlock

    torch.manual_seed(0)
    block = ResNetBasicBlock(4, 8, 2).eval()
    floor = copy.deepcopy(block)
    floor.downsample[0] = torch.nn.AvgPool2d(2, stride=2, padding=0)
    for side in (4, 8, 16, 32):
        x = torch.randn(2, 4, side, side)
        assert torch.equal(block(x), floor(x))


def test_reduction_block_odd_side_by_hand():
    """7x7 -> 4x4 on both paths; the shortcut's last row and column average the pixels they have."""
    from stablenas.spaces.ops import ResNetBasicBlock

    block = ResNetBasicBlock(1, 2, 2).eval()
    x = torch.randn(1, 1, 7, 7)
    assert block(x).shape == (1, 2, 4, 4)
    pooled = block.downsample[0](x)
    want = torch.tensor([[x[0, 0, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean() for j in range(4)] for i in range(4)])
    torch.testing.assert_close(pooled[0, 0], want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("side", [7, 14])
def test_supernet_and_plain_reference_on_odd_sides(side):
    """The NB201 supernet and its plain reference on sides that turn odd after a reduction (14 -> 7 -> 4):
    the same loss and gradients."""
    import torch.nn.functional as F

    from stablenas.spaces.catalog import get_space
    from stablenas.supernet import network as N
    from stablenas.supernet.arch import ArchParams
    from stablenas.supernet.reference import build_plain

    torch.manual_seed(0)
    sp = get_space("nb201")
    fast = N.build_supernet(sp, C=4, layers=1, in_channels=1)
    plain = build_plain(sp, C=4, layers=1, in_channels=1)
    plain.load_state_dict(fast.state_dict())
    arch = ArchParams(sp, init_scale=1.0, generator=torch.Generator().manual_seed(0))
    x, y = torch.randn(3, 1, side, side), torch.randint(0, 10, (3,))
    out = []
    for net in (fast, plain):
        loss = F.cross_entropy(net(x, arch.op_weights()), y)
        out.append((loss.detach(), torch.autograd.grad(loss, [*net.parameters(), *arch.parameters()])))
    (lf, gf), (lp, gp) = out
    torch.testing.assert_close(lf, lp, rtol=1e-5, atol=1e-6)
    for a, b in zip(gf, gp):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_search_and_train_on_fashion_mnist_14(tmp_path, capsys):
    """End to end on the study's proxy (14x14: 14 -> 7 -> 4): a 1-epoch nb201 search, then its cell
    trained from scratch in the evaluation network, and counted by ``info`` at that input size."""
    from stablenas.cli import main

    def cli(argv):
        capsys.readouterr()
        try:
            main([str(a) for a in argv])
        except SystemExit as e:
            assert e.code in (0, None), capsys.readouterr().err
        return capsys.readouterr().out

    run = tmp_path / "search"
    cli(["search", "darts", "--set", "space=nb201", "--set", "data.dataset=fashion-mnist-14", "--set",
         "data.subset=256", "--set", "data.batch_size=32", "--set", "network.layers=1", "--set", "network.channels=8",
         "--set", "optim.epochs=1", "--set", "search.steps_per_epoch=2", "--set", "search.val_batches=1",
         "--set", "threads=1", "--no-progress", "--out", run])
    g = Genotype.load(run / "genotype.json")
    assert g.space == "nb201" and g.arch
    cli(["train", run, "--epochs", "1", "--channels", "8", "--layers", "1", "--batch", "32", "--set",
         "steps_per_epoch=2", "--set", "subset=256", "--set", "evaluate_test=false", "--threads", "1",
         "--no-progress", "--out", tmp_path / "train"])
    res = json.loads((tmp_path / "train" / "result.json").read_text())
    assert res["epochs"] == 1 and res["params"] > 0
    out = cli(["info", g.arch, "--input-size", "1,14,14", "--channels", "8", "--layers", "1"])
    assert "input 1x14x14" in out and f"{res['params']:,}" in out
