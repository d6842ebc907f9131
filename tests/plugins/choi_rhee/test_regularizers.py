"""The Choi–Rhee regularizers: hand computations, class-wise edge cases, laws, gradients, plugins.

Tolerances: hand computations and numpy references 1e-12 (float64 round-off on O(1..100)
values); laws 1e-9 relative (float64, reordered sums); the toy-layer descent asserts a drop
of at least 10 %.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import infoshape
from infoshape.apps.models import build_model
from infoshape.apps.trainer import TrainConfig, train
from infoshape.errors import ConfigError, PluginHookError
from infoshape.plugins import choi_rhee
from infoshape.plugins.choi_rhee import cr, cw_cr, cw_rr, cw_vr, l1r, last_activation, rr, vr
from infoshape.testing import PluginTester, activations, labels, small_mlp
from infoshape.testing.conformance import RecordingSink

TIGHT = 1e-12
LAWS = settings(max_examples=40, deadline=None)
SHAPES = st.tuples(st.integers(1, 12), st.integers(1, 6))
WHOLE = {"cr": cr, "vr": vr, "l1r": l1r, "rr": rr}
CLASSWISE = {"cw_cr": cw_cr, "cw_vr": cw_vr, "cw_rr": cw_rr}
PLUGINS = [*WHOLE, *CLASSWISE]

# A fixed batch: 4 samples × 3 units. Column means (1.5, 1, 1); centered rows
# (−.5, −1, 1), (1.5, 0, −1), (−1.5, 1, 0), (.5, 0, 0); biased covariance
#   C = [[1.25, −.25, −.5], [−.25, .5, −.25], [−.5, −.25, .5]].
Z = torch.tensor([[1, 0, 2], [3, 1, 0], [0, 2, 1], [2, 1, 1]], dtype=torch.float64)
# CR = (−.25)² + (−.5)² + (−.25)² = .375; VR = 1.25 + .5 + .5 = 2.25; L1R = 14;
# RR = ‖Z‖_F² / (max col sum · max row sum) = 26 / (6 · 4) = 13/12.
HAND = {"cr": 0.375, "vr": 2.25, "l1r": 14.0, "rr": 13 / 12}
TERMS = {"cr": 3, "vr": 3, "l1r": 3, "rr": 3}  # u(u−1)/2 = 3 pairs; u = 3 units
# Classes y = (0, 1, 0, 1). Class 0 rows (1,0,2), (0,2,1): C⁰ off-diagonal −.5, .25, −.5,
# so CR⁰ = .5625, VR⁰ = .25 + 1 + .25 = 1.5, RR⁰ = 10 / (3 · 3) = 10/9.
# Class 1 rows (3,1,0), (2,1,1): C¹ off-diagonal 0, −.25, 0, so CR¹ = .0625,
# VR¹ = .25 + 0 + .25 = .5, RR¹ = 16 / (5 · 4) = .8.
Y = torch.tensor([0, 1, 0, 1])
HAND_CW = {"cw_cr": 0.5625 + 0.0625, "cw_vr": 1.5 + 0.5, "cw_rr": 10 / 9 + 0.8}


# ------------------------------------------------------------------ hand computations
@pytest.mark.parametrize("name", list(WHOLE))
def test_fixed_matrix_matches_the_hand_computation(name):
    assert WHOLE[name](Z).item() == pytest.approx(HAND[name], abs=TIGHT)
    normalized = WHOLE[name](Z, normalize=True).item()
    assert normalized == pytest.approx(HAND[name] / TERMS[name], abs=TIGHT)


def test_l1r_reductions():
    assert l1r(Z, reduction="mean").item() == pytest.approx(14 / 4, abs=TIGHT)
    assert l1r(Z, normalize=True, reduction="mean").item() == pytest.approx(14 / 12, abs=TIGHT)
    with pytest.raises(ConfigError, match="unknown reduction"):
        l1r(Z, reduction="max")


@pytest.mark.parametrize("name", list(CLASSWISE))
def test_classwise_sums_every_class_not_the_last(name):
    value = CLASSWISE[name](Z, Y, 2).item()
    assert value == pytest.approx(HAND_CW[name], abs=TIGHT)
    normalized = CLASSWISE[name](Z, Y, 2, normalize=True).item()
    assert normalized == pytest.approx(HAND_CW[name] / (2 * 3), abs=TIGHT)
    assert value != pytest.approx({"cw_cr": 0.0625, "cw_vr": 0.5, "cw_rr": 0.8}[name])


@pytest.mark.parametrize("name", list(CLASSWISE))
def test_classwise_skips_an_absent_class(name):
    """Class 2 of 3 is absent: it adds nothing (the public code gives NaN); ``C = 3``."""
    value = CLASSWISE[name](Z, Y, 3)
    assert math.isfinite(value.item())
    assert value.item() == pytest.approx(HAND_CW[name], abs=TIGHT)
    normalized = CLASSWISE[name](Z, Y, 3, normalize=True).item()
    assert normalized == pytest.approx(HAND_CW[name] / (3 * 3), abs=TIGHT)


def test_classwise_single_sample_class():
    """Row (2,1,1) alone in class 2: no covariance, no variance, RR = 6 / (2 · 4)."""
    y = torch.tensor([0, 1, 0, 2])
    assert cw_cr(Z, y, 3).item() == pytest.approx(0.5625, abs=TIGHT)
    assert cw_vr(Z, y, 3).item() == pytest.approx(1.5, abs=TIGHT)
    rr1 = 10 / (3 * 4)  # class 1 = row (3,1,0) alone: ‖z‖² 10, max col 3, row sum 4
    assert cw_rr(Z, y, 3).item() == pytest.approx(10 / 9 + rr1 + 0.75, abs=TIGHT)


def _np_cr(a):
    c = np.cov(a.T, bias=True).reshape(a.shape[1], a.shape[1])
    return 0.5 * ((c**2).sum() - (np.diag(c) ** 2).sum())


def _np_rr(a):
    bound = np.abs(a).sum(0).max() * np.abs(a).sum(1).max()
    return (a**2).sum() / bound if bound > 0 else 0.0


def _stable_rank(z: torch.Tensor) -> float:
    return (z.square().sum() / torch.linalg.matrix_norm(z, 2) ** 2).item()


NUMPY = {"cr": _np_cr, "vr": lambda a: a.var(0).sum(), "rr": _np_rr}


@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_numpy_on_random_batches_with_labels(seed):
    rng = np.random.default_rng(seed)
    a = np.maximum(rng.normal(size=(40, 7)), 0)  # post-ReLU
    y = rng.integers(0, 6, size=40)
    y[y == 4] = 5  # class 4 absent
    z, t = torch.from_numpy(a), torch.from_numpy(y)
    for name, f in NUMPY.items():
        assert WHOLE[name](z).item() == pytest.approx(f(a), rel=TIGHT)
        per_class = sum(f(a[y == k]) for k in range(6) if (y == k).any())
        assert CLASSWISE["cw_" + name](z, t, 6).item() == pytest.approx(per_class, rel=TIGHT)
    assert l1r(z).item() == pytest.approx(np.abs(a).sum(), rel=TIGHT)


def test_edge_cases():
    zero = torch.zeros(5, 4, dtype=torch.float64)
    for f in WHOLE.values():
        assert f(zero).item() == 0.0
    assert cw_rr(zero, torch.tensor([0, 0, 1, 1, 2]), 3).item() == 0.0
    one_unit = torch.arange(6.0, dtype=torch.float64)[:, None]
    assert cr(one_unit, normalize=True).item() == 0.0  # no pair: divided by 1
    maps = torch.rand(6, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    assert cr(maps).item() == pytest.approx(cr(maps.reshape(6, 18)).item(), rel=1e-6)
    half = cr(Z.to(torch.float16))
    assert half.dtype == torch.float32 and half.item() == pytest.approx(0.375, rel=1e-3)


@pytest.mark.parametrize(
    ("z", "y", "n", "match"),
    [
        (Z, torch.tensor([0, 1, 0, 3]), 3, "class indices in"),
        (Z, torch.tensor([0.0, 1.0, 0.0, 1.0]), 2, "class indices in"),
        (Z, torch.tensor([0, 1, 0]), 2, "differ in number"),
        (Z, Y, 0, "n_classes must be a positive int"),
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 2, "no samples"),
    ],
)
def test_bad_inputs_raise_config_errors(z, y, n, match):
    with pytest.raises(ConfigError, match=match):
        cw_cr(z, y, n)


# ------------------------------------------------------------------ laws
def _permutation(rnd, n):
    return torch.tensor(rnd.sample(range(n), n), dtype=torch.long)


@LAWS
@given(activations(SHAPES, dtype=torch.float64), st.data(), st.randoms())
def test_invariant_to_sample_order_and_unit_permutation(z, data, rnd):
    n, u = z.shape
    y = data.draw(labels(n, 3))
    rows, cols = _permutation(rnd, n), _permutation(rnd, u)
    for f in WHOLE.values():
        base = f(z).item()
        assert f(z[rows]).item() == pytest.approx(base, rel=1e-9, abs=1e-12)
        assert f(z[:, cols]).item() == pytest.approx(base, rel=1e-9, abs=1e-12)
    for f in CLASSWISE.values():
        base = f(z, y, 3).item()
        assert f(z[rows], y[rows], 3).item() == pytest.approx(base, rel=1e-9, abs=1e-12)
        assert f(z[:, cols], y, 3).item() == pytest.approx(base, rel=1e-9, abs=1e-12)


@LAWS
@given(activations(SHAPES, dtype=torch.float64), st.floats(0.1, 10.0))
def test_scaling_laws(z, c):
    """CR ∝ c⁴, VR ∝ c², L1R ∝ c, RR scale-free (eqs. of Table 5 and eq. 9)."""
    z = torch.where(z.abs() < 1e-100, 0.0, z)  # c·z must stay exact: no subnormal values
    # CR is ‖C‖_F² − ‖diag C‖² over 2: its rounding error scales with ‖C‖_F², not with CR
    centered = z - z.mean(0)
    frobenius = float((centered.T @ centered / len(z)).square().sum())
    cr_tolerance = 1e-12 * c**4 * (1.0 + frobenius)
    assert cr(c * z).item() == pytest.approx(c**4 * cr(z).item(), rel=1e-9, abs=cr_tolerance)
    assert vr(c * z).item() == pytest.approx(c**2 * vr(z).item(), rel=1e-9, abs=1e-12)
    assert l1r(c * z).item() == pytest.approx(c * l1r(z).item(), rel=1e-9, abs=1e-12)
    assert rr(c * z).item() == pytest.approx(rr(z).item(), rel=1e-9, abs=1e-12)


@LAWS
@given(activations(SHAPES, dtype=torch.float64))
def test_rr_is_a_lower_bound_on_the_stable_rank(z):
    """``‖Z‖₂² ≤ ‖Z‖₁‖Z‖_∞`` (eq. 9), so 0 ≤ RR ≤ stable rank ≤ rank ≤ min(N, u)."""
    z = torch.where(z.abs() < 1e-100, 0.0, z)  # squares must not underflow
    if not bool(z.any()):
        assert rr(z).item() == 0.0
        return
    stable = _stable_rank(z)
    assert 0 <= rr(z).item() <= stable * (1 + 1e-9)
    assert cr(z).item() >= 0 and vr(z).item() >= 0


# ------------------------------------------------------------------ gradients
def _toy_descent(name: str, steps: int = 30) -> tuple[float, float, float, float]:
    """Adam on the penalty alone through ``relu(linear(x))``.

    Returns the penalty and the exact stable rank of ``Z`` (eq. 7) before and after. Adam's
    steps do not depend on the penalty's scale, so one learning rate suits all seven.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(48, 6, generator=gen, dtype=torch.float64)
    y = torch.arange(48) % 3
    layer = nn.Linear(6, 5).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(5, 6, generator=gen))
        layer.bias.fill_(0.5)
    f = getattr(choi_rhee, name)
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)

    def value():
        z = torch.relu(layer(x))
        return f(z, y, 3, normalize=True) if name.startswith("cw_") else f(z, normalize=True)

    first, rank_first = value().item(), _stable_rank(torch.relu(layer(x)).detach())
    for _ in range(steps):
        opt.zero_grad()
        value().backward()
        opt.step()
    return first, value().item(), rank_first, _stable_rank(torch.relu(layer(x)).detach())


