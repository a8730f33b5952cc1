"""The stabilised search methods: each method's defining mechanic against an independent
computation, their composition, and a 2-epoch search of every method preset on tiny digits."""

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_SEARCH

import stablenas as sn
from stablenas.config import ConfigError
from stablenas.data import TensorLoader
from stablenas.methods import METHODS
from stablenas.methods._common import discrete_mix, sample_architecture
from stablenas.methods.gdas import GDAS
from stablenas.methods.idarts import IDARTSOptions, collect_grams, decorrelate_select
from stablenas.methods.ms_darts import MSDARTS, mean_shift_step, sample_losses
from stablenas.methods.rs_ws import RSWS
from stablenas.methods.sdarts_adv import ADVOptions, pgd_attack
from stablenas.methods.sdarts_rs import SDARTSRS
from stablenas.search.loop import Search
from stablenas.skeletons.darts.supernet import SearchCell
from stablenas.skeletons.nb201.supernet import NB201SearchCell
from stablenas.spaces.ops import OPS
from stablenas.supernet.network import MixedOp, engine_options

TINY = [*TINY_SEARCH, "search.val_batches=2"]
NB201 = ["space=nb201", "network.layers=1"]
# per-preset overrides that keep the expensive end-of-search parts tiny
SMALL = {"rs-ws": ["methods.0.samples=4", "methods.0.eval_batches=1", "methods.0.top_k=2"],
         "idarts": ["methods.0.images=64"], "sdarts-adv": ["methods.0.steps=2"],
         "pc-darts-adv": ["methods.1.steps=2"]}
MINE = ("sdarts-rs", "sdarts-adv", "ms-darts", "single-darts", "idarts", "pc-darts", "gdas", "rs-ws")
MY_PRESETS = sorted({METHODS[m].preset for m in MINE} | {"pc-darts-rs", "pc-darts-adv"})


# Tiny dispatch-bound nets: one intra-op thread is as fast on a quiet machine and does not collapse when the
# shared cores are oversubscribed (OpenMP barriers). Channels stay >= 8 (see conftest: oneDNN backward
# misbehaved on 4-channel supernets with one thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def make(preset, *extra):
    cfg = sn.load_config(preset, TINY + SMALL.get(preset, []) + list(extra))
    return Search(cfg, None, progress=False, log=lambda s: None)


def batch_of(s):
    s.start_epoch(0)
    return next(iter(s.train_loader))


def cells(net):
    return [c for c in net.modules() if isinstance(c, (SearchCell, NB201SearchCell))]


def method(s, cls):
    return next(m for m in s.methods if isinstance(m, cls))


def on_simplex(w, mask):
    assert torch.all(w >= 0) and torch.all(w[~mask] == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]), rtol=0, atol=1e-6)


def clip_renorm(w, mask):
    """SmoothDARTS's clip(), written out: clamp to [0, 1], renormalise over the valid ops."""
    w = w.clamp(0, 1) * mask
    return w / w.sum(-1, keepdim=True)


# ----------------------------------------------------------------------------------------------
# registry, presets, CLI


def test_every_method_has_a_loadable_preset_and_is_listed():
    from typer.testing import CliRunner

    from stablenas.cli import app

    out = CliRunner().invoke(app, ["methods"]).output
    expected = set(MINE)
    assert expected <= set(METHODS)
    for name in sorted(expected):
        cls = METHODS[name]
        assert cls.description and cls.preset
        cfg = sn.load_config(cls.preset)
        assert name in [m.name for m in cfg.methods]
        line = next(x for x in out.splitlines() if x.startswith(name + " "))
        assert cls.preset in line and cls.description[:30] in line


def test_unknown_method_option_is_one_clear_error():
    with pytest.raises(ConfigError, match="unknown option 'epsilon'.*epsilon_min"):
        sn.load_config("sdarts-rs", ["methods.0.epsilon=0.1"])


@pytest.mark.parametrize("preset,fix", [("single-darts", "search.update=first"),
                                        ("rs-ws", "search.update=first"),
                                        ("idarts", "search.discretizer=default"),
                                        ("pc-darts", "network.partial_channels=1")])
def test_methods_refuse_configs_that_would_silently_run_something_else(preset, fix):
    extra = ["arch.edge_betas=false"] if preset == "pc-darts" else []
    with pytest.raises(ConfigError, match=preset):
        make(preset, fix, *extra)


# ----------------------------------------------------------------------------------------------
# SDARTS-RS


