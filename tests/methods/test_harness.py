"""The harness every field-baseline method passes, one parametrised case per method: a short search of
its preset on S3 and NB201 that writes its run directory, compositions with SDARTS-RS and PC-DARTS (and
a few more), resume bit-identical after SIGKILL (and in process where the method keeps state across
epochs), the ``stablenas methods`` listing and the 2-rank data-parallel equivalence (one gloo job for
all methods, one SIGKILL driver, one listing). Each method's mechanism is tested against an independent
computation in its own tests/methods/test_<name>.py."""

from __future__ import annotations

import json
import math
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from conftest import TINY_SEARCH, assert_same_search
from support import ddp_worker
from support.ddp import assert_case_agrees, shared_job
from support.faults import FAULT_TINY, cut  # noqa: F401 (the SIGKILL driver fixture: one driver for the module)
from typer.testing import CliRunner

import stablenas as sn
from stablenas.cli import app
from stablenas.methods._common import genotype_of
from stablenas.methods.darts_pt import n_decisions
from stablenas.methods.fair_darts import fair_genotype
from stablenas.registry import METHODS
from stablenas.search.loop import Search

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [*TINY_SEARCH, "search.val_batches=2"]
S3, NB201 = ["space=s3"], ["space=nb201", "network.layers=1"]
PC = ["network.partial_channels=4", "arch.edge_betas=true", "network.channels=16"]
ONCE = ["search.checkpoint_every=1", "threads=1", "evaluation.lookup=false"]  # the resume runs
# DARTS-PT: one step per epoch, one decision per epoch after 2 search epochs
PT = [*TINY_SEARCH, "search.val_batches=1", "data.eval_batch_size=16", "search.steps_per_epoch=1",
      "methods.0.proj_intv=1", "methods.0.val_batches=1"]
PT_NB201 = [*NB201, "methods.0.search_epochs=2", "optim.epochs=7"]  # 6 decisions
PT_S3 = [*S3, "methods.0.search_epochs=2", "optim.epochs=18"]  # 14 op + 3 node decisions


def make(preset: str, sets: list[str], out=None, resume: bool = False) -> Search:
    return Search(sn.load_config(preset, sets), out, resume=resume, progress=False, log=lambda m: None)


def method(s: Search, name: str):
    return next(m for m in s.methods if m.name == name)


def arch_finite(r) -> bool:
    return all(torch.isfinite(a.detach()).all() for a in r.search.arch.parameters())


def nothing(*_) -> None:
    pass


def _finite_alpha(r, _):
    assert arch_finite(r)


@dataclass
class Case:
    """One method's harness runs: the overrides of each and what its records must show beyond the
    common checks (files written, finite losses, the genotype saved)."""

    preset: str
    base: list[str]  # every preset / composition run starts from these
    spaces: dict[str, list[str]]  # the preset search on s3 and nb201
    ran: Callable = nothing  # (rows, result): the preset search's own checks
    epochs: Callable = lambda r: 2  # noqa: E731 (records the preset search writes)
    short: list[str] = field(default_factory=lambda: ["search.steps_per_epoch=2"])  # last, on every run
    composed: dict[str, list[str]] = field(default_factory=dict)
    composed_epochs: int = 2
    before_composed: Callable = nothing  # (search, id) before the composed run
    after_composed: Callable = nothing  # (result, id)
    resume: list[str] = field(default_factory=list)  # the whole override list of the resume runs
    cut_at: int = 4  # the global step the SIGKILL lands on
    in_process: bool = False  # also resumed from an in-process checkpoint at the end of epoch 0
    resumed: Callable = nothing  # (reference, resumed result)
    listed: Callable = nothing  # (the preset's config)


def _beta_ran(rows, r):
    assert [x["beta_lambda"] for x in rows] == [0.0, 0.5]


def _beta_composed(r, _):
    assert arch_finite(r) and r.metrics[-1]["beta_lambda"] == 2.5


def _budget_ran(rows, r):
    assert all(x["budget_expected_madds_M"] > 0.05 for x in rows)  # over the budget: the penalty was on


def _budget_composed(r, _):
    assert arch_finite(r) and math.isfinite(r.metrics[-1]["budget_expected_madds_M"])


def _minus_ran(rows, r):
    assert [x["skip_beta"] for x in rows] == [1.0, 0.5]


