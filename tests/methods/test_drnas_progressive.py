"""Progressive DrNAS (``methods.drnas`` with ``progressive: true``; ``supernet.reshape``): the pruning
against a hand ranking of alpha, the widened weights and momentum against the authors' net2wider
transfer (old channels kept, copies of drawn ones appended, one index along each depthwise-pointwise-BN
chain), the fused engine against the plain path on the reshaped supernet, a short search on the DARTS
and NB201 skeletons, resume across the stage change, and the config errors."""

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_SEARCH, assert_same_search

import stablenas as sn
from stablenas.errors import ConfigError, InterruptedRun
from stablenas.search.loop import Search
from stablenas.spaces.ops import DARTS_OPS, NB201_OPS
from stablenas.supernet.network import MixedOp, engine_options
from stablenas.supernet.reshape import widen

pytestmark = pytest.mark.usefixtures("one_thread")

# K 6 -> 4 needs channels divisible by both; one epoch per stage, alpha free from the first step
TINY = [*TINY_SEARCH, "network.channels=12", "search.val_batches=1", "search.steps_per_epoch=2",
        "optim.epochs=2", "methods.0.stages=[1, 1]", "methods.0.stage_warmup_epochs=0"]
NB201 = ["space=nb201", "network.layers=1", "network.channels=8", "network.partial_channels=4",
         "methods.0.partial_channels=[4, 2]", "methods.0.keep_ops=[3]", "evaluation.lookup=false"]


def make(*extra, out=None, resume=False):
    cfg = sn.load_config("drnas-progressive", [*TINY, *extra])
    return Search(cfg, out, resume=resume, progress=False, log=lambda s: None)


def drnas(search):
    return search.methods[0]


# ----------------------------------------------------------------------------------------------
# pruning


def test_the_stage_change_keeps_the_top_k_ops_per_edge_by_alpha_and_zeroes_the_rest():
    s = make()
    gen = torch.Generator().manual_seed(5)
    hand = {}
    with torch.no_grad():
        for ct, a in s.arch.alphas.items():
            a.copy_(torch.randn(a.shape, generator=gen))
            hand[ct] = a.clone()
    drnas(s).on_epoch_start(s, 1)  # the second stage's first epoch
    for ct, a in hand.items():
        n_ops = len(s.space.edge_ops[ct][0])
        for e in range(a.shape[0]):
            best = sorted(range(n_ops), key=lambda k: -float(a[e, k]))[:4]
            want = [k in best for k in range(a.shape[1])]
            assert s.arch.mask(ct)[e].tolist() == want, (ct, e)
            kept = torch.tensor(want)
            assert torch.equal(s.arch.alphas[ct][e][kept], a[e][kept])  # the kept alphas untouched
            assert torch.all(s.arch.alphas[ct][e][~kept] == 0)  # the authors' prune zeroes the others
        w = s.mix("weights").op[ct]  # a Dirichlet draw: exactly 0 off the kept ops
        assert torch.all(w[~s.arch.mask(ct)] == 0) and torch.all(w[s.arch.mask(ct)] > 0)
    for cell in s.net.cells:
        m = s.arch.mask(cell.cell_type)
        for e, mixed in enumerate(cell.edges):
            assert mixed.active == [k for k in mixed.nonzero if m[e, k]]
    drnas(s).on_epoch_start(s, 1)  # a replay (resume) changes nothing
    assert all(int(s.arch.mask(ct).sum()) == 4 * s.space.n_edges for ct in s.arch.cell_types)


def test_pruned_ops_do_not_run_and_the_fused_engine_matches_the_plain_path():
    s = make()
    drnas(s).on_epoch_start(s, 1)
    s.net.eval()
    x = next(iter(s.train_loader))[0][:4]
    mix = s.mix("eval")
    with torch.no_grad():
        y = s.forward(x, mix)
        with engine_options(s.net, fused=False):
            y_plain = s.forward(x, mix)
        torch.testing.assert_close(y, y_plain, rtol=1e-4, atol=1e-5)
        for cell in s.net.cells:  # scramble every pruned op's weights: nothing changes
            m = s.arch.mask(cell.cell_type)
            for e, mixed in enumerate(cell.edges):
                for k, op in enumerate(mixed.ops):
                    if not m[e, k]:
                        for p in op.parameters():
                            p.normal_()
        assert torch.equal(s.forward(x, mix), y)


# ----------------------------------------------------------------------------------------------
# widening


def grown(new, old):
    """The index ``i`` with new[j] == old[i[j]] along dim 0, after checking that new starts with old."""
    n = old.shape[0]
    assert torch.equal(new[:n], old)
    out = []
    for j in range(new.shape[0]):
        hits = [i for i in range(n) if torch.equal(new[j], old[i])]
        assert hits, f"entry {j} is no copy of an old one"
        out.append(hits[0])
    return out


def conv_chain(new, old, ins=None):
    """A widened conv weight [out, in, kh, kw]: its input channels are the old ones picked by
    ``ins`` (found from the old output rows when None), its output rows old rows copied; returns
    (ins, outs)."""
    if ins is None:
        ins = grown(new[: old.shape[0]].transpose(0, 1), old.transpose(0, 1))
    return ins, grown(new, old[:, ins])


