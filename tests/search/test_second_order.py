"""The unrolled (2nd order) alpha gradient against the exact hypergradient of eq. 10-12.

Exact: d/d alpha L_val(w - xi * grad_w L_train(w, alpha), alpha), differentiated through the virtual
step with double backward. DARTS approximates the mixed second derivative by a central finite
difference in weight space (eq. 13-14). A finite difference is only as good as the loss is smooth:
in a ReLU supernet the 0.01-radius probe crosses activation kinks and the alpha-gradient jumps
(measured here: cosine ~0.1-0.3 to the exact value on a tiny net), so the FD check runs with the
ReLUs swapped for a smooth softplus, which isolates the implementation of eq. 12-14. The
``autograd`` variant takes the mixed derivative exactly and must match with real ReLUs too.
"""

import pytest
import torch
from support.hypergradient import compare, smooth_relu  # noqa: F401 (smooth_relu: a fixture)

import stablenas as sn
from stablenas.search.loop import Search


def _search(tiny_overrides, space, hvp="finite-difference", batch=16):
    cfg = sn.load_config("darts", tiny_overrides + [
        f"space={space}", "search.update=second", "search.xi=0.5", f"data.batch_size={batch}", "network.layers=3",
        f"search.unrolled_hvp={hvp}"])
    s = Search(cfg, None, progress=False)
    s.net.double()
    s.arch.double()
    s.start_epoch(0)
    g = torch.Generator().manual_seed(0)
    _, yt = next(iter(s.train_loader))
    _, yv = next(s.val_stream)
    # generic-position inputs (digits have flat backgrounds that sit exactly on kinks)
    xt = torch.randn(batch, 1, 12, 12, generator=g, dtype=torch.float64)
    xv = torch.randn(batch, 1, 12, 12, generator=g, dtype=torch.float64)
    return s, (xt, yt), (xv, yv)


@pytest.mark.parametrize("space", ["s2", "s3"])  # no max-pool: its argmax switches are kinks as well
def test_finite_difference_matches_exact_hypergradient(tiny_overrides, smooth_relu, space):  # noqa: F811
    cos, rel = compare(*_search(tiny_overrides, space))
    assert cos > 0.99 and rel < 0.05, (float(cos), float(rel))


@pytest.mark.parametrize("space", ["darts", "s3"])
def test_autograd_variant_is_exact_with_relu(tiny_overrides, space):
    """Exact to round-off at any batch: 8 images (the float64 double backward's cost is the batch's)."""
    cos, rel = compare(*_search(tiny_overrides, space, hvp="autograd", batch=8))
    assert cos > 0.999999 and rel < 1e-6, (float(cos), float(rel))


def test_second_order_leaves_weights_and_bn_stats_untouched(tiny_overrides):
    s, train, val = _search(tiny_overrides, "s3")
    before = {k: v.clone() for k, v in s.net.state_dict().items()}
    s.second_order_grad(train, val)
    after = s.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