def test_rs_perturbation_is_uniform_in_eps_then_projected_onto_the_simplex():
    s = make("sdarts-rs", "network.layers=3")
    m = method(s, SDARTSRS)
    batch = batch_of(s)  # (starts epoch 0, which sets eps to 0.03)
    m.epsilon = 0.3
    clean = {ct: w.detach() for ct, w in s.arch.op_weights().items()}
    torch.manual_seed(123)
    out = s.mix("weights", batch)
    torch.manual_seed(123)
    for ct in s.arch.cell_types:
        mask = s.arch.mask(ct)
        delta = (2 * torch.rand_like(clean[ct]) - 1) * 0.3 * mask
        assert delta.abs().max() <= 0.3
        torch.testing.assert_close(out.op[ct], clip_renorm(clean[ct] + delta, mask))
        on_simplex(out.op[ct], mask)
        assert (out.op[ct] - clean[ct]).abs().max() > 0.01  # it did perturb


def test_rs_epsilon_ramps_linearly_per_epoch():
    s = make("sdarts-rs", "optim.epochs=5")
    m = method(s, SDARTSRS)
    for e in range(5):
        s.start_epoch(e)
        assert m.epsilon == pytest.approx(0.03 + 0.27 * e / 5)


@pytest.mark.parametrize("name", ["sdarts-rs", "sdarts-adv", "ms-darts"])
def test_epsilon_ramp_per_step_and_off(name):
    from stablenas.methods import METHODS

    cls = METHODS[name]
    s = make(name, "optim.epochs=4", "methods.0.ramp=step")
    m = method(s, cls)
    lo, hi = m.opts.epsilon_min, m.opts.epsilon_max
    s.start_epoch(2)
    s.step_in_epoch = 1  # step 2 of epoch 3 of 4
    frac = (2 + 1 / s.steps_per_epoch) / 4
    assert s.steps_per_epoch > 1 and m.step_epsilon(s) == pytest.approx(lo + (hi - lo) * frac)
    assert m.epsilon == m.step_epsilon(s)  # what the epoch record reports
    off = make(name, "optim.epochs=4", "methods.0.ramp=off")
    m_off = method(off, cls)
    off.start_epoch(0)
    assert m_off.step_epsilon(off) == hi


def test_rs_weight_step_leaves_alpha_and_steps_at_the_perturbed_weights():
    plain = make("darts", "space=s3")
    rs = make("sdarts-rs", "space=s3")
    batch = batch_of(plain)
    batch_of(rs)
    alpha0 = {k: v.detach().clone() for k, v in rs.arch.alphas.items()}
    for k in alpha0:
        torch.testing.assert_close(alpha0[k], plain.arch.alphas[k].detach())
    torch.manual_seed(5)
    plain.weight_step(batch)
    torch.manual_seed(5)
    rs.weight_step(batch)
    for k, v in rs.arch.alphas.items():
        assert torch.equal(v.detach(), alpha0[k])
    diff = max((p - q).abs().max() for p, q in zip(plain.net.parameters(), rs.net.parameters()))
    assert diff > 1e-6  # same batch, same init: only the perturbation separates them


# ----------------------------------------------------------------------------------------------
# SDARTS-ADV


def _independent_pgd(s, x, y, clean, eps, steps, seed):
    """PGD written out from sdarts.txt eq. 4 and the SmoothDARTS attack, in eval mode."""
    torch.manual_seed(seed)
    masks = {ct: s.arch.mask(ct) for ct in clean}
    a = {ct: clip_renorm(clean[ct] + (2 * torch.rand_like(clean[ct]) - 1) * eps * masks[ct], masks[ct])
         for ct in clean}
    s.net.eval()
    for _ in range(steps):
        a = {ct: v.detach().requires_grad_(True) for ct, v in a.items()}
        loss = F.cross_entropy(s.net(x, a), y)
        g = torch.autograd.grad(loss, list(a.values()), allow_unused=True)
        a = {ct: clip_renorm(clean[ct] + (a[ct].detach() + (0 if gi is None else 2 * eps / steps * gi.sign())
                                          - clean[ct]).clamp(-eps, eps), masks[ct])
             for ct, gi in zip(a, g)}
    with torch.no_grad():
        loss = F.cross_entropy(s.net(x, a), y)
    s.net.train()
    return a, loss