@pytest.mark.parametrize("name", PLUGINS)
def test_gradient_steps_lower_the_penalty(name):
    first, last, rank_first, rank_last = _toy_descent(name)
    assert first > 0 and last < 0.9 * first, (first, last)
    if name in ("rr", "cw_rr"):  # the bound's descent lowers the stable rank itself
        assert rank_last < 0.9 * rank_first, (rank_first, rank_last)


# ------------------------------------------------------------------ plugins
@pytest.mark.parametrize("name", PLUGINS)
def test_plugin_conforms(name):
    PluginTester(name).check_all()


def test_plugin_conforms_with_options():
    PluginTester(
        "cw_rr", options={"normalize": False, "layers": ["relu*"], "n_classes": 3}
    ).check_all()
    PluginTester("l1r", options={"reduction": "mean", "coefficient": 0.5}).check_all()


def _session_loss(plugin, options=None):
    torch.manual_seed(0)
    model = small_mlp((8,), 3)
    x, y = torch.randn(12, 8), torch.arange(12) % 3
    sink = RecordingSink()
    opts = {plugin: options} if options else None
    with infoshape.Session(model, plugins=[plugin], options=opts, sinks=[sink]) as s:
        out = s.model(x)
        loss = s.loss(out, y)
        hidden = model.relu2(model.fc2(model.relu1(model.fc1(x))))
        s.step_end()
    (stage, _, metrics), *_ = sink.rows
    assert stage == "step"
    return loss, metrics, model, x, y, out, hidden


