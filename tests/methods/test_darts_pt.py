"""DARTS-PT: the op and node decisions against a hand computation on a supernet whose validation
score is a known function of the op weights (chosen so that argmax alpha disagrees), the decision
schedule and its config check, the one-hot projection in every phase, frozen alpha and the tuning
lr, the pinned genotype, the epoch schedules of composed methods, a sampler's discrete path, resume
mid-selection in process and the 2-rank equivalence of its decisions. Preset runs, compositions, resume
after SIGKILL and the listing: tests/methods/test_harness.py."""

import json
import math

import pytest
import torch
from conftest import TINY_SEARCH, assert_same_search, metric_records
from support.ddp import free_port

import stablenas as sn
from stablenas.errors import ConfigError
from stablenas.methods.darts_pt import DartsPT, n_decisions, sgas_scores
from stablenas.search.loop import Search
from stablenas.skeletons.darts.genotype import derive_darts

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [*TINY_SEARCH, "search.val_batches=1", "data.eval_batch_size=16", "search.steps_per_epoch=1",
        "methods.0.proj_intv=1", "methods.0.val_batches=1"]
NB201 = ["space=nb201", "network.layers=1", "methods.0.search_epochs=2", "optim.epochs=7"]  # 6 decisions
S3 = ["space=s3", "methods.0.search_epochs=2", "optim.epochs=18"]  # 14 op + 3 node decisions


def make(*extra, out=None):
    return Search(sn.load_config("darts-pt", TINY + list(extra)), out, progress=False, log=lambda s: None)


def method(s) -> DartsPT:
    return next(m for m in s.methods if isinstance(m, DartsPT))


def fake_evaluate(s, table):
    """Replace the supernet's validation pass by acc = sum_ct sum_(e,k) table[ct][e,k] * w[e,k] of the
    op weights it is handed (loss = 1 - acc): masking op k of edge e costs exactly table * w there."""
    seen = []

    def evaluate(loader=None, max_batches=None, mix=None, bn="eval"):
        seen.append((max_batches, bn))
        acc = sum(float((table[ct] * w.detach().cpu()).sum()) for ct, w in mix.op.items())
        return 1.0 - acc, acc

    s.evaluate = evaluate
    return seen


def decide_all(s):
    m = method(s)
    for epoch in range(s.cfg.optim.epochs):
        s.epoch = epoch
        m.on_epoch_end(s, epoch, {})


# ----------------------------------------------------------------------------------------------
# the decisions


@pytest.mark.parametrize("criterion", ["acc", "loss"])
def test_op_decision_keeps_the_op_whose_masking_hurts_most_not_argmax_alpha(criterion):
    s = make(*NB201, f"methods.0.criterion={criterion}")
    torch.manual_seed(0)
    with torch.no_grad():
        s.arch.alphas["cell"].copy_(torch.randn(6, 5))
    w = s.arch.op_weights()["cell"].detach().cpu()
    table = torch.rand(6, 5)
    table[torch.arange(6), w.argmax(-1)] = 0.0  # masking alpha's favourite costs nothing
    fake_evaluate(s, {"cell": table})
    m = method(s)
    s.epoch = 1
    m.on_epoch_end(s, 1, rec := {})
    e = rec["darts_pt"]["cell"]["edge"]
    cost = table[e] * w[e]
    # acc: lowest accuracy after masking = largest cost; loss (= 1 - acc): highest loss, the same op
    want = int(cost.argmax())
    assert m.op_choice["cell"][e] == want != int(w[e].argmax())
    assert rec["darts_pt"]["cell"]["op"] == s.space.edge_ops["cell"][e][want]
    base = float((table * w).sum())
    scores = rec["darts_pt"]["cell"][criterion]
    ref = [base - float(c) if criterion == "acc" else 1 - base + float(c) for c in cost]
    assert scores == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("criterion", ["acc", "loss"])
