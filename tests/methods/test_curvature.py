"""Curvature w.r.t. alpha and the methods built on it (hessian, darts-es, darts-ada).

References are independent of the code under test: ``torch.autograd.functional.hessian`` of the
same scalar function + ``torch.linalg.eigvalsh`` for the eigen-solvers, matrices with a known
spectrum for Lanczos / power iteration, hand-made lambda sequences for the stopping rule, and an
uninterrupted run for resume.
"""

from __future__ import annotations

import json

import pytest
import torch

import stablenas as sn
from stablenas import curvature as cv
from stablenas.curvature import Curvature
from stablenas.genotype import Genotype
from stablenas.methods.curvature import LambdaMaxObserver
from stablenas.methods.darts_ada import DartsADA
from stablenas.methods.darts_es import DartsES, first_stop, local_average
from stablenas.search.loop import Search


def _cfg(tiny_overrides, *extra):
    return sn.load_config("darts", tiny_overrides + ["space=s3", "data.batch_size=16", "network.layers=1",
                                                     "data.eval_batch_size=32", *extra])


@pytest.fixture(scope="module")
def hess_setup():
    """A one-cell s2 supernet in float64, one validation batch of 8, and the reference Hessian
    (56 alpha entries; the 28 of the unused reduction cell have zero rows)."""
    over = ["data.dataset=digits", "data.subset=null", "data.batch_size=8", "network.channels=8",
            "network.layers=1", "network.stem_multiplier=1", "optim.epochs=1", "search.steps_per_epoch=2",
            "network.channels_last=false", "space=s2"]
    s = Search(sn.load_config("darts", over), None, progress=False, log=lambda m: None)
    s.net.double()
    s.arch.double()
    with torch.no_grad():  # move alpha away from the uniform start so the spectrum is not degenerate
        for p in s.arch.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3), dtype=p.dtype))
    obj = cv.AlphaObjective.from_search(s, batches=1)
    obj.batches = [(x.double(), y) for x, y in obj.batches]
    a0 = obj.alpha0()
    with obj.mode():
        H = torch.autograd.functional.hessian(obj, a0)
    return s, obj, H


def test_hvp_equals_exact_hessian_times_v(hess_setup):
    s, obj, H = hess_setup
    assert H.abs().max() > 1e-4  # the reference is not trivially zero
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with cv.HVP(obj) as hvp:
        hv = hvp(v)
    with cv.HVP(obj, retain=False) as hvp:
        hv2 = hvp(v)
    ref = H @ v
    assert torch.allclose(hv, ref, rtol=1e-9, atol=1e-12)
    assert torch.allclose(hv2, ref, rtol=1e-9, atol=1e-12)


def test_lambda_max_within_one_percent_of_eigvalsh(hess_setup):
    s, obj, H = hess_setup
    eig = torch.linalg.eigvalsh(H)
    ref = float(eig.max())
    n = H.shape[0]
    lz = cv.dominant_eigenvalue(obj, iters=10, rtol=None)
    assert lz.hvps == 10 < n // 2  # fewer products than the exact matrix needs (even its live part)
    assert abs(lz.lambda_max - ref) <= 0.01 * abs(ref)
    pw = cv.dominant_eigenvalue(obj, iters=200, algorithm="power", tol=1e-6)
    assert abs(pw.lambda_max - ref) <= 0.01 * abs(ref)
    Hm, ex = cv.exact_spectrum(obj)
    assert torch.allclose(Hm, H, rtol=1e-9, atol=1e-12)
    assert abs(ex.lambda_max - ref) <= 1e-9 * abs(ref)
    top = ex.top_k(5)
    assert [abs(v) for v in top] == pytest.approx(sorted((abs(v) for v in eig.tolist()), reverse=True)[:5])