def test_adv_attack_matches_pgd_written_out_raises_loss_and_stays_on_simplex():
    s = make("darts", "space=s3", "network.layers=3")  # pgd_attack needs only the search, not the method
    x, y = batch_of(s)
    for _ in range(2):  # some training so the loss depends on the op weights
        s.weight_step((x, y))
    # float64: signed-gradient steps must not hinge on float32 rounding of near-zero gradients
    s.net.double()
    s.arch.double()
    x = x.double()
    clean = {ct: w.detach() for ct, w in s.arch.op_weights().items()}
    opts = ADVOptions(keep_clean_if_weaker=False)
    torch.manual_seed(7)
    adv, l0, l1 = pgd_attack(s, clean, sn.Mix(clean), (x, y), 0.3, opts)
    ref, lref = _independent_pgd(s, x, y, clean, 0.3, 7, seed=7)
    for ct in clean:
        torch.testing.assert_close(adv[ct], ref[ct])
        on_simplex(adv[ct].float(), s.arch.mask(ct))
    torch.testing.assert_close(l1, lref)
    assert float(l1) > float(l0) + 1e-4  # the attack raises the training loss
    # and it is stronger than random smoothing of the same radius
    s.net.eval()
    with torch.no_grad():
        rs = []
        for seed in range(4):
            torch.manual_seed(seed)
            w = {ct: clip_renorm(clean[ct] + (2 * torch.rand_like(clean[ct]) - 1) * 0.3 * s.arch.mask(ct),
                                 s.arch.mask(ct)) for ct in clean}
            rs.append(float(F.cross_entropy(s.net(x, w), y)))
    s.net.train()
    assert float(l1) > max(rs)


def test_adv_keeps_clean_weights_when_the_attack_lowers_the_loss():
    s = make("sdarts-adv", "space=s3")
    x, y = batch_of(s)
    clean = {ct: w.detach() for ct, w in s.arch.op_weights().items()}
    opts = ADVOptions(step_size=1e-9, steps=1)  # essentially a random start only
    seen_clean = 0
    for seed in range(6):
        torch.manual_seed(seed)
        adv, l0, l1 = pgd_attack(s, clean, sn.Mix(clean), (x, y), 0.3, opts)
        assert float(l1) >= float(l0)
        if all(torch.equal(adv[ct], clean[ct]) for ct in clean):
            seen_clean += 1
    assert 0 < seen_clean < 6


# ----------------------------------------------------------------------------------------------
# MS-DARTS


def test_mean_shift_step_is_eq_11_by_hand():
    rng = np.random.default_rng(0)
    center = {"normal": rng.random((3, 2)), "reduce": rng.random((3, 2))}
    samples = {ct: c[None] + rng.uniform(-0.2, 0.2, (4, 3, 2)) for ct, c in center.items()}
    losses = np.array([2.3, 1.9, 2.8, 2.1])
    h = 0.7
    t = {k: {ct: torch.tensor(v[ct]) for ct in v} for k, v in (("c", center), ("s", samples))}
    for weighting in ("softmax", "linear"):
        for kernel in ("cell_type", "joint"):
            got = mean_shift_step(t["c"], t["s"], torch.tensor(losses), h, weighting, kernel)
            omega = np.exp(losses) / np.exp(losses).sum() if weighting == "softmax" else losses / losses.sum()
            d2 = {ct: np.array([((center[ct] - samples[ct][p]) ** 2).sum() for p in range(4)])
                  for ct in center}
            if kernel == "joint":
                d2 = {ct: d2["normal"] + d2["reduce"] for ct in center}
            for ct in center:
                G = np.exp(-0.5 * d2[ct] / h**2) / (h * math.sqrt(2 * math.pi))  # the constant cancels
                num = sum(omega[p] * G[p] * samples[ct][p] for p in range(4))
                np.testing.assert_allclose(got[ct].numpy(), num / (omega * G).sum(), rtol=1e-10)


@pytest.mark.parametrize("extra", [["space=s3", "network.channels_last=true", "network.layers=3"],
                                   ["space=s3", "network.partial_channels=2", "arch.edge_betas=true"],
                                   NB201])
def test_ms_batched_sample_losses_equal_one_forward_each(extra):
    s = make("ms-darts", *extra)
    x, y = batch_of(s)
    mix = s.mix("eval")
    samples = {ct: torch.stack([torch.softmax(torch.randn_like(w), -1) for _ in range(3)])
               for ct, w in mix.op.items()}
    batched = sample_losses(s, x, y, samples, mix, "eval", batched=True)
    s.net.eval()
    with torch.no_grad():
        ref = torch.stack([F.cross_entropy(s.net(x, {ct: v[i] for ct, v in samples.items()}, mix.edge), y)
                           for i in range(3)])
    s.net.train()
    torch.testing.assert_close(batched, ref, rtol=1e-5, atol=1e-6)