def test_a_score_is_the_validation_pass_with_that_op_or_edge_zeroed(criterion):
    """Batch statistics (the authors' train-mode infer), BN running statistics left untouched."""
    from stablenas.supernet.mix import Mix

    s = make(*NB201, f"methods.0.criterion={criterion}")
    m = method(s)
    buffers = [b.clone() for b in s.net.buffers()]
    for e, k in [(3, 2), (1, None)]:
        w = s.arch.op_weights()["cell"].detach().clone()
        w[e, slice(None) if k is None else k] = 0.0
        loss, acc = s.evaluate(max_batches=1, mix=Mix({"cell": w}), bn="train")
        assert m.score(s, "cell", (e, k)) == (acc if criterion == "acc" else -loss)
    assert all(torch.equal(a, b) for a, b in zip(buffers, s.net.buffers()))


def test_the_whole_selection_gives_the_hand_computed_genotype_on_the_darts_skeleton():
    """Every op (none excluded on DARTS) and every node's two inputs from the score table, against
    a hand computation; alpha's own discretisation picks differently."""
    s = make(*S3, "methods.0.edge_decision=random")
    torch.manual_seed(1)
    with torch.no_grad():
        for a in s.arch.alphas.values():
            a.copy_(torch.randn_like(a) * 2)
    w = {ct: t.detach().cpu() for ct, t in s.arch.op_weights().items()}
    table = {ct: torch.rand(14, 3) for ct in w}
    fake_evaluate(s, table)
    decide_all(s)
    m = method(s)
    space = s.space
    want = {}
    for ct in w:
        ops = [1 + int((table[ct][e, 1:] * w[ct][e, 1:]).argmax()) for e in range(14)]  # `none` (0) excluded
        hard = []
        for node in range(space.n_nodes):
            edges = list(space.node_edges(node))
            cost = {e: float(table[ct][e, ops[e]]) for e in edges}  # a decided edge weighs one-hot 1
            keep = sorted(sorted(edges, key=lambda e: -cost[e])[:2])
            hard += [ops[e] if e in keep else -1 for e in edges]
        want[ct] = hard
        assert m.hard()[ct] == hard
    g = sn.methods._common.genotype_of(space, want)
    assert s.final_genotype == g and s.stop_reason is None  # optim.epochs exactly fits: no early stop
    assert g != derive_darts(space, w)


def test_node_decision_ranks_single_edge_removals_ties_to_the_earlier_edge():
    s = make(*S3)
    m = method(s)
    for ct in m.op_choice:
        m.op_choice[ct] = [1] * 14  # every op decided: skip_connect
    m._tables = None
    table = {ct: torch.zeros(14, 3) for ct in m.op_choice}
    table["normal"][9:14, 1] = torch.tensor([0.3, 0.5, 0.3, 0.1, 0.3])  # node 3: edges 9..13
    fake_evaluate(s, table)
    m.nodes_done = {"normal": [0, 1, 2], "reduce": [0, 1, 2]}  # node 3 is the one left
    out = m.decide_node(s, "normal")
    assert out["node"] == 3 and out["inputs"] == [9, 10]  # 0.5, then the earlier of the 0.3 ties
    assert [m.dropped["normal"][e] for e in range(9, 14)] == [False, False, True, True, True]
    mix = s.mix("weights")
    assert torch.all(mix.op["normal"][11:14] == 0)


