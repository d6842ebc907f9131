"""gaussian: exact agreement with the closed forms, laws, gradients, the plugin and the registry.

The closed-form tests build samples whose sample covariance is exactly the target one
(whitened noise), so the only deviation left is the ridge (1e-6): tolerance 1e-5 nats.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import infoshape
from infoshape.errors import ConfigError, EstimatorAssumptionWarning, NonFiniteError
from infoshape.plugins.gaussian import (
    RIDGE,
    entropy,
    information_plane,
    mutual_information,
    mutual_information_labels,
)
from infoshape.testing import PluginTester, activations, activations_and_labels

TOL = 1e-5
LAWS = settings(max_examples=40, deadline=None)
SHAPES = st.tuples(st.integers(2, 24), st.integers(1, 4))


def white(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """``n`` samples with sample mean exactly 0 and ML covariance exactly I."""
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    cov = z.T @ z / n
    return z @ torch.linalg.inv(torch.linalg.cholesky(cov)).T


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_correlated_gaussians_match_the_closed_form(rho):
    z = white(500, 2)
    x, y = z[:, :1], rho * z[:, :1] + math.sqrt(1 - rho**2) * z[:, 1:]
    expected = -0.5 * math.log(1 - rho**2)
    assert mutual_information(x, y).item() == pytest.approx(expected, abs=TOL)
    assert mutual_information(y, x).item() == pytest.approx(expected, abs=TOL)


def test_entropy_matches_half_log_det_two_pi_e_sigma():
    sigma = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, -0.2], [0.0, -0.2, 0.5]], dtype=torch.float64)
    z = white(400, 3) @ torch.linalg.cholesky(sigma).T + 5.0  # the mean does not matter
    expected = 0.5 * torch.logdet(2 * math.pi * math.e * sigma).item()
    assert entropy(z).item() == pytest.approx(expected, abs=TOL)


def test_independent_blocks_carry_exactly_zero_information():
    z = white(300, 4)
    assert abs(mutual_information(z[:, :2], 3.0 * z[:, 2:]).item()) < 1e-9


def test_class_conditional_form_matches_the_fitted_gaussians():
    # two balanced classes at ±1 with unit within-class variance: total variance 2
    t = torch.cat([white(200, 1, seed=1) - 1.0, white(200, 1, seed=2) + 1.0])
    y = torch.cat([torch.zeros(200, dtype=torch.long), torch.ones(200, dtype=torch.long)])
    assert mutual_information_labels(t, y).item() == pytest.approx(0.5 * math.log(2), abs=TOL)


@LAWS
@given(activations(shape=SHAPES, dtype=torch.float64), activations(shape=(24, 3)))
def test_symmetric_and_nonnegative(x, y):
    y = y[: x.shape[0]]
    forward, backward = mutual_information(x, y).item(), mutual_information(y, x).item()
    assert forward == pytest.approx(backward, rel=1e-9, abs=1e-9)
    assert forward >= -1e-9  # Fischer's inequality


@LAWS
@given(activations_and_labels(shape=SHAPES, n_classes=3, dtype=torch.float64), st.randoms())
def test_invariant_to_sample_order_and_unit_permutation(pair, rnd):
    t, y = pair
    rows = torch.tensor(rnd.sample(range(t.shape[0]), t.shape[0]))
    cols = torch.tensor(rnd.sample(range(t.shape[1]), t.shape[1]))
    moved = t[rows][:, cols]
    # A singular covariance (no more samples than units) is regularized by the ridge alone:
    # reordering changes its rounding by ~u·ε·tr(Σ), which log det amplifies by 1/ridge.
    u, trace = t.shape[1], float(t.var(0, correction=0).sum())
    tol = max(1e-9, 16 * u * torch.finfo(torch.float64).eps * (1 + trace / RIDGE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EstimatorAssumptionWarning)  # singular: warned
        assert entropy(moved).item() == pytest.approx(entropy(t).item(), rel=1e-9, abs=tol)
        i_ty = mutual_information_labels(t, y).item()
        assert mutual_information_labels(moved, y[rows]).item() == pytest.approx(
            i_ty, rel=1e-9, abs=2 * tol
        )
    assert i_ty >= -1e-9  # concavity of log det: the class-conditional form is >= 0


def test_gradcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 2, generator=g, dtype=torch.float64).requires_grad_(True)
    y = torch.randn(10, 2, generator=g, dtype=torch.float64).requires_grad_(True)
    labels = torch.arange(10) % 2
    assert torch.autograd.gradcheck(entropy, (x,))
    assert torch.autograd.gradcheck(mutual_information, (x, y))
    assert torch.autograd.gradcheck(lambda a: mutual_information_labels(a, labels), (x,))


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda z: mutual_information(z, z[:3]), "number of samples"),
        (lambda z: mutual_information_labels(z, torch.zeros(3, dtype=torch.long)), "labels"),
        (lambda z: entropy(z[:0]), "no samples"),
        (lambda z: entropy(z, ridge=-1.0), "non-negative"),
        (lambda z: entropy(torch.zeros_like(z), ridge=0.0), "not positive definite"),
    ],
)
def test_bad_arguments_raise_explained_errors(call, fragment):
    with pytest.raises(ConfigError, match=fragment) as err:
        call(torch.randn(6, 2))
    assert err.value.expected and err.value.fix


def test_plugin_conformance():
    PluginTester("gaussian").check_all()


def test_registry_record_and_information_plane():
    record = infoshape.get_estimator("gaussian")
    assert (record.unit, record.differentiable) == ("nats", True)
    assert record.function is mutual_information and record.information_plane is information_plane
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(30, 5, generator=g), torch.randn(30, 4, generator=g)
    values = record.information_plane(x.double(), t.double(), torch.arange(30) % 3)
    assert len(values) == 2
    assert all(v.ndim == 0 and bool(torch.isfinite(v)) for v in values)


def _relu_layer(n: int, d: int, n_classes: int, seed: int = 0):
    """A deterministic layer ``T = relu(X W)`` of ``n`` samples, ``d`` units, balanced labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    t = torch.relu(x @ torch.randn(d, d, generator=g, dtype=torch.float64))
    return x, t, torch.arange(n) % n_classes