def bn_follows(new, old, prefix, index):
    for stat in ("running_mean", "running_var"):
        assert torch.equal(new[prefix + stat], old[prefix + stat][index]), prefix + stat


CASES = [("darts", [o for o in DARTS_OPS if o != "none"], 1), ("darts", [o for o in DARTS_OPS if o != "none"], 2),
         ("nb201", [o for o in NB201_OPS if o != "none"], 1)]


@pytest.mark.parametrize("space,ops,stride", CASES, ids=["darts-normal", "darts-reduce", "nb201"])
def test_widening_keeps_the_old_channels_and_appends_copies_along_each_chain(space, ops, stride):
    torch.manual_seed(0)
    C, k_old, k_new = 24, 6, 4  # 4 -> 6 channels through each op
    mixed = MixedOp(C, stride, ops, partial_k=k_old, pool_bn=space == "darts")
    for m in mixed.modules():  # distinct running statistics, so copies can be told apart
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    old = {n: t.clone() for n, t in mixed.state_dict().items()}
    widen(mixed, k_new, torch.Generator().manual_seed(1))
    new = mixed.state_dict()
    assert mixed.partial_k == k_new and set(new) == set(old)
    for n in new:  # every tensor 1.5x as wide (depthwise and pointwise weights in both dims), counters kept
        assert torch.equal(new[n], old[n]) if new[n].dim() == 0 else new[n].shape[0] == old[n].shape[0] * 3 // 2, n
    for i, name in enumerate(ops):
        p = f"ops.{i}."
        if name.startswith(("sep", "dil")):  # per block: ReLU, depthwise, pointwise, BN
            for b in (["0.", "1."] if name.startswith("sep") else [""]):
                dw = grown(new[p + b + "1.weight"], old[p + b + "1.weight"])
                _, outs = conv_chain(new[p + b + "2.weight"], old[p + b + "2.weight"], ins=dw)
                bn_follows(new, old, p + b + "3.", outs)
        elif name.startswith("nor_conv"):  # ReLU, conv, BN
            _, outs = conv_chain(new[p + "1.weight"], old[p + "1.weight"])
            bn_follows(new, old, p + "2.", outs)
        elif name == "skip_connect" and stride == 2:  # FactorizedReduce: each half of the BN follows its conv
            halves = []
            for h, conv in enumerate(("conv_1", "conv_2")):
                _, outs = conv_chain(new[p + conv + ".weight"], old[p + conv + ".weight"])
                halves += [h * 2 + o for o in outs]  # 2 old channels per half
            bn_follows(new, old, p + "bn.", halves)
        elif "pool" in name and space == "darts":
            grown(new[p + "1.running_mean"], old[p + "1.running_mean"])
    x = torch.randn(2, C, 6, 6)
    for fused in (True, False):
        with engine_options(mixed, fused=fused):
            assert mixed(x, torch.full((len(ops),), 1.0 / len(ops))).shape[1] == C


def test_the_widened_function_is_what_the_copied_weights_give():
    """net2wider without rescaling: a dil_conv on the widened slice of the input is the old
    depthwise-pointwise-BN arithmetic with the drawn copies of weights and statistics appended."""
    torch.manual_seed(0)
    C = 12
    mixed = MixedOp(C, 1, ["dil_conv_3x3"], partial_k=6)
    old = {n: t.clone() for n, t in mixed.state_dict().items()}
    widen(mixed, 4, torch.Generator().manual_seed(3))
    mixed.eval()
    x = torch.randn(2, C, 5, 5)
    dw = grown(mixed.state_dict()["ops.0.1.weight"], old["ops.0.1.weight"])
    _, outs = conv_chain(mixed.state_dict()["ops.0.2.weight"], old["ops.0.2.weight"], ins=dw)
    # by hand from the old tensors: depthwise with the old kernels of the drawn channels, then
    # the old pointwise rows and columns picked, then BN with the old statistics picked
    xa = F.relu(x[:, :3])
    h = F.conv2d(xa, old["ops.0.1.weight"][dw], padding=2, dilation=2, groups=3)
    z = F.conv2d(h, old["ops.0.2.weight"][outs][:, dw])
    z = (z - old["ops.0.3.running_mean"][outs].view(1, -1, 1, 1)) / torch.sqrt(
        old["ops.0.3.running_var"][outs].view(1, -1, 1, 1) + 1e-5)
    want = torch.cat([z, x[:, 3:]], dim=1).view(2, 4, 3, 5, 5).transpose(1, 2).reshape(2, C, 5, 5)  # shuffle
    with torch.no_grad():
        torch.testing.assert_close(mixed(x, torch.ones(1)), want, rtol=1e-5, atol=1e-6)