def test_sgas_order_takes_the_most_certain_important_edge():
    w = torch.tensor([[0.0, 0.5, 0.5], [0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    valid = torch.tensor([[False, True, True]] * 3)
    sc = sgas_scores(w, valid)
    ent = lambda p: -(p * p.clamp_min(1e-30).log()).sum()  # noqa: E731
    hand = [1.0 * (1 - ent(torch.tensor([0.5, 0.5])) / math.log(2)), 0.9 * 1.0,
            0.2 * (1 - ent(torch.tensor([0.5, 0.5])) / math.log(2))]
    torch.testing.assert_close(sc, torch.tensor(hand), rtol=1e-5, atol=1e-6)
    s = make(*NB201, "methods.0.edge_decision=sgas")
    with torch.no_grad():
        s.arch.alphas["cell"].zero_()
        s.arch.alphas["cell"][4, 2] = 5.0  # edge 4: confident
    fake_evaluate(s, {"cell": torch.ones(6, 5)})
    method(s).on_epoch_end(s, 1, rec := {})
    assert rec["darts_pt"]["cell"]["edge"] == 4


# ----------------------------------------------------------------------------------------------
# schedule, projection, alpha, lr


def test_decision_schedule_and_the_epochs_it_needs():
    s = make("space=nb201", "network.layers=1", "methods.0.search_epochs=3", "methods.0.proj_intv=2",
             "optim.epochs=13")
    m = method(s)
    assert n_decisions(s.space) == 6
    assert [e for e in range(13) if m.decision_at(e) is not None] == [2, 4, 6, 8, 10, 12]
    assert [m.decision_at(e) for e in (2, 12)] == [0, 5]
    with pytest.raises(ConfigError, match=r"darts-pt needs optim.epochs >= 13 .*got 12"):
        make("space=nb201", "network.layers=1", "methods.0.search_epochs=3", "methods.0.proj_intv=2",
             "optim.epochs=12")
    with pytest.raises(ConfigError, match=r"needs optim.epochs >= 18 on space s3"):
        make("space=s3", "methods.0.search_epochs=2", "optim.epochs=17")
    with pytest.raises(ConfigError, match=r"darts-pt must come after every method that edits op weights \(sdarts-rs"):
        make(*NB201, "methods=[{name: darts-pt, search_epochs: 2, proj_intv: 1}, {name: sdarts-rs}]")
    # a measurement after it edits nothing (a study's lambda_max tracker is appended to every unit's methods)
    assert [m.name for m in make(*NB201, "methods=[{name: darts-pt, search_epochs: 2, proj_intv: 1}, {name: hessian}]",
                                 "optim.epochs=8").methods] == ["darts-pt", "hessian"]
    with pytest.raises(ConfigError, match=r"method darts-pt needs perturbation selection, which the rnn skeleton "
                                          r"does not have .*spaces with it: darts, .*nb201"):
        sn.load_config("ptb-cpu", ["methods=[{name: darts-pt, search_epochs: 1, proj_intv: 1}]"])


RAMPS = {  # name, options, the value it ramps, hand-computed per epoch for 3 search epochs, then held
    "snas": ({}, lambda s, m: m.tau, [0.03 + 0.97 * 2 / 3, 0.03 + 0.97 / 3, 0.03]),  # 1 - (e + 1) / 3
    "beta-darts": ({"ramp_epochs": None}, lambda s, m: m.coefficient(s), [0.0, 50 / 3, 100 / 3, 50.0]),  # 50 e / 3
    "gdas": ({}, lambda s, m: m.tau, [10.0, 5.05, 0.1]),  # 10 - 9.9 e / 2
    "lambda-darts": ({}, lambda s, m: m.strength, [0.0, 0.0625, 0.125]),  # 0.125 e / 2
    "darts-minus": ({}, lambda s, m: m.beta(s), [1.0, 2 / 3, 1 / 3, 0.0]),  # 1 - e / 3
}


@pytest.mark.parametrize("name", list(RAMPS))
def test_composed_epoch_schedules_span_the_search_epochs_then_hold_their_end(name):
    """3 search epochs, then 5 of selection: a schedule reaches the value a 3-epoch search gives
    its last epoch (its end value where the schedule ends there) and holds its end through selection."""
    opts, value, ramp = RAMPS[name]
    entry = ", ".join(f"{k}: {'null' if v is None else v}" for k, v in {"name": name, **opts}.items())
    s = make("space=nb201", "network.layers=2", "optim.epochs=8", "regularization.drop_path_max=0.3",
             f"methods=[{{{entry}}}, {{name: darts-pt, search_epochs: 3, proj_intv: 1, val_batches: 1}}]")
    m = s.methods[0]
    got, drop = [], []
    for e in range(8):
        s.start_epoch(e)
        got.append(value(s, m))
        drop.append(s.net.drop_path_prob)
    assert got == pytest.approx(ramp + [ramp[-1]] * (8 - len(ramp)), rel=1e-12)
    assert drop == pytest.approx([0.0, 0.1, 0.2] + [0.3] * 5, rel=1e-12)  # 0.3 e / 3, held


def test_decided_edges_are_one_hot_in_every_phase_and_pass_no_gradient_to_alpha():
    s = make(*NB201)
    m = method(s)
    m.op_choice["cell"][2] = 3
    m._tables = None
    for phase in ("weights", "arch", "eval"):
        w = s.mix(phase).op["cell"]
        assert torch.equal(w[2], torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0]))
        torch.testing.assert_close(w[[0, 1, 3, 4, 5]], s.arch.op_weights()["cell"][[0, 1, 3, 4, 5]])
    x, y = next(iter(s.train_loader))
    (g,) = torch.autograd.grad(s.loss(x, y, s.mix("arch")), [s.arch.alphas["cell"]])
    assert torch.all(g[2] == 0) and torch.all(g[[0, 1, 3, 4, 5]].abs().sum(-1) > 0)


@pytest.mark.parametrize("freeze", [True, False])
def test_selection_tunes_at_the_restart_lr_with_alpha_frozen_or_trained(freeze):
    r = make(*NB201, f"methods.0.freeze_alpha={str(freeze).lower()}").run()
    recs = r.metrics
    o = r.config.optim
    S, T = 2, 1 * (6 - 1) + 1  # search epochs; the authors' tune_epochs
    cos = lambda hi, lo, e, n: lo + (hi - lo) * (1 + math.cos(math.pi * e / n)) / 2  # noqa: E731
    lrs = [cos(o.lr, o.lr_min, e, S) for e in range(S)] + [cos(0.1 * o.lr, o.lr_min, j, T) for j in range(5)]
    assert [x["lr"] for x in recs] == pytest.approx(lrs, rel=1e-9)
    assert [x["alpha_frozen"] for x in recs] == [False] * S + [freeze] * 5
    w = [torch.tensor(x["op_weights"]["cell"]) for x in recs]
    assert all(torch.equal(w[S - 1], v) for v in w[S:]) == freeze  # the authors train alpha on


def test_the_first_tuning_epoch_restarts_momentum():
    s = make(*NB201)
    for e in range(2):
        s.start_epoch(e)
        s.train_epoch()
        s.end_epoch()
    assert s.w_optimizer.state  # momentum buffers of the search
    s.start_epoch(2)
    assert not s.w_optimizer.state and s.lr == pytest.approx(0.1 * s.cfg.optim.lr)


# ----------------------------------------------------------------------------------------------
# runs: early stop, a sampler's discrete path, resume mid-selection


def test_stops_after_the_last_decision_when_epochs_remain():
    r = make(*NB201[:-1], "optim.epochs=9").run()
    assert len(r.metrics) == 7 and r.search.stop_reason.startswith("darts-pt")


def test_a_samplers_discrete_path_takes_the_decisions():
    s = make(*NB201, "methods=[{name: gdas}, {name: darts-pt, search_epochs: 2, proj_intv: 1, val_batches: 1}]")
    m = method(s)
    m.op_choice["cell"][1] = 2
    m._tables = None
    s.start_epoch(0)
    mix = s.mix("weights")
    assert mix.hard["cell"][1] == 2 and torch.equal(mix.op["cell"][1], torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]))
    m.op_choice["cell"][1] = -1
    m._tables = None
    r = s.run()
    assert len(r.metrics) == 7 and r.genotype == sn.methods._common.genotype_of(s.space, m.hard())