def _minus_composed(r, _):
    assert arch_finite(r) and [x["skip_beta"] for x in r.metrics] == [1.0, 0.5]


def _drnas_before(s, _):
    s.start_epoch(0)
    for t in s.mix("weights").op.values():  # the draw, perturbed, lands back on the simplex
        assert torch.all(t >= 0)
        torch.testing.assert_close(t.sum(-1), torch.ones(t.shape[0]), rtol=0, atol=1e-5)


def _drnas_listed(cfg):
    assert [m.name for m in cfg.methods] == ["drnas"] and cfg.arch.activation == "dirichlet"
    assert cfg.optim.arch_weight_decay == 0.0


def _fair_ran(rows, r):
    assert all(-0.25 <= x["fair_zero_one"] <= 0 and 0 <= x["fair_above_threshold"] <= 1 for x in rows)
    assert r.genotype == fair_genotype(r.search.space, r.search.arch.op_weights())


def _lambda_ran(rows, r):
    assert [x["lambda"] for x in rows] == [0.0, 0.125]


def _oles_ran(rows, r):
    assert rows[-1]["oles_ops"] == len(method(r.search, "oles").units) > 0
    assert 0 <= rows[-1]["oles_frozen"] <= rows[-1]["oles_ops"]


def _oles_resumed(ref, res):
    assert 0 < ref.metrics[0]["oles_frozen"] or 0 < ref.metrics[1]["oles_frozen"]
    assert method(res.search, "oles").frozen.tolist() == method(ref.search, "oles").frozen.tolist()


def _snas_listed(cfg):
    assert [m.name for m in cfg.methods] == ["snas"] and cfg.search.update == "single"


def _pt_ran(rows, r):
    n = n_decisions(r.search.space)
    assert [x["darts_pt"]["decision"] for x in rows[1:]] == list(range(1, n + 1))
    m = method(r.search, "darts-pt")
    assert r.genotype == genotype_of(r.search.space, m.hard()) and rows[-1]["genotype"] == r.genotype.to_dict()
    assert all(k >= 0 for ks in m.op_choice.values() for k in ks)


def _pt_before(s, _):
    m = method(s, "darts-pt")
    m.op_choice["cell"][0] = 1
    m._tables = None
    s.start_epoch(0)
    assert torch.equal(s.mix("weights").op["cell"][0], torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0]))  # not perturbed
    m.op_choice["cell"][0] = -1
    m._tables = None


def _pt_composed(r, id_):
    if id_ == "sdarts-rs":  # the radius ramps over the 2 search epochs, then tunes at its largest
        assert [x["epsilon"] for x in r.metrics] == pytest.approx([0.03, 0.165, 0.3, 0.3, 0.3, 0.3, 0.3])


def _pt_listed(cfg):
    assert [m.name for m in cfg.methods] == ["darts-pt"] and cfg.space == "darts"
    assert cfg.optim.epochs == 50 + (14 + 3 - 1) * 5