def test_ms_transform_shifts_on_the_simplex_and_leaves_alpha():
    s = make("ms-darts", "space=s3", "network.layers=3")
    m = method(s, MSDARTS)
    batch = batch_of(s)
    m.epsilon = 0.25
    alpha0 = {k: v.detach().clone() for k, v in s.arch.alphas.items()}
    clean = s.arch.op_weights()
    out = s.mix("weights", batch)
    for ct in clean:
        on_simplex(out.op[ct].detach(), s.arch.mask(ct))
        assert (out.op[ct] - clean[ct]).abs().max() > 1e-3
    s.weight_step(batch)
    for k, v in s.arch.alphas.items():
        assert torch.equal(v.detach(), alpha0[k])


# ----------------------------------------------------------------------------------------------
# Single-DARTS


def test_single_darts_step_equals_one_joint_sgd_adam_step_computed_independently():
    s = make("single-darts", "space=s3", "network.layers=3", "optim.grad_clip=0.5")
    x, y = batch_of(s)
    net = copy.deepcopy(s.net)
    alphas = {ct: a.detach().clone().requires_grad_(True) for ct, a in s.arch.alphas.items()}
    masks = {ct: s.arch.mask(ct) for ct in alphas}
    o = s.cfg.optim
    assert s.arch.activation == "sigmoid"
    assert float(s.arch.alphas["normal"][0, 0].detach()) == pytest.approx(-math.log(7))

    w = {ct: torch.sigmoid(a) * masks[ct] for ct, a in alphas.items()}
    loss = F.cross_entropy(net(x, w), y)
    params = list(net.parameters())
    grads = torch.autograd.grad(loss, params + list(alphas.values()), allow_unused=True)
    gw, ga = grads[: len(params)], grads[len(params):]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in gw if g is not None]))
    coef = min(1.0, o.grad_clip / (float(norm) + 1e-6))
    assert coef < 1.0  # clipping is part of what is checked
    expect_w = [p.detach() - o.lr * (g * coef + o.weight_decay * p.detach()) if g is not None else p.detach()
                for p, g in zip(params, gw)]
    b1, b2 = o.arch_betas
    expect_a = {}
    for (ct, a), g in zip(alphas.items(), ga):
        g = g + o.arch_weight_decay * a.detach()
        m, v = (1 - b1) * g, (1 - b2) * g * g
        expect_a[ct] = a.detach() - o.arch_lr * (m / (1 - b1)) / ((v / (1 - b2)).sqrt() + 1e-8)

    s.weight_step((x, y))
    for p, e in zip(s.net.parameters(), expect_w):
        torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-7)
    for ct, a in s.arch.alphas.items():
        torch.testing.assert_close(a.detach(), expect_a[ct], rtol=1e-5, atol=1e-7)
        assert (a.detach() - alphas[ct].detach()).abs().max() > 1e-5  # alpha moved in the weight step


# ----------------------------------------------------------------------------------------------
# iDARTS: node normalisation and decorrelation discretisation


@pytest.mark.parametrize("extra", [["space=s3", "network.layers=3"], NB201])
def test_node_norm_is_static_bn_on_each_node_sum(extra):
    s = make("idarts", *extra)
    x, _ = batch_of(s)
    mix = s.mix("weights")
    cell = cells(s.net)[0]
    got = {}
    edge_out = {}
    hooks = [bn.register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, (i[0], o)))
             for n, bn in enumerate(cell.node_norm)]
    hooks += [e.register_forward_hook(lambda m, i, o, k=k: edge_out.__setitem__(k, (i[0], o)))
              for k, e in enumerate(cell.edges)]
    s.net.train()
    with engine_options(s.net, fused=False):  # module forwards (and hooks) for every edge
        s.forward(x, mix)
    for h in hooks:
        h.remove()
    space = s.space
    for n, bn in enumerate(cell.node_norm):
        assert not bn.affine  # static BN
        inp, out = got[n]
        torch.testing.assert_close(inp, sum(edge_out[e][1] for e in space.node_edges(n)))
        mean = out.mean((0, 2, 3))
        var = out.var((0, 2, 3), unbiased=False)
        torch.testing.assert_close(mean, torch.zeros_like(mean), rtol=0, atol=1e-5)
        torch.testing.assert_close(var, torch.ones_like(var), rtol=0, atol=1e-3)
        # later edges read the normalised node
        for e, (src, _) in enumerate(space.edges):
            if src == space.n_inputs + n:
                torch.testing.assert_close(edge_out[e][0], out)