@pytest.mark.parametrize("name", PLUGINS)
def test_plugin_penalty_is_the_function_on_the_last_relu(name):
    loss, metrics, _, _, y, out, hidden = _session_loss(name)
    f = getattr(choi_rhee, name)
    expected = f(hidden, y, 3, normalize=True) if name in CLASSWISE else f(hidden, normalize=True)
    assert metrics[f"penalty.{name}"] == pytest.approx(expected.item(), rel=1e-5)
    ce = nn.functional.cross_entropy(out, y).item()
    classes = {c.name: c for c in (choi_rhee.CR, choi_rhee.VR, choi_rhee.L1R, choi_rhee.RR)}
    classes |= {c.name: c for c in (choi_rhee.CwCR, choi_rhee.CwVR, choi_rhee.CwRR)}
    coefficient = classes[name].Config().coefficient  # each plugin's own default
    assert loss.item() == pytest.approx(ce + coefficient * expected.item(), rel=1e-5)


def test_plugin_several_layers_and_options():
    _, metrics, _, _, y, _, hidden = _session_loss(
        "cw_vr", {"layers": ["relu*"], "normalize": False, "n_classes": 5, "coefficient": 1.0}
    )
    assert {"penalty.cw_vr.relu1", "penalty.cw_vr.relu2"} <= set(metrics)
    assert metrics["penalty.cw_vr.relu2"] == pytest.approx(cw_vr(hidden, y, 5).item(), rel=1e-5)