def test_measurement_leaves_network_and_rng_untouched(hess_setup):
    s, obj, H = hess_setup
    s.net.drop_path_prob = 0.3
    s.net.train()
    buffers = {n: b.clone() for n, b in s.net.named_buffers()}
    params = {n: p.detach().clone() for n, p in s.net.named_parameters()}
    rng = torch.get_rng_state()
    cv.dominant_eigenvalue(obj, iters=3)
    assert s.net.training and s.net.drop_path_prob == 0.3
    assert torch.equal(torch.get_rng_state(), rng)
    for n, b in s.net.named_buffers():
        assert torch.equal(b, buffers[n]), n
    for n, p in s.net.named_parameters():
        assert torch.equal(p, params[n]), n
    assert all(p.grad is None for p in s.arch.parameters())


def test_eigen_solvers_on_known_spectrum():
    g = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    eigs = torch.linspace(-0.5, 2.0, 40, dtype=torch.float64)
    eigs[0] = -5.0  # the largest magnitude is negative: power iteration must shift
    A = Q @ torch.diag(eigs) @ Q.T
    ritz = cv.lanczos(lambda v: A @ v, 40, 40, like=torch.zeros(1, dtype=torch.float64))
    assert torch.allclose(ritz, eigs.sort().values, atol=1e-9)
    lam, _ = cv.power_iteration(lambda v: A @ v, 40, 2000, like=torch.zeros(1, dtype=torch.float64),
                                tol=1e-12)
    assert abs(lam - 2.0) < 1e-3


def test_lanczos_early_stop_saves_products_and_keeps_the_top_eigenvalue():
    """A gap at the top (as in DARTS Hessians: one dominant direction) lets Lanczos stop early."""
    g = torch.Generator().manual_seed(2)
    n = 200
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eigs = torch.linspace(-0.3, 1.0, n, dtype=torch.float64)
    eigs[-1] = 3.0
    A = Q @ torch.diag(eigs) @ Q.T
    calls = []

    def mv(v):
        calls.append(1)
        return A @ v

    ritz = cv.lanczos(mv, n, 60, like=torch.zeros(1, dtype=torch.float64), rtol=1e-4)
    assert len(calls) < 30  # stopped well before the cap
    assert abs(float(ritz[-1]) - 3.0) <= 1e-3 * 3.0
    calls.clear()
    cv.lanczos(mv, n, 60, like=torch.zeros(1, dtype=torch.float64))
    assert len(calls) == 60  # without rtol: exactly the cap


def test_hessian_method_records_and_does_not_change_the_search(tiny_overrides):
    base = _cfg(tiny_overrides, "optim.epochs=1", "search.steps_per_epoch=2")
    with_h = _cfg(tiny_overrides, "optim.epochs=1", "search.steps_per_epoch=2",
                  "methods=[{name: hessian, iters: 4}]")
    r0 = Search(base, None, progress=False, log=lambda m: None).run()
    r1 = Search(with_h, None, progress=False, log=lambda m: None).run()
    rec = r1.metrics[-1]
    assert isinstance(rec["lambda_max"], float) and rec["lambda_seconds"] >= 0
    assert len(rec["alpha"]) == r1.arch.num_alpha()
    assert torch.equal(r0.arch.flat(), r1.arch.flat())
    for (n, a), (_, b) in zip(r0.search.net.named_buffers(), r1.search.net.named_buffers()):
        assert torch.equal(a, b), n


# --------------------------------------------------------------------------------------------
# DARTS-ES rule


def test_local_average_is_centred():
    assert local_average([1, 2, 3, 4, 5, 6], 5) == [None, None, 3.0, 4.0, None, None]
    assert local_average([1, 2, 3], 1) == [1, 2, 3]


def test_es_rule_on_a_hand_made_sequence():
    # flat at 1.0, then lambda doubles from epoch 10 on
    lam = [1.0] * 10 + [2.0] * 10
    # lambda_bar(i) for i = 8: (1+1+2+2+... ) window 6..10 -> (1+1+1+1+2)/5 = 1.2; the first i with
    # lambda_bar(i-5)/lambda_bar(i) < 0.75: i=9: bar(9) = (1+1+1+2+2)/5 = 1.4, bar(4) = 1 -> 0.714
    # (i = 8 gives 1/1.2 = 0.833). Decided at i + 2 = 11, stop (returned) epoch i - 5 = 4.
    hit = first_stop(lam, 5, 5, 0.75)
    assert hit == {"i": 9, "stop": 4, "decided": 11, "ratio": pytest.approx(1 / 1.4)}
    assert first_stop([1.0] * 20, 5, 5, 0.75) is None
    assert first_stop(lam, 5, 5, 0.75, min_stop=5)["stop"] == 5  # later trigger allowed