def test_resumed_mid_selection_ends_where_an_uninterrupted_one_does(tmp_path):
    extra = [*NB201, "search.checkpoint_every=1", "evaluation.lookup=false"]
    a = make(*extra, out=tmp_path / "a").run()
    first = make(*extra, out=tmp_path / "b")
    for e in range(4):  # two search epochs, two decisions
        first.start_epoch(e)
        first.train_epoch()
        first.end_epoch()
    first.close()
    b = Search(first.cfg, tmp_path / "b", resume=True, progress=False, log=lambda s: None).run()
    assert_same_search(a, b, tmp_path / "a", tmp_path / "b")
    assert metric_records(tmp_path / "a" / "metrics.jsonl") == metric_records(tmp_path / "b" / "metrics.jsonl")


# ----------------------------------------------------------------------------------------------
# data parallel: 2 ranks (gloo, 1 thread each)

DDP = ["data.dataset=digits", "data.subset=null", "data.batch_size=32", "data.eval_batch_size=32",
       "network.channels=8", "network.layers=1", "network.stem_multiplier=2", "search.steps_per_epoch=3",
       "search.val_batches=2", "network.channels_last=false", "space=nb201", "methods.0.search_epochs=1",
       "methods.0.proj_intv=1", "methods.0.val_batches=2", "optim.epochs=6", "threads=1"]


