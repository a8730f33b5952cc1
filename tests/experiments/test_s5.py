"""S5 ground truth: enumeration, table lookups and regret, and the per-epoch record of a search.

References: the size of S5 is 3^2 x 3^2 = 81 (robust-darts Sec. 3); regrets are checked against
hand-computed differences on a hand-made table.
"""

from __future__ import annotations

import json

import pytest
from support.s5 import fake_table

from stablenas.config import load_config
from stablenas.experiments import s5
from stablenas.genotype import Genotype
from stablenas.search.loop import Search
from stablenas.skeletons.darts import s5_table
from stablenas.skeletons.darts.s5_table import S5Table, canonical_key, enumerate_s5, regret
from stablenas.spaces.catalog import get_space

OPS = ("sep_conv_3x3", "skip_connect", "max_pool_3x3")


def test_enumeration_is_the_81_distinct_architectures():
    archs = enumerate_s5()
    assert len(archs) == 81 == get_space("s5").num_architectures() == 3**4
    assert len({canonical_key(g) for g in archs}) == 81
    assert len({g.to_json() for g in archs}) == 81
    for g in archs:
        g.validate()
        assert {op for op, _ in g.normal + g.reduce} <= set(OPS)
        assert [i for _, i in g.normal] == [0, 1] and g.normal_concat == (2,)
    # index formula of the docstring: ((a*3 + b)*3 + c)*3 + d
    a, b, c, d = 1, 0, 2, 1
    g = archs[((a * 3 + b) * 3 + c) * 3 + d]
    assert g.normal == ((OPS[a], 0), (OPS[b], 1)) and g.reduce == ((OPS[c], 0), (OPS[d], 1))
    with pytest.raises(ValueError, match="one-node"):
        enumerate_s5("s3")


def test_canonical_key_ignores_edge_order():
    g1 = Genotype(
        space="s5",
        normal=(("sep_conv_3x3", 0), ("skip_connect", 1)),
        normal_concat=(2,),
        reduce=(("max_pool_3x3", 1), ("sep_conv_3x3", 0)),
        reduce_concat=(2,),
    )
    g2 = Genotype(
        space="s5",
        normal=(("skip_connect", 1), ("sep_conv_3x3", 0)),
        normal_concat=(2,),
        reduce=(("sep_conv_3x3", 0), ("max_pool_3x3", 1)),
        reduce_concat=(2,),
    )
    assert canonical_key(g1) == canonical_key(g2)
    g3 = Genotype(
        space="s5",
        normal=(("skip_connect", 0), ("sep_conv_3x3", 1)),
        normal_concat=(2,),
        reduce=g1.reduce,
        reduce_concat=(2,),
    )
    assert canonical_key(g3) != canonical_key(g1)


def test_regret_on_a_hand_made_table(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(fake_table()))
    table = S5Table.load(path)
    archs = enumerate_s5()
    assert len(table) == 81 and table.covers()
    assert table.best_acc == pytest.approx(0.58)
    assert table.regret(archs[80]) == 0.0
    assert table.regret(archs[0]) == pytest.approx(0.08)
    assert table.regret(archs[30]) == pytest.approx(0.05)
    assert regret(archs[30], table=table) == pytest.approx(0.05)
    # the DARTS rule lists a node's strongest edge first: same architecture, same entry
    swapped = Genotype(
        space="s5",
        normal=archs[30].normal[::-1],
        normal_concat=(2,),
        reduce=archs[30].reduce[::-1],
        reduce_concat=(2,),
    )
    assert table.test_acc(swapped) == pytest.approx(0.53)
    s = table.summary()
    assert s["best"] == pytest.approx(0.58) and s["worst"] == pytest.approx(0.5)
    assert s["median"] == pytest.approx(0.54)
    partial = tmp_path / "p.json"
    partial.write_text(json.dumps(fake_table(n=80)))
    small = S5Table.load(partial)
    assert not small.covers()
    with pytest.raises(KeyError, match="not in the S5 table"):
        small.test_acc(archs[80])


@pytest.mark.parametrize("dataset", ["fashion-mnist", "fashion-mnist-14"])
def test_shipped_table_covers_all_81_when_present(dataset):
    table = s5_table.load_table(dataset)
    if table is None:
        pytest.skip(f"{s5_table.table_path(dataset)} not generated yet (`stablenas s5-table`)")
    assert len(table) == 81 and table.covers()
    accs = [e["test_acc"] for e in table.entries.values()]
    assert all(0.0 < a <= 1.0 for a in accs)
    assert table.meta["command"].startswith("stablenas s5-table")
    assert table.meta["protocol"]["dataset"] == dataset
    # the one S5-table protocol, only the dataset changed (cpu-collapse retrains S3/S2 cells with it too)
    proto = table.meta["protocol"]
    assert {k: proto[k] for k in s5.S5_PROTOCOL if k not in ("dataset", "threads")} == \
        {k: v for k, v in s5.S5_PROTOCOL.items() if k not in ("dataset", "threads")}
    for e in table.entries.values():
        assert e["params"] > 0 and e["seconds"] > 0