def _Script(values):
    """A replacement for the lambda measurement: a hand-made sequence indexed by epoch."""

    def measure(self, search):
        return Curvature(values[search.epoch], n=1)

    return measure


def test_darts_es_stops_and_returns_epoch_i_minus_k(tiny_overrides, monkeypatch, tmp_path):
    lam = [1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0, 3.0]
    monkeypatch.setattr(LambdaMaxObserver, "measure", _Script(lam))
    cfg = _cfg(tiny_overrides, "optim.epochs=8", "search.steps_per_epoch=1", "search.val_batches=1",
               "methods=[{name: darts-es, window: 3, k: 2}]")
    res = Search(cfg, tmp_path / "es", progress=False, log=lambda m: None).run()
    hit = first_stop(lam, 3, 2, 0.75)  # i = 3: bar(3) = 7/3, bar(1) = 1 -> 0.43; decided at 4
    assert (hit["stop"], hit["decided"]) == (1, 4)
    assert [r["epoch"] for r in res.metrics] == [1, 2, 3, 4, 5]  # stopped after epoch index 4
    assert res.metrics[-1]["early_stop"]["stop_epoch"] == 2
    expected = Genotype.from_dict(res.metrics[1]["genotype"])
    assert res.genotype == expected
    assert Genotype.load(tmp_path / "es") == expected
    assert "DARTS-ES" in res.search.stop_reason


# --------------------------------------------------------------------------------------------
# DARTS-ADA


class _Spy(sn.Method):
    name = ""

    def __init__(self):
        super().__init__({})
        self.seen = []

    def on_epoch_start(self, search, epoch):
        self.seen.append((epoch, search.arch.flat().detach().clone(),
                          search.w_optimizer.param_groups[0]["weight_decay"]))


def _ada_cfg(tiny_overrides, epochs=5):
    return _cfg(tiny_overrides, f"optim.epochs={epochs}", "search.steps_per_epoch=2", "search.val_batches=1",
                "methods=[{name: darts-ada, window: 1, k: 1, eta: 10, max_value: 0.003}]")


def test_darts_ada_rolls_back_and_raises_l2(tiny_overrides, monkeypatch):
    # criterion (window 1, k 1): lambda(i-1)/lambda(i) < 0.75 -> at epoch index 2, stop epoch 1
    monkeypatch.setattr(LambdaMaxObserver, "measure", _Script([1.0, 1.0, 2.0, 2.0, 2.0]))
    s = Search(_ada_cfg(tiny_overrides), None, progress=False, log=lambda m: None)
    spy = _Spy()
    s.methods.insert(0, spy)
    res = s.run()
    assert [r["epoch"] for r in res.metrics] == [1, 2, 3, 4, 5]
    ada = s.methods[1]
    assert len(ada.events) == 1
    ev = ada.events[0]
    assert (ev["decided_at"], ev["stop_epoch"]) == (3, 2)
    assert ev["R_before"] == pytest.approx(3e-4) and ev["R_after"] == pytest.approx(3e-3)
    assert s.w_optimizer.param_groups[0]["weight_decay"] == pytest.approx(3e-3)
    # spy order: starts of epochs 0, 1, 2, 3 (before rollback), then 2 again (after the restore)
    epochs = [e for e, _, _ in spy.seen]
    assert epochs[:5] == [0, 1, 2, 3, 2]
    alpha_at_2, alpha_restored = spy.seen[2][1], spy.seen[4][1]
    assert not torch.equal(spy.seen[3][1], alpha_at_2)  # epoch 2 did move alpha
    assert torch.equal(alpha_restored, alpha_at_2)
    assert spy.seen[4][2] == pytest.approx(3e-3)  # the raised factor is in force for the redo
    # second trigger at the redone epoch 2: R cannot rise above R_max = 3e-3 -> no further rollback
    assert any("ada_criterion_met" in r for r in res.metrics)