def test_momentum_is_widened_with_its_weight_and_the_schedules_go_on():
    s = make()
    s.start_epoch(0)
    s.train_epoch()
    s.end_epoch()
    params = dict(s.net.named_parameters())
    old = {n: (p.detach().clone(), s.w_optimizer.state[p]["momentum_buffer"].clone()) for n, p in params.items()}
    adam = {k: v.clone() for k, v in s.a_optimizer.state[s.arch.alphas["normal"]].items()}
    s.start_epoch(1)
    assert s.w_optimizer.param_groups[0]["params"] == list(s.net.parameters())
    widened = 0
    for n, p in s.net.named_parameters():
        w0, m0 = old[n]
        m = s.w_optimizer.state[p]["momentum_buffer"]
        if p.shape == w0.shape:
            assert torch.equal(p, w0) and torch.equal(m, m0), n
        elif n.endswith(".1.weight") and p.shape[1] == 1:  # a depthwise conv: rows copied
            assert torch.equal(m, m0[grown(p.detach(), w0)]), n
            widened += 1
    assert widened > 0
    for k, v in adam.items():  # alpha's optimiser goes on as it was (the authors' architect is kept)
        assert torch.equal(s.a_optimizer.state[s.arch.alphas["normal"]][k], v)
    assert s.lr == pytest.approx(0.05)  # the cosine over both stages, not restarted: 0.1 -> 0 over 2 epochs


@pytest.mark.parametrize("space", [[], NB201], ids=["darts", "nb201"])
def test_a_short_progressive_search_runs_both_stages(space, tmp_path):
    r = make(*space, out=tmp_path / "run").run()
    s = r.search
    assert [m["drnas_stage"] for m in r.metrics] == [1, 2]
    assert all(torch.isfinite(torch.tensor(m["train_loss"])) for m in r.metrics)
    keep = 4 if not space else 3
    k = 4 if not space else 2
    assert {m.partial_k for m in s.net.modules() if isinstance(m, MixedOp)} == {k}
    for ct in s.arch.cell_types:
        mask = s.arch.mask(ct)
        assert mask.sum(-1).tolist() == [keep] * s.space.n_edges
        assert torch.all(s.arch.op_weights()[ct][~mask] == 0)
    assert (tmp_path / "run" / "genotype.json").exists()
    assert s.engine.options.fused  # the fast engine ran


def test_resume_at_the_stage_change_is_bit_identical(tmp_path):
    ref = make(out=tmp_path / "ref").run()
    first = make(out=tmp_path / "r")
    first.start_epoch(0)
    first.train_epoch()
    first.end_epoch()  # the checkpoint: stage 1 done, not yet reshaped
    first.close()
    res = make(out=tmp_path / "r", resume=True).run()
    assert_same_search(ref, res, tmp_path / "ref", tmp_path / "r")


def test_resume_inside_the_second_stage_rebuilds_the_shape_and_is_bit_identical(tmp_path):
    ref = make(out=tmp_path / "ref").run()
    first = make(out=tmp_path / "r")
    first._signalled = lambda step=None: step == 3  # as a SIGINT after the second stage's first step
    with pytest.raises(InterruptedRun):
        first.run()
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert ck["partial_channels"] == 4 and ck["step_in_epoch"] == 1
    res = make(out=tmp_path / "r", resume=True)
    assert {m.partial_k for m in res.net.modules() if isinstance(m, MixedOp)} == {4}
    res = res.run()
    assert_same_search(ref, res, tmp_path / "ref", tmp_path / "r")


@pytest.mark.parametrize("sets,match", [
    (["methods.0.stages=[1, 2]"], "stages .* sum to optim.epochs"),
    (["methods.0.partial_channels=[6]"], "one K per stage"),
    (["methods.0.keep_ops=[]"], "one entry per later stage"),
    (["network.partial_channels=4"], "must be network.partial_channels"),
    (["methods.0.partial_channels=[6, 5]"], "must divide network.channels"),
    (["network.partial_channels=4", "methods.0.partial_channels=[4, 6]"], "not grow"),
    (["methods.0.keep_ops=[0]"], "keep_ops"),
], ids=["stages", "ks", "keeps", "first-k", "divide", "grow", "keep0"])
def test_bad_progressive_options_are_config_errors(sets, match):
    with pytest.raises(ConfigError, match=match):
        sn.load_config("drnas-progressive", [*TINY, *sets])


def test_the_recurrent_cell_is_refused():
    with pytest.raises(ConfigError, match="progressive: true needs partial channels"):
        sn.load_config("drnas", ["space=ptb", "data.dataset=ptb", "methods=[{name: drnas, progressive: true}]",
                                 "optim.epochs=50"])


@pytest.mark.parametrize("other", ["oles", "darts-ada"])
def test_a_method_that_holds_the_supernet_cannot_run_beside_the_reshape(other):
    """OLES's per-op units hold the ops' parameters, DARTS-ADA's rollback a snapshot of the tensors:
    neither can follow a widening, so the config is refused before anything is built."""
    drnas = "{name: drnas, progressive: true, stages: [1, 1], stage_warmup_epochs: 0}"
    with pytest.raises(ConfigError, match=f"reshapes the supernet between stages; {other} hold"):
        sn.load_config("drnas-progressive", [*TINY, f"methods=[{drnas}, {{name: {other}}}]"])
    sn.load_config("drnas-progressive", [*TINY, f"methods=[{drnas}, {{name: sdarts-rs}}]"])  # a composition that can
