"""kl_pairwise: closed-form cases, the bounds' laws, gradients, the plugin and the registry."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import infoshape
from infoshape.errors import (
    ConfigError,
    EstimatorAssumptionWarning,
    NonFiniteError,
    UnknownNameError,
)
from infoshape.plugins.kl_pairwise import (
    conditional_entropy,
    entropy_lower,
    entropy_upper,
    information_plane,
    mi_tx,
    mi_ty,
)
from infoshape.testing import PluginTester, activations, activations_and_labels, small_mlp

TIGHT = 1e-10  # float64 round-off on O(1..10) nats
SHAPES = st.tuples(st.integers(1, 24), st.integers(1, 6))
LAWS = settings(max_examples=40, deadline=None)


def test_identical_points_carry_no_information():
    z = torch.full((16, 3), 0.7, dtype=torch.float64)
    h_noise = 3 / 2 + (3 / 2) * math.log(2 * math.pi * 0.1)  # H_KL with every D_ij = 0
    assert entropy_upper(z).item() == pytest.approx(h_noise, abs=TIGHT)
    assert entropy_lower(z).item() == pytest.approx(h_noise, abs=TIGHT)
    assert conditional_entropy(3) == pytest.approx(h_noise, abs=TIGHT)
    for bound in ("upper", "lower"):
        assert abs(mi_tx(z, bound=bound).item()) < TIGHT


@pytest.mark.parametrize("bound", ["upper", "lower"])
def test_far_apart_points_reach_log_n(bound):
    n = 12
    z = 100.0 * torch.eye(n, dtype=torch.float64)  # D_ij = 2e4 ≫ 8σ²
    assert mi_tx(z, bound=bound).item() == pytest.approx(math.log(n), abs=TIGHT)
    labels = torch.arange(n) % 3  # balanced, and T identifies the sample
    assert mi_ty(z, labels, bound=bound).item() == pytest.approx(math.log(3), abs=TIGHT)


def test_two_points_match_the_hand_formula():
    r, var = 0.5, 0.1
    z = torch.tensor([[0.0], [r]], dtype=torch.float64)
    base = 0.5 + 0.5 * math.log(2 * math.pi * var) + math.log(2)
    upper = base - math.log(1 + math.exp(-(r**2) / (2 * var)))
    lower = base - math.log(1 + math.exp(-(r**2) / (8 * var)))  # Bhattacharyya D/(8σ²)
    assert entropy_upper(z, var).item() == pytest.approx(upper, abs=TIGHT)
    assert entropy_lower(z, var).item() == pytest.approx(lower, abs=TIGHT)


def test_bits_are_nats_over_log_two():
    z = torch.randn(20, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.arange(20) % 2
    assert mi_tx(z, unit="bits").item() == pytest.approx(mi_tx(z).item() / math.log(2), rel=1e-12)
    bits = mi_ty(z, y, unit="bits").item()
    assert bits == pytest.approx(mi_ty(z, y).item() / math.log(2), rel=1e-12)


def test_numpy_and_conv_shaped_inputs_are_flattened():
    z = np.random.default_rng(0).normal(size=(10, 2, 3, 3)).astype(np.float32)
    flat = torch.from_numpy(z.reshape(10, -1)).double()
    assert entropy_upper(z).item() == pytest.approx(entropy_upper(flat).item(), abs=1e-6)
    assert entropy_upper(flat).dtype == torch.float64


@LAWS
@given(activations(shape=SHAPES, dtype=torch.float64), st.sampled_from([1e-3, 0.05, 0.1, 1.0]))
def test_lower_bound_never_exceeds_upper_and_mi_is_in_range(z, var):
    assert entropy_lower(z, var) <= entropy_upper(z, var) + TIGHT
    lower, upper = mi_tx(z, var, "lower"), mi_tx(z, var, "upper")
    assert -TIGHT <= lower <= upper + TIGHT
    assert upper <= math.log(z.shape[0]) + TIGHT


@LAWS
@given(activations_and_labels(shape=SHAPES, n_classes=3, dtype=torch.float64))
def test_label_information_is_below_input_information_and_label_entropy(pair):
    z, y = pair
    counts = torch.bincount(y).double()
    p = counts[counts > 0] / len(y)
    h_y = float(-(p * p.log()).sum())
    for bound in ("upper", "lower"):
        i_ty = mi_ty(z, y, bound=bound).item()
        assert i_ty <= mi_tx(z, bound=bound).item() + TIGHT
        assert i_ty <= h_y + TIGHT <= math.log(3) + 2 * TIGHT


@LAWS
@given(activations_and_labels(shape=SHAPES, n_classes=3, dtype=torch.float64), st.randoms())
def test_invariant_to_sample_order_and_unit_permutation(pair, rnd):
    z, y = pair
    rows = torch.tensor(rnd.sample(range(z.shape[0]), z.shape[0]))
    cols = torch.tensor(rnd.sample(range(z.shape[1]), z.shape[1]))
    moved = z[rows][:, cols]
    for bound in ("upper", "lower"):
        assert mi_tx(moved, bound=bound).item() == pytest.approx(
            mi_tx(z, bound=bound).item(), abs=1e-9
        )
        assert mi_ty(moved, y[rows], bound=bound).item() == pytest.approx(
            mi_ty(z, y, bound=bound).item(), abs=1e-9
        )


def test_gradcheck():
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z.requires_grad_(True)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    assert torch.autograd.gradcheck(lambda a: entropy_upper(a, 0.5), (z,))
    assert torch.autograd.gradcheck(lambda a: entropy_lower(a, 0.5), (z,))
    assert torch.autograd.gradcheck(lambda a: mi_ty(a, y, 0.5, "lower"), (z,))


def test_gradient_flows_from_float32_captures():
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    mi_tx(z).backward()
    assert z.grad is not None and bool(torch.isfinite(z.grad).all()) and z.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda z: mi_tx(z, noise_var=0.0), "noise variance"),
        (lambda z: mi_tx(z, bound="middle"), "unknown bound"),
        (lambda z: entropy_upper(z, unit="bans"), "unknown unit"),
        (lambda z: mi_ty(z, torch.zeros(3, dtype=torch.long)), "labels and samples"),
        (lambda z: entropy_upper(z[:0]), "no samples"),
    ],
)
def test_bad_arguments_raise_explained_errors(call, fragment):
    with pytest.raises(ConfigError, match=fragment) as err:
        call(torch.zeros(4, 2))
    assert err.value.expected and err.value.fix


def test_epoch_metrics_for_tapped_layers():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 8, generator=g), torch.arange(40) % 3
    options = {"kl_pairwise": {"layers": ["fc1", "relu*"], "bound": "lower"}}
    torch.manual_seed(0)
    with infoshape.Session(small_mlp(), plugins=["kl_pairwise"], options=options) as s:
        assert s.epoch_end() == {}  # no probe set: nothing to measure
        metrics = s.epoch_end(probe=(x, y))
    assert set(metrics) == {
        f"kl_pairwise.{n}.{m}" for n in ("fc1", "relu1", "relu2") for m in ("I_TX", "I_TY")
    }
    for layer in ("fc1", "relu1", "relu2"):
        i_tx, i_ty = metrics[f"kl_pairwise.{layer}.I_TX"], metrics[f"kl_pairwise.{layer}.I_TY"]
        assert i_ty <= i_tx + TIGHT  # I(T;Y) >= 0 is not guaranteed by the estimator
        assert 0.0 <= i_tx <= math.log(40) + TIGHT


@pytest.mark.parametrize("options", [None, {"layers": ["fc1", "relu*"], "noise_var": 0.05}])
def test_plugin_conformance(options):
    PluginTester("kl_pairwise", options=options).check_all()


def test_registry_record_and_information_plane():
    record = infoshape.get_estimator("kl_pairwise")
    assert (record.unit, record.differentiable, record.function) == ("nats", True, mi_tx)
    assert record.information_plane is information_plane
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(30, 5, dtype=torch.float64, generator=g), torch.randn(30, 4, generator=g)
    values = record.information_plane(x.double(), t.double(), torch.arange(30) % 3)
    assert len(values) == 2
    assert all(v.ndim == 0 and bool(torch.isfinite(v)) for v in values)


def test_registry_lists_the_estimators_and_names_unknown_ones():
    names = {e.name for e in infoshape.list_estimators()}
    assert {"kl_pairwise", "binning", "ksg", "gaussian"} <= names
    with pytest.raises(UnknownNameError, match="did you mean 'ksg'") as err:
        infoshape.get_estimator("ksq")
    for name in ("binning", "gaussian", "kl_pairwise", "ksg"):
        assert name in err.value.expected


def test_saturation_at_log_n_is_warned():
    # samples ~ 3 apart against noise of std 0.03: every sample told apart, I(X;T) = log N
    g = torch.Generator().manual_seed(0)
    t, y = 3 * torch.randn(50, 4, generator=g, dtype=torch.float64), torch.arange(50) % 5
    with pytest.warns(EstimatorAssumptionWarning, match="tells every sample apart") as record:
        i_xt, _ = information_plane(None, t, y, noise_var=1e-3)
    assert record[0].message.condition == "saturated"
    assert i_xt.item() == pytest.approx(math.log(50), abs=0.05)
    with warnings.catch_warnings():  # noise at the scale of the data: well below log N
        warnings.simplefilter("error")
        information_plane(None, t, y, noise_var=10.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("what", ["x", "t", "labels"])
def test_nonfinite_input_is_refused_naming_how_many_values(what, bad):
    g = torch.Generator().manual_seed(1)
    args = {"x": torch.randn(10, 3, generator=g), "t": torch.randn(10, 4, generator=g)}
    args["labels"] = (torch.arange(10) % 2).double()
    args[what][2] = bad
    args[what][5] = bad
    with pytest.raises(NonFiniteError, match=f"{what} holds") as err:
        information_plane(args["x"], args["t"], args["labels"])
    assert "first: sample 2" in str(err.value)
    count = 2 if what == "labels" else 2 * args[what].shape[1]
    assert f"{count} {'NaN' if math.isnan(bad) else '±Inf'}" in str(err.value)
    assert "in 2 of 10 samples" in str(err.value)