def _explicit_select(vectors, node, alphas_order, inputs):
    """Algorithm 1 on explicit vectors: cosine with the residual node output, remove the chosen op's
    component (Gram-Schmidt against the earlier picks), repeat."""
    r = node.copy()
    basis, picked = [], []
    for _ in range(inputs):
        cos = {j: float(v @ r / (np.linalg.norm(v) * np.linalg.norm(r))) for j, v in vectors.items()
               if j not in picked}
        j = max(cos, key=cos.get)
        picked.append(j)
        u = vectors[j].copy()
        for b in basis:
            u -= (u @ b) / (b @ b) * b
        basis.append(u)
        r = r - (r @ u) / (u @ u) * u
    return picked


def test_decorrelation_picks_the_decorrelated_op_where_argmax_alpha_does_not():
    rng = np.random.default_rng(1)
    D = 200
    o1 = rng.standard_normal(D)
    o2 = o1 + 0.1 * rng.standard_normal(D)  # nearly a copy of o1
    o3 = rng.standard_normal(D)
    o3 -= (o3 @ o1) / (o1 @ o1) * o1  # orthogonal to o1
    w = {1: 0.45, 2: 0.35, 3: 0.2}  # op weights: argmax-alpha keeps edges 1 and 2
    y = w[1] * o1 + w[2] * o2 + w[3] * o3
    vecs = {1: o1, 2: o2, 3: o3}
    expected = _explicit_select(vecs, y, None, 2)
    assert 3 in expected and set(expected) != {1, 2}  # the near-copy is not chosen second
    assert sorted(w, key=w.get, reverse=True)[:2] == [1, 2]
    V = np.stack([o1, o2, o3, y])
    # two identical "cells": averaging cosines over cells must give the same answer
    gram = torch.tensor(np.stack([V @ V.T, V @ V.T]))
    got = decorrelate_select(gram, [3], [[(1, 0, 0), (2, 0, 1), (3, 0, 2)]], [2])
    assert [e for e, _ in got[0]] == expected


def test_decorrelation_removes_picks_from_every_node():
    rng = np.random.default_rng(2)
    D = 300
    a, b, c = (rng.standard_normal(D) for _ in range(3))
    # node 0 = a + 0.1 b, node 1 = a + 0.6 c + 0.3 b; node 1 alone would take a first (largest cosine)
    y0, y1 = a + 0.1 * b, a + 0.6 * c + 0.3 * b
    V = np.stack([a, b, a, b, c, y0, y1])  # edges 0, 1 enter node 0 (a, b); edges 2-4 node 1 (a, b, c)
    gram = torch.tensor((V @ V.T)[None])
    cands = [[(0, 0, 0), (1, 0, 1)], [(2, 0, 2), (3, 0, 3), (4, 0, 4)]]
    got = decorrelate_select(gram, [5, 6], cands, [1, 1])
    # node 0 takes a (cos ~ 1); a is then removed from node 1's output too, so node 1 takes c, not a
    assert got == [[(0, 0)], [(4, 0)]]
    got_seq = decorrelate_select(gram, [5, 6], cands, [1, 1], projection="sequential")
    assert got_seq == got


def _direct_gram(s, x, mix):
    """Per normal cell, the Gram matrix of [candidate op outputs, node sums], recomputed by walking
    the cell by hand from its inputs (no op-level hooks)."""
    space = s.space
    cand = [(e, k) for n in range(space.n_nodes) for e in space.node_edges(n)
            for k, name in enumerate(space.edge_ops["normal"][e]) if not OPS[name].is_zero]
    inputs = {}
    hs = [c.register_forward_pre_hook(lambda m, i, c=c: inputs.__setitem__(c, i)) for c in cells(s.net)]
    s.net.eval()
    with torch.no_grad(), engine_options(s.net, fused=False):
        s.net(x, mix.op)
        grams = []
        for cell, inp in inputs.items():
            w = mix.op[cell.cell_type]
            states = [cell.preprocess0(inp[0]), cell.preprocess1(inp[1])]
            outs, nodes = {}, []
            for n in range(space.n_nodes):
                total = 0
                for e in space.node_edges(n):
                    mixed = cell.edges[e]
                    for k in mixed.active:
                        outs[(e, k)] = mixed.ops[k](states[space.edges[e][0]])
                    total = total + sum(w[e, k] * outs[(e, k)] for k in mixed.active)
                nodes.append(total)
                states.append(cell.node_norm[n](total))
            V = torch.stack([outs[c].reshape(-1) for c in cand] + [v.reshape(-1) for v in nodes]).double()
            grams.append(V @ V.T)
    s.net.train()
    for h in hs:
        h.remove()
    return torch.stack(grams)