def test_search_on_s5_records_test_regret_per_epoch(tmp_path, monkeypatch, tiny_overrides):
    monkeypatch.setattr(s5_table, "RESOURCES", tmp_path)
    s5_table.forget_cached()
    (tmp_path / "s5_digits.json").write_text(json.dumps(fake_table("digits")))
    cfg = load_config("darts", [*tiny_overrides, "space=s5"])
    result = Search(cfg, None, log=lambda s: None).run()
    table = s5_table.load_table("digits")
    assert len(result.metrics) == 2
    for rec in result.metrics:
        g = Genotype.from_dict(rec["genotype"])
        assert rec["test_acc"] == table.test_acc(g)
        assert rec["test_regret"] == pytest.approx(table.best_acc - table.test_acc(g))


def test_lookup_off_or_without_table(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from stablenas.evaluate.lookup import annotate_record

    monkeypatch.setattr(s5_table, "RESOURCES", tmp_path)
    s5_table.forget_cached()
    logs: list[str] = []

    def search(lookup=True):
        cfg = SimpleNamespace(
            data=SimpleNamespace(dataset="digits"), evaluation=SimpleNamespace(lookup=lookup)
        )
        return SimpleNamespace(cfg=cfg, space=SimpleNamespace(name="s5"), log=logs.append)

    rec = {"genotype": enumerate_s5()[3].to_dict()}
    s = search()
    annotate_record(s, rec)
    annotate_record(s, rec)
    assert "test_regret" not in rec
    assert len(logs) == 1 and "no complete ground-truth table" in logs[0] and "s5-table" in logs[0]
    (tmp_path / "s5_digits.json").write_text(json.dumps(fake_table("digits", n=80)))  # incomplete
    s5_table.forget_cached()
    annotate_record(search(), rec)
    assert "test_regret" not in rec
    (tmp_path / "s5_digits.json").write_text(json.dumps(fake_table("digits")))
    s5_table.forget_cached()
    annotate_record(search(lookup=False), rec)
    assert "test_regret" not in rec
    annotate_record(search(), rec)
    assert rec["test_regret"] == pytest.approx(0.077)  # 0.58 - (0.5 + 3 / 1000)


def test_generate_table_assembles_and_resumes(tmp_path, monkeypatch):
    calls: list[tuple[int, int]] = []

    def fake_task(args):
        index, seed, protocol, run_dir = args
        calls.append((index, seed))
        from pathlib import Path

        r = {
            "test_acc": 0.6 + index / 1000 + seed / 10000,
            "test_loss": 1.0,
            "params": 100 + index,
            "macs": 7,
            "seconds": 1.5,
        }
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "result.json").write_text(json.dumps(r))
        return {"index": index, "seed": seed, "result": r}

    monkeypatch.setattr(s5, "_task", fake_task)
    out = tmp_path / "table.json"
    t = s5.generate_table(
        tmp_path / "work",
        out,
        overrides={"epochs": 2},
        repeat_archs=(0, 5),
        repeat_seeds=(1,),
        log=lambda s: None,
    )
    assert len(calls) == 81 + 2
    assert calls[:4] == [(0, 0), (0, 1), (5, 0), (5, 1)]  # repeats first
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(t))
    assert len(saved["architectures"]) == 81 and saved["protocol"]["epochs"] == 2
    assert saved["summary"]["best_index"] == 80
    assert saved["summary"]["best"] == pytest.approx(0.68)
    assert saved["repeats"][0]["std"] == pytest.approx(((0.0001**2) / 2) ** 0.5)
    assert "--set epochs=2" in saved["command"] and "--repeat-archs 0,5" in saved["command"]
    calls.clear()
    s5.generate_table(
        tmp_path / "work",
        out,
        overrides={"epochs": 2},
        repeat_archs=(0, 5),
        repeat_seeds=(1,),
        log=lambda s: None,
    )
    assert calls == []  # everything finished: nothing retrained
    with pytest.raises(ValueError, match="different protocol"):
        s5.generate_table(tmp_path / "work", out, overrides={"epochs": 3}, log=lambda s: None)


def test_generate_table_averages_seeds(tmp_path, monkeypatch):
    def fake_task(args):
        index, seed, protocol, run_dir = args
        r = {
            "test_acc": 0.6 + index / 1000 + seed / 10000,
            "test_loss": 1.0,
            "params": 1,
            "macs": 1,
            "seconds": 1.0,
        }
        return {"index": index, "seed": seed, "result": r}

    monkeypatch.setattr(s5, "_task", fake_task)
    t = s5.generate_table(
        tmp_path / "w", tmp_path / "t.json", seeds=(0, 1), repeat_archs=(), log=lambda s: None
    )
    e = t["architectures"][7]
    assert e["test_acc"] == pytest.approx(0.607 + 0.00005)
    assert e["test_acc_by_seed"] == {"0": pytest.approx(0.607), "1": pytest.approx(0.6071)}
    assert e["seconds"] == 2.0 and t["seeds"] == [0, 1]
    assert t["summary"]["seed_std_mean"] == pytest.approx(0.0001 / 2**0.5)
    assert "--seeds 0,1" in t["command"] and "--repeat-archs ''" in t["command"]