PT_TAIL = "{name: darts-pt, search_epochs: 2, proj_intv: 1, val_batches: 1}"
CASES = {
    "beta-darts": Case(
        "beta-darts", TINY, {"s3": S3, "nb201": NB201}, _beta_ran,
        composed={"sdarts-rs": [*S3, "methods=[{name: beta-darts, start: 2.0}, {name: sdarts-rs}]"],
                  "pc-darts": [*S3, "methods=[{name: pc-darts}, {name: beta-darts, start: 2.0}]", *PC]},
        after_composed=_beta_composed,
        resume=[*TINY, *S3, *ONCE, "optim.epochs=3", "methods.0.coef=20"]),  # cut mid epoch 2, lambda 0.2
    "budget": Case(
        "darts", [*TINY, "methods=[{name: budget, max_madds: 0.05}]"], {"s3": S3, "nb201": NB201}, _budget_ran,
        composed={"sdarts-rs": [*S3, "methods=[{name: budget, max_madds: 0.05}, {name: sdarts-rs}]"],
                  "pc-darts": [*S3, "methods=[{name: pc-darts}, {name: budget, max_madds: 0.05}]", *PC],
                  "fair-darts": [*S3, "methods=[{name: fair-darts}, {name: budget, max_madds: 0.05}]",
                                 "arch.activation=sigmoid"],
                  "beta-darts": [*S3, "methods=[{name: beta-darts, start: 1.0}, {name: budget, max_madds: 0.05}]"]},
        after_composed=_budget_composed,
        resume=[*TINY, *S3, *ONCE, "methods=[{name: budget, max_madds: 0.05, weight: 10.0}]"]),
    "darts-minus": Case(
        "darts-minus", TINY, {"s3": [*S3, "network.layers=3"], "nb201": NB201}, _minus_ran,  # s3: a reduction cell
        composed={"sdarts-rs": [*S3, "network.layers=3", "methods=[{name: darts-minus}, {name: sdarts-rs}]"],
                  "pc-darts": [*S3, "network.layers=3", "methods=[{name: pc-darts}, {name: darts-minus}]", *PC]},
        after_composed=_minus_composed,
        resume=[*TINY, *S3, "network.layers=3", *ONCE, "optim.epochs=3", "methods.0.ramp=step"]),
    "drnas": Case(
        "drnas", TINY, {"s3": S3, "nb201": NB201},
        composed={"sdarts-rs": [*S3, "methods=[{name: drnas}, {name: sdarts-rs}]"],
                  "pc-darts": [*S3, *PC, "methods=[{name: drnas, reg: kl}, {name: pc-darts}]"]},
        before_composed=_drnas_before,
        resume=[*FAULT_TINY, "search.checkpoint_every=1"], in_process=True, listed=_drnas_listed),
    "fair-darts": Case(
        "fair-darts", TINY, {"s3": S3, "nb201": NB201}, _fair_ran,
        composed={"sdarts-rs": [*S3, "methods=[{name: fair-darts}, {name: sdarts-rs}]"],  # RS projects onto the box
                  "pc-darts": [*S3, "methods=[{name: pc-darts}, {name: fair-darts}]", *PC]},
        after_composed=_finite_alpha,
        resume=[*TINY, *S3, *ONCE]),
    "lambda-darts": Case(
        "lambda-darts", TINY, {"s3": S3, "nb201": NB201}, _lambda_ran,
        composed={"sdarts-rs": [*S3, "methods=[{name: sdarts-rs}, {name: lambda-darts}]"],
                  "pc-darts": [*S3, "methods=[{name: pc-darts}, {name: lambda-darts}]", *PC]},
        resume=[*FAULT_TINY, "search.checkpoint_every=1", "methods.0.ramp=false"], in_process=True),
    "oles": Case(
        "oles", [*TINY, "methods.0.window=2"], {"s3": S3, "nb201": NB201}, _oles_ran,
        composed={"sdarts-rs": [*S3, "methods=[{name: oles, window: 2}, {name: sdarts-rs}]"],
                  "pc-darts": [*S3, "methods=[{name: pc-darts}, {name: oles, window: 2}]", *PC],
                  "gdas": [*S3, "methods=[{name: gdas}, {name: oles, window: 2}]"]},  # steps without a gradient
        after_composed=_finite_alpha,
        resume=[*FAULT_TINY, "methods.0.window=2", "search.checkpoint_every=1"],
        cut_at=3, resumed=_oles_resumed),  # mid window, first step of epoch 2
    "snas": Case(
        "snas", TINY, {"s3": S3, "nb201": NB201},
        composed={"sdarts-rs": [*S3, "methods=[{name: snas}, {name: sdarts-rs}]"],
                  "pc-darts": [*S3, *PC, "methods=[{name: snas}, {name: pc-darts}]"]},
        resume=[*FAULT_TINY, "search.checkpoint_every=1"], in_process=True, listed=_snas_listed),
    "darts-pt": Case(
        "darts-pt", PT, {"s3": PT_S3, "nb201": PT_NB201}, _pt_ran, lambda r: 2 + n_decisions(r.search.space) - 1,
        composed={"sdarts-rs": [*PT_NB201, f"methods=[{{name: sdarts-rs}}, {PT_TAIL}]"],
                  "pc-darts": [*PT_NB201, "network.channels=16", "network.partial_channels=4",
                               "arch.edge_betas=true", f"methods=[{{name: pc-darts}}, {PT_TAIL}]"]},
        short=[], composed_epochs=7, before_composed=_pt_before, after_composed=_pt_composed,
        resume=[*FAULT_TINY, *NB201, "methods.0.search_epochs=1", "methods.0.proj_intv=1", "methods.0.val_batches=1",
                "optim.epochs=6", "search.checkpoint_every=1", "data.eval_batch_size=16"],
        cut_at=8, listed=_pt_listed),  # mid selection
}
NAMES = list(CASES)
COMPOSED = [(n, c) for n in NAMES for c in CASES[n].composed]