def _ddp_rank(rank: int, world: int, port: int, out: str) -> None:
    """After two decisions (evaluations summed over the ranks' shards), the reduced gradients of one
    step equal a one-process mean over the shards (tests/support/ddp_worker.py's harness), and both ranks
    hold the same decisions, alpha and weights after K more steps."""
    import copy
    import os

    from support import ddp_worker as w

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from stablenas import distributed as dist

    dist.setup("cpu")
    try:
        s = Search(sn.load_config("darts-pt", DDP), None, progress=False, log=lambda m: None)
        m = method(s)
        for e in (0, 1):  # the decisions at the ends of epochs 0 and 1
            s.epoch = e
            m.on_epoch_end(s, e, {})
        s.start_epoch(1)
        snap = copy.deepcopy(s.state_dict(snapshot=True))
        reduced = w._measure(s, s.train_loader.batch(0, 0), s.val_stream.loader.batch(0, 0))
        res: dict = {"hard": m.hard()}
        if rank == 0:
            with dist.local():
                s.load_state_dict(copy.deepcopy(snap))
                tb = [w._shard_batch(s.train_loader, r, world) for r in range(world)]
                vb = [w._shard_batch(s.val_stream.loader, r, world) for r in range(world)]
                sk, s.skeleton = s.skeleton, w._Shards(s.skeleton)
                try:
                    ref = w._measure(s, ([b[0] for b in tb], [b[1] for b in tb]),
                                     ([b[0] for b in vb], [b[1] for b in vb]))
                finally:
                    s.skeleton = sk
            res["keys_same"] = set(ref) == set(reduced)
            res["rel_err"] = max(float((reduced[k].double() - ref[k].double()).abs().max())
                                 / (float(ref[k].double().abs().max()) or 1.0) for k in ref)
            res["decided_grad_zero"] = bool(torch.all(reduced["alpha_grad.0"][
                [e for e, k in enumerate(m.hard()["cell"]) if k >= 0]] == 0))
        s.load_state_dict(copy.deepcopy(snap))
        dist.barrier()
        it = iter(s.train_loader)
        for _ in range(3):
            s.step(next(it))
        state = torch.cat([s.arch.flat().detach(), *[p.detach().flatten() for p in s.net.parameters()]])
        gathered = [torch.empty_like(state) for _ in range(world)]
        import torch.distributed as td

        td.all_gather(gathered, state)
        hards = [None] * world
        td.all_gather_object(hards, res["hard"])
        res["same_on_ranks"] = all(torch.equal(g, gathered[0]) for g in gathered) and all(h == hards[0] for h in hards)
        if rank == 0:
            with open(out, "w") as f:
                json.dump(res, f)
        dist.barrier()
    finally:
        dist.shutdown()


def test_two_ranks_decide_alike_and_reduce_to_the_mean_of_shards(tmp_path):
    out = tmp_path / "res.json"
    torch.multiprocessing.spawn(_ddp_rank, args=(2, free_port(), str(out)), nprocs=2, join=True)
    r = json.loads(out.read_text())
    assert r["keys_same"] and r["rel_err"] <= 1e-5, r
    assert sum(k >= 0 for k in r["hard"]["cell"]) == 2 and r["decided_grad_zero"]
    assert r["same_on_ranks"]