def test_deterministic_layer_is_capped_at_h_y_and_warned():
    # the reported case: N = 360, d = 64, 10 classes (36 samples per class < 64 dimensions);
    # before the fix I(T;Y) = 231.7 nats for H(Y) = log 10 = 2.30
    x, t, labels = _relu_layer(360, 64, 10)
    with pytest.warns(EstimatorAssumptionWarning) as record:
        _, i_ty = information_plane(x, t, labels)
    conditions = {w.message.condition for w in record}
    assert conditions == {"ridge_dominated", "exceeds_h_y"}
    assert i_ty.item() == pytest.approx(math.log(10), abs=1e-12)  # capped at H(Y) exactly
    message = str(next(w.message for w in record if w.message.condition == "ridge_dominated"))
    assert "the ridge sets the result" in message and "36 samples in 64 dimensions" in message
    with pytest.warns(EstimatorAssumptionWarning) as record:
        raw = mutual_information_labels(t, labels, ceiling=False)
    message = str(record[-1].message)
    assert "exceeds H(Y)" in message and "capped" not in message
    assert raw.item() > 100  # the raw Gaussian value, still available and still warned


def test_fewer_samples_than_dimensions_warns_that_the_ridge_sets_the_result():
    # N = 200, d = 4096 gave 1632 nats; N = 20, d = 64 is the same regime, faster
    g = torch.Generator().manual_seed(1)
    z = torch.randn(20, 64, generator=g, dtype=torch.float64)
    for call in (entropy, lambda a: mutual_information(a, a[:, :3])):
        with pytest.warns(EstimatorAssumptionWarning, match="ridge sets") as record:
            call(z)
        assert record[0].message.condition == "ridge_dominated"
        assert "20 samples in 64 dimensions" in str(record[0].message)


def test_full_rank_data_give_no_warning():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(400, 3, generator=g, dtype=torch.float64)
    t = x @ torch.randn(3, 2, generator=g, dtype=torch.float64) + torch.randn(400, 2, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = information_plane(x, t, torch.arange(400) % 4)
    assert all(bool(torch.isfinite(v)) for v in values)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize(
    ("call", "what"),
    [
        (lambda z, lab: entropy(z), "x"),
        (lambda z, lab: mutual_information(z[:, :1], z), "y"),
        (lambda z, lab: mutual_information_labels(z, lab), "t"),
        (lambda z, lab: information_plane(z[:, :1], z, lab), "t"),
        (
            lambda z, lab: mutual_information_labels(z[:, :1].nan_to_num(0.0), lab.double()),
            "labels",
        ),
    ],
)
def test_nonfinite_input_is_refused_naming_how_many_values(call, what, bad):
    z = torch.randn(12, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    labels = (torch.arange(12) % 2).double()
    if what == "labels":
        labels[4] = bad
    z[4, 1] = z[7, 2] = bad
    with pytest.raises(NonFiniteError) as err:
        call(z, labels)
    kind = "NaN" if math.isnan(bad) else "Inf"
    count = 1 if what == "labels" else 2
    assert f"{count} {kind}" in str(err.value) or f"{count} ±{kind}" in str(err.value)
    assert "first: sample 4" in str(err.value) and f"{what} holds" in str(err.value)
