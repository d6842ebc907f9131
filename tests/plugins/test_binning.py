"""binning: hand-computed entropies, the plug-in laws, the plugin and the registry."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import infoshape
from infoshape.errors import (
    ConfigError,
    EstimatorAssumptionWarning,
    NonFiniteError,
    PluginLoadError,
)
from infoshape.math.linalg import one_hot
from infoshape.plugins.binning import discretize, entropy, information_plane, mutual_information
from infoshape.testing import PluginTester, activations, activations_and_labels, labels, small_mlp

TIGHT = 1e-12
LOG2 = math.log(2)
SHAPES = st.tuples(st.integers(1, 32), st.integers(1, 5))
LAWS = settings(max_examples=40, deadline=None)
BINS = st.integers(1, 8)


def test_discretize_uses_equal_width_bins_over_the_layer_range():
    t = torch.tensor([[0.0, 0.1], [0.49, 0.5], [0.9, 1.0]])
    assert discretize(t, n_bins=2).tolist() == [[0, 0], [0, 1], [1, 1]]  # the max: last bin
    assert discretize(t, n_bins=4).tolist() == [[0, 0], [1, 2], [3, 3]]
    fixed = discretize(torch.tensor([[-3.0], [0.0], [3.0]]), n_bins=3, bounds=(-1.0, 1.0))
    assert fixed.tolist() == [[0], [1], [2]]  # outside the bounds: the edge bins
    assert discretize(torch.full((3, 2), 5.0)).tolist() == [[0, 0]] * 3  # constant layer
    assert discretize(t).dtype == torch.int64


def test_hand_computed_example():
    # rows bin to symbols A, B, C, C (2 bins per unit over [0, 1])
    t = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.9]])
    symbols = discretize(t, n_bins=2)
    h_t = 1.5 * LOG2  # p = (1/4, 1/4, 1/2)
    assert entropy(symbols).item() == pytest.approx(h_t, abs=TIGHT)
    # Y = (0, 0, 1, 1): H(T|Y=0) = log 2, H(T|Y=1) = 0, so I = 1.5 log 2 - 0.5 log 2
    assert mutual_information(symbols, torch.tensor([0, 0, 1, 1])).item() == pytest.approx(LOG2)
    # Y = (0, 1, 0, 1): H(T|Y=c) = log 2 for both classes, so I = 0.5 log 2
    assert mutual_information(symbols, torch.tensor([0, 1, 0, 1])).item() == pytest.approx(
        0.5 * LOG2
    )
    # repeated inputs (T stochastic given X): X = (a, a, b, b), H(T|X) = 0.5 log 2
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [3.0, 4.0], [3.0, 4.0]])
    i_xt, i_ty = information_plane(x, t, torch.tensor([0, 0, 1, 1]), n_bins=2)
    assert i_xt.item() == pytest.approx(LOG2, abs=TIGHT)
    assert i_ty.item() == pytest.approx(LOG2, abs=TIGHT)


@LAWS
@given(activations(shape=SHAPES, dtype=torch.float64), BINS)
def test_distinct_inputs_give_i_xt_equal_to_h_t(t, n_bins):
    x = torch.arange(t.shape[0], dtype=torch.float64)[:, None]  # distinct input rows
    i_xt, _ = information_plane(x, t, torch.zeros(t.shape[0], dtype=torch.long), n_bins)
    assert i_xt.item() == pytest.approx(entropy(discretize(t, n_bins)).item(), abs=1e-9)


@LAWS
@given(labels(st.integers(1, 40), n_classes=4))
def test_a_one_to_one_code_of_the_labels_carries_h_y(y):
    t = one_hot(y, 4)  # two bins over [0, 1]: one symbol per class
    i_ty = mutual_information(discretize(t, n_bins=2), y).item()
    assert i_ty == pytest.approx(entropy(y).item(), abs=1e-9)


@LAWS
@given(activations_and_labels(shape=SHAPES, n_classes=3, dtype=torch.float64), BINS)
def test_plug_in_laws(pair, n_bins):
    t, y = pair
    symbols = discretize(t, n_bins)
    h_t, h_y = entropy(symbols).item(), entropy(y).item()
    i_ty = mutual_information(symbols, y).item()
    assert 0.0 <= h_t <= math.log(t.shape[0]) + TIGHT
    assert 0.0 <= i_ty <= min(h_t, h_y) + 1e-9
    assert mutual_information(y, symbols).item() == i_ty  # symmetric


@LAWS
@given(activations_and_labels(shape=SHAPES, n_classes=3, dtype=torch.float64), st.randoms())
def test_invariant_to_sample_order_and_unit_permutation(pair, rnd):
    t, y = pair
    rows = torch.tensor(rnd.sample(range(t.shape[0]), t.shape[0]))
    cols = torch.tensor(rnd.sample(range(t.shape[1]), t.shape[1]))
    moved = discretize(t[rows][:, cols], 5)
    symbols = discretize(t, 5)
    assert entropy(moved).item() == pytest.approx(entropy(symbols).item(), abs=1e-9)
    assert mutual_information(moved, y[rows]).item() == pytest.approx(
        mutual_information(symbols, y).item(), abs=1e-9
    )


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: discretize(torch.zeros(3, 2), n_bins=0), "n_bins"),
        (lambda: discretize(torch.zeros(3, 2), bounds=(1.0, 1.0)), "empty bounds"),
        (lambda: mutual_information(torch.zeros(3), torch.zeros(4)), "number of samples"),
        (lambda: entropy(torch.zeros(0, 2)), "no samples"),
    ],
)
def test_bad_arguments_raise_explained_errors(call, fragment):
    with pytest.raises(ConfigError, match=fragment) as err:
        call()
    assert err.value.expected and err.value.fix


def test_epoch_metrics_for_tapped_layers():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 8, generator=g), torch.arange(40) % 3
    torch.manual_seed(0)
    options = {"binning": {"layers": ["relu*"], "n_bins": 10}}
    with infoshape.Session(small_mlp(), plugins=["binning"], options=options) as s:
        metrics = s.epoch_end(probe=(x, y))
    assert set(metrics) == {f"binning.relu{i}.{m}" for i in (1, 2) for m in ("I_TX", "I_TY")}
    for i in (1, 2):
        i_tx, i_ty = metrics[f"binning.relu{i}.I_TX"], metrics[f"binning.relu{i}.I_TY"]
        assert 0.0 <= i_ty <= min(i_tx, math.log(3)) + TIGHT
        assert i_tx <= math.log(40) + TIGHT


def test_bad_bounds_option_is_refused_at_session_start():
    with pytest.raises(PluginLoadError, match="bounds"):
        infoshape.Session(small_mlp(), plugins=["binning"], options={"binning": {"bounds": [1, 0]}})


@pytest.mark.parametrize("options", [None, {"layers": ["relu*"], "bounds": [0.0, 4.0]}])
def test_plugin_conformance(options):
    PluginTester("binning", options=options).check_all()


def test_registry_record_and_information_plane():
    record = infoshape.get_estimator("binning")
    assert (record.unit, record.differentiable) == ("nats", False)
    assert record.function is mutual_information and record.information_plane is information_plane
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(30, 5, generator=g), torch.randn(30, 4, generator=g)
    values = record.information_plane(x.double(), t.double(), torch.arange(30) % 3)
    assert len(values) == 2
    assert all(v.ndim == 0 and bool(torch.isfinite(v)) for v in values)


def test_saturated_binning_is_warned():
    # 64 distinct samples of 8 units in 30 bins: every sample in its own bin, H(T) = log 64
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(64, 4, generator=g), torch.randn(64, 8, generator=g)
    y = torch.arange(64) % 4
    with pytest.warns(EstimatorAssumptionWarning, match="bin of its own") as record:
        i_xt, i_ty = information_plane(x, t, y, n_bins=30)
    assert record[0].message.condition == "saturated"
    assert i_xt.item() == pytest.approx(math.log(64)) and i_ty.item() == pytest.approx(math.log(4))
    with warnings.catch_warnings():  # two bins per unit of one unit: far from log N
        warnings.simplefilter("error")
        information_plane(x, t[:, :1], y, n_bins=2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("what", ["x", "t", "labels"])
def test_nonfinite_input_is_refused_naming_how_many_values(what, bad):
    # before the fix, NaN in t gave finite numbers (I(T;Y) = 0.0)
    g = torch.Generator().manual_seed(1)
    args = {"x": torch.randn(10, 3, generator=g), "t": torch.randn(10, 4, generator=g)}
    args["labels"] = (torch.arange(10) % 2).double()
    args[what][6] = bad
    with pytest.raises(NonFiniteError, match=f"{what} holds") as err:
        information_plane(args["x"], args["t"], args["labels"])
    assert "first: sample 6" in str(err.value)
    count = 1 if what == "labels" else args[what].shape[1]
    assert f"{count} {'NaN' if math.isnan(bad) else '±Inf'}" in str(err.value)
    with pytest.raises(NonFiniteError):
        mutual_information(args[what], args["labels"].nan_to_num(0.0))