def test_decorrelation_gram_from_hooks_equals_walking_the_cells_by_hand():
    s = make("idarts", "space=s3", "network.layers=2")
    s.weight_step(batch_of(s))  # BN running statistics away from their initial values
    opts = IDARTSOptions(images=48, batch_size=48, split="val")
    got = collect_grams(s, opts)["normal"]
    from stablenas.methods.idarts import heldout_indices

    idx = heldout_indices(s, opts)
    loader = TensorLoader(s.dataset, idx, 48, shuffle=False)
    xb, _ = next(iter(loader))
    ref = _direct_gram(s, xb, sn.Mix(s.arch.op_weights()))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("preset,extra", [
    ("idarts", ["space=s3", "network.layers=3"]),
    ("idarts", NB201),
    ("darts", ["space=s3", "network.layers=3", "network.partial_channels=2", "arch.edge_betas=true",
               "search.discretizer=decorrelation", "methods=[{name: idarts, images: 64}]"])])
def test_decorrelation_discretizer_gives_a_valid_genotype_any_optimiser(preset, extra):
    s = make(preset, *extra)
    r = s.run()
    g = r.genotype
    assert sn.Genotype.from_dict(g.to_dict()) == g
    if s.space.skeleton == "darts":
        for ct in ("normal", "reduce"):
            pairs = g.cell(ct)
            assert len(pairs) == 2 * s.space.n_nodes
            for n in range(s.space.n_nodes):
                srcs = [i for _, i in pairs[2 * n: 2 * n + 2]]
                assert len(set(srcs)) == 2 and all(i < 2 + n for i in srcs)
                assert all(op != "none" for op, _ in pairs[2 * n: 2 * n + 2])
    assert r.metrics[-1]["genotype"] == g.to_dict()