@pytest.mark.parametrize("space", ["s3", "nb201"])
@pytest.mark.parametrize("name", NAMES)
def test_preset_search_writes_its_run(name, space, tmp_path):
    case = CASES[name]
    out = tmp_path / "run"
    r = make(case.preset, [*case.base, *case.spaces[space], *case.short], out=out).run()
    for f in ("config.yaml", "metrics.jsonl", "genotype.json", "checkpoint.pt"):
        assert (out / f).exists(), f
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == case.epochs(r) and all(math.isfinite(x["train_loss"]) for x in rows)
    assert sn.Genotype.load(out) == r.genotype
    case.ran(rows, r)


@pytest.mark.parametrize("name,other", COMPOSED, ids=[f"{n}+{c}" for n, c in COMPOSED])
def test_composes_with_other_methods(name, other):
    case = CASES[name]
    s = make(case.preset, [*case.base, *case.composed[other], *case.short])
    case.before_composed(s, other)
    r = s.run()
    assert len(r.metrics) == case.composed_epochs
    assert all(math.isfinite(x["train_loss"]) and math.isfinite(x["val_loss"]) for x in r.metrics)
    case.after_composed(r, other)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread):
    """An uninterrupted run of a method's resume config, once per method for both resume tests."""
    done: dict[str, tuple] = {}

    def get(name: str):
        if name not in done:
            d = tmp_path_factory.mktemp("ref") / name
            done[name] = make(CASES[name].preset, CASES[name].resume, out=d).run(), d
        return done[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_resume_after_sigkill_is_bit_identical(name, reference, tmp_path, cut):  # noqa: F811
    case = CASES[name]
    ref, ref_dir = reference(name)
    d = tmp_path / "cut"
    argv = ["search", case.preset, *[a for s in case.resume for a in ("--set", s)], "--no-progress", "--out", str(d)]
    code, stderr = cut(case.cut_at, signal.SIGKILL, argv, tmp_path / "stderr")
    assert code == -signal.SIGKILL, stderr
    res = make(case.preset, case.resume, out=d, resume=True).run()
    assert_same_search(ref, res, ref_dir, d)
    case.resumed(ref, res)


@pytest.mark.parametrize("name", [n for n in NAMES if CASES[n].in_process])
def test_resumed_search_ends_where_an_uninterrupted_one_does(name, reference, tmp_path):
    case = CASES[name]
    ref, ref_dir = reference(name)
    first = make(case.preset, case.resume, out=tmp_path / "r")
    first.start_epoch(0)
    first.train_epoch()
    first.end_epoch()
    first.close()
    res = make(case.preset, case.resume, out=tmp_path / "r", resume=True).run()
    assert_same_search(ref, res, ref_dir, tmp_path / "r")
    case.resumed(ref, res)


@pytest.fixture(scope="module")
def listing() -> str:
    return CliRunner().invoke(app, ["methods"]).output


@pytest.mark.parametrize("name", NAMES)
def test_methods_command_lists_it_with_its_preset(name, listing):
    cls = METHODS[name]
    line = next(x for x in listing.splitlines() if x.startswith(f"{name} "))
    assert (cls.preset in line.split()[1:] if cls.preset else "(no preset)" in line)
    assert cls.description[:30] in line
    if cls.preset:
        CASES[name].listed(sn.load_config(cls.preset))


DDP = [n for n in NAMES if n in ddp_worker.CASES]  # darts-pt: tests/methods/test_darts_pt.py (its decisions)


@pytest.fixture(scope="module")
def ddp_job(tmp_path_factory):
    """The results of a 2-rank job over every method's case (tests/support/ddp_worker.py); the one
    tests/core/test_distributed.py ran when the session has it."""
    return shared_job(tmp_path_factory, DDP)


@pytest.mark.parametrize("name", DDP)
def test_two_ranks_reduce_to_the_mean_of_shards_and_stay_in_lockstep(name, ddp_job):
    assert_case_agrees(ddp_job, name)