def test_default_layer_is_the_last_activation():
    model = nn.Sequential(
        OrderedDict(fc=nn.Linear(4, 4), act=nn.Tanh(), drop=nn.Dropout(), out=nn.Linear(4, 2))
    )
    assert last_activation(model) == "act"
    assert last_activation(build_model("mlp", (64,), 10, dropout=0.5)) == "relu2"
    linear = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(PluginHookError, match="no activation module"):
        infoshape.Session(linear, plugins=["cr"])


def test_classwise_plugin_takes_c_from_the_logits_or_the_option():
    plugin = choi_rhee.CwCR()
    assert plugin.n_classes(torch.zeros(6, 7)) == 7
    with pytest.raises(ConfigError, match="cannot infer the number of classes"):
        plugin.n_classes(torch.zeros(6))
    plugin.infoshape_configure(choi_rhee.CwCR.Config(n_classes=4))
    assert plugin.n_classes(torch.zeros(6)) == 4
    with pytest.raises(ConfigError, match="needs the batch's class labels"):
        plugin.penalty(Z, None, torch.zeros(4, 2))


def test_trainer_runs_a_regularized_model_with_dropout_and_batch_norm():
    """The CLI path (``infoshape train --model-option dropout=0.3 --plugin cw_rr ...``)."""
    config = TrainConfig(
        epochs=1,
        batch_size=100,
        store=None,
        probe=False,
        progress=False,
        model_options={"hidden": [32, 32], "dropout": 0.3, "batch_norm": True},
        plugins=["cw_rr", "l2w"],
        options={"cw_rr": {"coefficient": 0.1}},
    )
    result = train(config)
    assert math.isfinite(result.train_loss) and result.test_accuracy > 0.2


class TinyConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        return self.head(self.relu(self.conv(x)).flatten(1))


@pytest.mark.parametrize("name", ["cr", "cw_cr", "rr", "cw_vr"])
def test_conv_maps_count_channels_as_units_and_positions_as_samples(name):
    torch.manual_seed(0)
    model = TinyConv()
    x, y = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 0, 1, 1, 0])
    z = torch.relu(model.conv(x))
    rows = z.permute(0, 2, 3, 1).reshape(-1, 3)  # (N*H*W, C), sample-major
    labels = y.repeat_interleave(16)
    function = getattr(choi_rhee, name)
    expected = (
        function(rows, labels, 2, normalize=True)
        if name.startswith("cw")
        else function(rows, normalize=True)
    )
    flat = z.flatten(1)
    for units, want in (("channels", expected), ("flatten", None)):
        options = {name: {"conv_units": units, "coefficient": 1.0}}
        with infoshape.Session(model, plugins=[name], options=options) as s:
            loss = s.loss(s.model(x), y)
        got = loss - F.cross_entropy(model(x), y)
        if want is None:
            want = (
                function(flat, y, 2, normalize=True)
                if name.startswith("cw")
                else function(flat, normalize=True)
            )
        torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)  # float32 loss − CE


@pytest.mark.parametrize("shape", [(5, 40), (40, 5)])
def test_cr_with_fewer_samples_than_units_equals_the_covariance_sum(shape):
    """Both branches (m×m Gram, u×u covariance) against numpy's biased covariance."""
    z = torch.randn(*shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    cov = np.cov(z.numpy(), rowvar=False, bias=True)
    expected = (np.triu(cov, k=1) ** 2).sum()
    assert choi_rhee.cr(z).item() == pytest.approx(expected, rel=1e-9)
    labels = torch.tensor([0, 1] * (shape[0] // 2) + [0] * (shape[0] % 2))
    by_class = sum(
        (np.triu(np.cov(z.numpy()[labels.numpy() == c], rowvar=False, bias=True), k=1) ** 2).sum()
        for c in (0, 1)
    )
    assert choi_rhee.cw_cr(z, labels, 2).item() == pytest.approx(by_class, rel=1e-9)


# ------------------------------------------------------------------ fast paths vs direct formulas
def _direct(name: str, rows: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """The penalty written out per class on ``(M, u)`` rows with plain autograd ops."""
    groups = [rows] if labels is None else [rows[labels == k] for k in labels.unique()]
    total = rows.new_zeros(())
    for g in groups:
        centered = g - g.mean(0)
        if name.endswith("cr"):
            cov = centered.T @ centered / len(g)
            total = total + torch.triu(cov, diagonal=1).square().sum()
        elif name.endswith("vr"):
            total = total + centered.square().sum() / len(g)
        else:
            bound = g.abs().sum(0).max() * g.abs().sum(1).max()
            total = total + (g.square().sum() / bound if bound > 0 else 0.0 * g.sum())
    return total


def _maps(shape, integer: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(*shape, generator=gen, dtype=torch.float64).relu()
    return z.mul(3).round() if integer else z  # small integers: tied maxima and zeros


@pytest.mark.parametrize("name", ["cr", "vr", "rr", "cw_cr", "cw_vr", "cw_rr"])
@pytest.mark.parametrize(
    "shape",
    [(6, 9), (30, 4), (7, 3, 4, 4), (5, 6, 2, 1)],
    ids=["gram", "covariance", "map", "map-wide"],
)
@pytest.mark.parametrize("integer", [False, True], ids=["real", "ties"])
def test_fast_paths_match_direct_formulas_in_value_and_gradient(name, shape, integer):
    """Every branch (``N×N`` Gram, ``u×u`` covariance, per-map products with channels as units,
    the flattened fallback with more channels than positions), with an absent class and a
    one-sample class, against :func:`_direct` on the ``(N·H·W, C)`` rows; float64, 1e-10."""
    z = _maps(shape, integer).requires_grad_()
    n = shape[0]
    labels = torch.tensor([0, 2, 0, 3, 2, 0, 3][:n] + [0] * max(n - 7, 0))[:n]
    labels[n - 1] = 1  # class 1 has one sample; class 4 of 5 is absent
    channels = len(shape) > 2
    rows = z.movedim(1, -1).reshape(-1, shape[1]) if channels else z
    row_labels = labels.repeat_interleave(rows.shape[0] // n)
    f = getattr(choi_rhee, name)
    classwise = name.startswith("cw")
    got = f(z, labels, 5, channels=channels) if classwise else f(z, channels=channels)
    want = _direct(name, rows, row_labels if classwise else None)
    (grad_got,) = torch.autograd.grad(got, z)
    (grad_want,) = torch.autograd.grad(want, z)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_l1r_with_channels_averages_each_maps_positions(reduction):
    """A map is one sample of the batch sum, its 10 positions averaged; units: 3 channels."""
    z = _maps((4, 3, 2, 5), integer=False)
    rows = z.movedim(1, -1).reshape(-1, 3)  # (N·H·W, C)
    got = l1r(z, normalize=True, reduction=reduction, channels=True)
    want = rows.abs().sum() / 10 / (4 if reduction == "mean" else 1) / 3
    assert got.item() == pytest.approx(want.item(), rel=TIGHT)
    # elementwise: normalized, the flattened map's 30 units give the same value
    flat = l1r(z.flatten(1), normalize=True, reduction=reduction)
    assert got.item() == pytest.approx(flat.item(), rel=TIGHT)
    # a map's size does not scale the penalty: the map repeated 3 times over has the same
    tiled = l1r(z.repeat(1, 1, 3, 1), normalize=True, reduction=reduction, channels=True)
    assert tiled.item() == pytest.approx(got.item(), rel=TIGHT)


def test_closed_form_backwards_refuse_a_second_derivative():
    z = _maps((6, 4), integer=False).requires_grad_()
    (grad,) = torch.autograd.grad(vr(z), z, create_graph=True)
    with pytest.raises(RuntimeError, match=r"does not require grad|once_differentiable"):
        grad.sum().backward()