# ----------------------------------------------------------------------------------------------
# PC-DARTS


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_channels_pass_c_over_k_then_bypass_and_shuffle(stride):
    C, K = 8, 4
    mixed = MixedOp(C, stride, ("skip_connect", "sep_conv_3x3", "max_pool_3x3"), partial_k=K).eval()
    seen = []
    hs = [op.register_forward_pre_hook(lambda m, i: seen.append(i[0].shape[1])) for op in mixed.ops]
    x = torch.randn(3, C, 6, 6)
    w = torch.tensor([0.2, 0.5, 0.3])
    with torch.no_grad():
        with engine_options(mixed, fused=False):
            plain = mixed(x, w)
        for h in hs:
            h.remove()
        assert seen == [C // K] * 3  # every op sees exactly C/K channels
        out = mixed(x, w)  # the fused default path
        torch.testing.assert_close(out, plain)
        part = sum(w[k] * mixed.ops[k](x[:, : C // K]) for k in range(3))
        rest = x[:, C // K:]
        if stride == 2:
            rest = F.max_pool2d(rest, 2, 2)
        cat = torch.cat([part, rest], 1)
        ref = torch.empty_like(cat)
        g = C // K  # channels per group; output channel r * K + grp holds input channel grp * g + r
        for grp in range(K):
            for r in range(g):
                ref[:, r * K + grp] = cat[:, grp * g + r]
    torch.testing.assert_close(out, ref)


def test_pc_darts_edge_betas_are_a_softmax_per_node_and_scale_the_derivation():
    s = make("pc-darts", "network.channels=8", "network.layers=3")
    assert s.net.cells[0].edges[0].partial_k == 4
    with torch.no_grad():
        for ct in s.arch.cell_types:
            s.arch.betas[ct].copy_(torch.randn_like(s.arch.betas[ct]))
    ew = s.arch.edge_weights()
    for ct in s.arch.cell_types:
        for n in range(s.space.n_nodes):
            idx = list(s.space.node_edges(n))
            torch.testing.assert_close(ew[ct][idx], torch.softmax(s.arch.betas[ct][idx].detach(), 0))
    # node 0 has edges 0 and 1: make alpha prefer edge 0's conv a little and beta prefer edge 1 a lot
    with torch.no_grad():
        a = s.arch.alphas["normal"]
        k = s.space.edge_ops["normal"][0].index("sep_conv_3x3")
        a.zero_()
        a[0, k] = 1.0
        a[1, k] = 0.5
        s.arch.betas["normal"][:2] = torch.tensor([0.0, 3.0])
    pairs = sn.derive(s.space, s.arch.op_weights(), s.arch.edge_weights()).normal
    assert pairs[0] == ("sep_conv_3x3", 1)  # ranked by beta * alpha, not alpha


# ----------------------------------------------------------------------------------------------
# GDAS


def _count_op_calls(s, mix, x):
    calls = {}
    hooks = []
    for ci, cell in enumerate(cells(s.net)):
        for e, mixed in enumerate(cell.edges):
            for op in mixed.ops:
                hooks.append(op.register_forward_hook(
                    lambda m, i, o, key=(ci, e): calls.__setitem__(key, calls.get(key, 0) + 1)))
    with engine_options(s.net, fused=False):
        out = s.forward(x, mix)
    for h in hooks:
        h.remove()
    return calls, out


@pytest.mark.parametrize("extra", [["space=s2", "network.layers=3"], NB201])
def test_gdas_runs_exactly_the_sampled_op_per_edge_and_alpha_gets_the_gradient(extra):
    s = make("gdas", *extra)
    x, y = batch_of(s)
    mix = s.mix("arch", (x, y))
    for ct, w in mix.op.items():
        assert torch.equal(w.detach().sum(-1), torch.ones(w.shape[0]))  # value = one-hot
        assert torch.equal(w.detach().argmax(-1), torch.tensor(mix.hard[ct]))
    calls, logits = _count_op_calls(s, mix, x)
    for ci, cell in enumerate(cells(s.net)):
        for e in range(len(cell.edges)):
            chosen = s.space.edge_ops[cell.cell_type][e][mix.hard[cell.cell_type][e]]
            assert calls.get((ci, e), 0) == (0 if OPS[chosen].is_zero else 1)
    loss = F.cross_entropy(logits, y)
    grads = torch.autograd.grad(loss, list(s.arch.alphas.values()), allow_unused=True)
    used = {c.cell_type for c in cells(s.net)}
    for ct, g in zip(s.arch.alphas, grads):
        if ct in used:
            assert g is not None and g.abs().sum() > 0


def test_gdas_temperature_is_linear_10_to_0_1_over_epochs():
    s = make("gdas", "optim.epochs=5")
    m = method(s, GDAS)
    taus = []
    for e in range(5):
        s.start_epoch(e)
        taus.append(m.tau)
    np.testing.assert_allclose(taus, [10 - 9.9 * e / 4 for e in range(5)])


def test_gdas_samples_follow_the_gumbel_softmax_probabilities():
    from stablenas.methods.gdas import gumbel_hard

    p = torch.tensor([[0.6, 0.3, 0.1]])
    counts = torch.zeros(3)
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(1, 3, dtype=torch.bool)
    for _ in range(3000):
        _, hard = gumbel_hard({"c": p}, {"c": mask}, tau=1.0, generator=gen)
        counts[hard["c"][0]] += 1
    # argmax of log p + Gumbel noise is a sample of p (the Gumbel-max trick), at any tau
    np.testing.assert_allclose((counts / 3000).numpy(), p[0].numpy(), atol=0.03)


# ----------------------------------------------------------------------------------------------
# RS-ws


@pytest.mark.parametrize("space", ["s3", "darts", "nb201"])
def test_rs_ws_samples_architectures_of_the_space_and_runs_only_them(space):
    extra = NB201 if space == "nb201" else [f"space={space}", "network.layers=3"]
    s = make("rs-ws", *extra)
    x, _ = batch_of(s)
    torch.manual_seed(0)
    mix = s.mix("weights", (x, None))
    sp = s.space
    for ct, hard in mix.hard.items():
        for n in range(sp.n_nodes):
            kept = [e for e in sp.node_edges(n) if hard[e] >= 0]
            if sp.skeleton == "nb201":
                assert kept == list(sp.node_edges(n))
            else:
                assert len(kept) == 2
                assert all(sp.edge_ops[ct][e][hard[e]] != "none" for e in kept)
    calls, _ = _count_op_calls(s, mix, x)
    for ci, cell in enumerate(cells(s.net)):
        for e in range(len(cell.edges)):
            k = mix.hard[cell.cell_type][e]
            runs = k >= 0 and not OPS[sp.edge_ops[cell.cell_type][e][k]].is_zero
            assert calls.get((ci, e), 0) == int(runs)
    # uniform over the kept-edge choices: node 3 of a DARTS cell picks each of its 5 inputs ~2/5 of the time
    if sp.skeleton == "darts":
        gen = torch.Generator().manual_seed(1)
        hits = np.zeros(5)
        for _ in range(2000):
            h = sample_architecture(sp, gen)["normal"]
            hits += [h[e] >= 0 for e in sp.node_edges(3)]
        np.testing.assert_allclose(hits / 2000, 0.4, atol=0.04)


def _accuracy(s, genotype, batches):
    """Shared-weight accuracy of a genotype, mix built from the genotype (not from the sampler)."""
    hard = {}
    for ct in s.space.cell_types:
        choice = [-1] * s.space.n_edges
        for i, (op, src) in enumerate(genotype.cell(ct)):
            node = i // 2
            e = next(e for e in s.space.node_edges(node) if s.space.edges[e][0] == src)
            choice[e] = s.space.edge_ops[ct][e].index(op)
        hard[ct] = choice
    return s.evaluate(max_batches=batches, mix=discrete_mix(s.arch, hard, s.device))[1]


def test_rs_ws_returns_the_best_ranked_of_its_samples(tmp_path):
    cfg = sn.load_config("rs-ws", TINY + ["space=s3", "network.layers=3", "methods.0.samples=6",
                                          "methods.0.eval_batches=1", "methods.0.top_k=3"])
    s = Search(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    r = s.run()
    m = method(s, RSWS)
    assert len(m.ranking) == 3
    full = [_accuracy(s, g, 10**6) for g, _ in m.ranking]
    np.testing.assert_allclose(full, [a for _, a in m.ranking], atol=1e-6)
    assert full[0] == max(full)
    assert r.genotype == m.ranking[0][0]
    assert sn.Genotype.load(tmp_path / "run") == r.genotype
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["genotype"] == r.genotype.to_dict() and last["rs_ws"]["samples"] == 6
    # the top 3 are the 3 best of the 6 on the one-batch screen
    gen = torch.Generator().manual_seed(cfg.seed * 104729 + 3)
    cand = [sample_architecture(s.space, gen) for _ in range(6)]
    screen = m.score(s, cand, 1)
    from stablenas.methods._common import genotype_of

    top3 = {genotype_of(s.space, cand[i]) for i in np.argsort(-screen.numpy(), kind="stable")[:3]}
    assert top3 == {g for g, _ in m.ranking}


# ----------------------------------------------------------------------------------------------
# composition and every preset end to end


@pytest.mark.parametrize("preset,extra", [
    ("single-darts", ["space=s3", "methods=[{name: single-darts}, {name: sdarts-rs}]"]),  # sigmoid + RS (box)
    ("gdas", ["space=s3", "network.node_norm=true", "search.discretizer=decorrelation"]),
    ("sdarts-rs", ["space=s3", "search.update=second", "methods=[{name: sdarts-rs}, {name: ms-darts}]"]),
    ("pc-darts-rs", NB201 + ["network.channels=16"]),
])
def test_methods_compose_in_one_config(preset, extra):
    r = make(preset, *extra, "search.steps_per_epoch=2").run()
    assert len(r.metrics) == 2 and r.genotype is not None
    if preset == "single-darts":
        for w in r.search.arch.op_weights().values():
            assert torch.all((w >= 0) & (w <= 1))


@pytest.mark.parametrize("space", ["s3", "nb201"])
@pytest.mark.parametrize("preset", MY_PRESETS)
def test_every_method_preset_searches_two_epochs_and_writes_its_run(preset, space, tmp_path):
    extra = NB201 if space == "nb201" else ["space=s3"]
    if "pc-darts" in preset:
        extra = extra + ["network.channels=16"]  # K = 4: 4 channels through the ops
    cfg = sn.load_config(preset, TINY + SMALL.get(preset, []) + extra + ["search.steps_per_epoch=2"])
    out = tmp_path / "run"
    r = Search(cfg, out, progress=False, log=lambda s: None).run()
    for f in ("config.yaml", "metrics.jsonl", "genotype.json", "checkpoint.pt"):
        assert (out / f).exists(), f
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert sn.Genotype.load(out) == r.genotype
    assert all(math.isfinite(json.loads(x)["train_loss"]) for x in lines)


@pytest.mark.parametrize("preset", ["sdarts-rs", "gdas", "rs-ws"])
def test_resumed_search_ends_where_an_uninterrupted_one_does(preset, tmp_path):
    extra = ["space=s3", "search.checkpoint_every=1"]
    a = make(preset, *extra).run()
    cfg = sn.load_config(preset, TINY + SMALL.get(preset, []) + extra + ["optim.epochs=2"])
    first = Search(cfg, tmp_path / "r", progress=False, log=lambda s: None)
    first.start_epoch(0)
    first.train_epoch()
    first._end_epoch()
    b = Search(cfg, tmp_path / "r", resume=True, progress=False, log=lambda s: None).run()
    for ct in a.search.arch.alphas:
        torch.testing.assert_close(a.search.arch.alphas[ct], b.search.arch.alphas[ct])
    assert a.genotype == b.genotype