def test_darts_ada_resume_matches_uninterrupted_run(tiny_overrides, monkeypatch, tmp_path):
    monkeypatch.setattr(LambdaMaxObserver, "measure", _Script([1.0, 1.0, 2.0, 2.0, 2.0]))
    full = Search(_ada_cfg(tiny_overrides), tmp_path / "full", progress=False, log=lambda m: None).run()

    calls = {"n": 0}
    original = Search.save_checkpoint

    def killing_save(self, path=None):
        original(self, path)
        calls["n"] += 1
        if calls["n"] == 3:  # right after the checkpoint of the epoch that decided to roll back
            raise KeyboardInterrupt

    monkeypatch.setattr(Search, "save_checkpoint", killing_save)
    with pytest.raises(KeyboardInterrupt):
        Search(_ada_cfg(tiny_overrides), tmp_path / "cut", progress=False, log=lambda m: None).run()
    monkeypatch.setattr(Search, "save_checkpoint", original)
    ck = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert ck["methods"][0]["pending"] is not None and ck["methods"][0]["snapshots"]
    resumed = Search(_ada_cfg(tiny_overrides), tmp_path / "cut", resume=True, progress=False,
                     log=lambda m: None).run()
    assert torch.equal(resumed.arch.flat(), full.arch.flat())
    lines = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4, 5]


def test_darts_ada_must_come_after_scheduled_methods(tiny_overrides):
    cfg = _cfg(tiny_overrides, "methods=[{name: darts-ada}, {name: sdarts-rs}]")
    with pytest.raises(ValueError, match="must come after 'sdarts-rs'"):
        Search(cfg, None, progress=False, log=lambda m: None)


def test_bad_options_name_the_option():
    with pytest.raises(ValueError, match="window must be odd"):
        DartsES.parse_options({"window": 4})
    with pytest.raises(ValueError, match="unknown option 'lambda'"):
        DartsADA.parse_options({"lambda": 1})


# --------------------------------------------------------------------------------------------
# search-time regularisation knobs (R-DARTS) and the presets that use them


def test_regularisation_knobs_take_effect(tiny_overrides):
    cfg = _cfg(tiny_overrides, "optim.weight_decay=8.1e-3", "regularization.drop_path_max=0.4",
               "data.cutout=4", "optim.epochs=2")
    s = Search(cfg, None, progress=False, log=lambda m: None)
    assert all(g["weight_decay"] == 8.1e-3 for g in s.w_optimizer.param_groups)
    s.start_epoch(1)
    assert s.net.drop_path_prob == pytest.approx(0.4 * 1 / 2)  # linear 0 -> p_max over the search
    x, _ = s.train_loader.batch(1, 0)
    xv, _ = s.val_eval_loader.batch(0, 0)
    assert (x == 0).all(1).flatten(1).sum(1).min() >= 4  # every image has a zeroed (cut) square
    assert (xv == 0).all(1).flatten(1).sum(1).max() == 0  # validation batches are not augmented
    w = s.arch.op_weights()
    with torch.no_grad():
        s.net.train()
        a, b = s.net(xv, w), s.net(xv, w)  # DropPath draws a new mask per forward
        s.net.eval()
        c, d = s.net(xv, w), s.net(xv, w)
    assert not torch.equal(a, b) and torch.equal(c, d)
    assert sn.load_config("r-darts-l2").optim.weight_decay == pytest.approx(8.1e-3)
    dp = sn.load_config("r-darts-dp")
    assert dp.regularization.drop_path_max == pytest.approx(0.4) and dp.data.cutout == 16
    ada = sn.load_config("darts-ada").methods[0].model_extra
    assert (ada["eta"], ada["max_value"]) == (10.0, 0.03)
    assert sn.load_config("darts-es").methods[0].model_extra["threshold"] == 0.75
