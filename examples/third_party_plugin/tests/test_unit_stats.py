"""Tests of the unit_stats plugin: closed form, laws, and infoshape's conformance kit."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from infoshape_unitstats import UnitStats, UnitStatsConfig, unit_statistics
from torch import nn

import infoshape
from infoshape.testing import PluginTester, activations

SHAPES = st.tuples(st.integers(1, 12), st.integers(1, 6))
CONV_SHAPES = st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3))


def test_closed_form_dense():
    x = torch.tensor(
        [
            [0.0, 1.0, 0.0, 2.0],
            [0.0, 3.0, 0.5, 0.0],
            [0.0, 0.0, 0.0, 4.0],
        ]
    )
    stats = unit_statistics(x)
    assert stats["active_fraction"] == pytest.approx(5 / 12)
    assert stats["dead_units"] == pytest.approx(1 / 4)  # unit 0 never fires
    assert stats["mean"] == pytest.approx(10.5 / 12)
    np.testing.assert_allclose(stats["unit_mean"], [0.0, 4 / 3, 0.5 / 3, 2.0])
    high = unit_statistics(x, threshold=1.0)
    assert high["active_fraction"] == pytest.approx(3 / 12)
    assert high["dead_units"] == pytest.approx(2 / 4)  # units 0 and 2 stay <= 1


def test_closed_form_conv_reduces_space_per_channel():
    x = torch.zeros(2, 3, 2, 2)
    x[0, 1, 0, 0] = 8.0  # channel 1 fires once among its 2 * 4 entries
    x[:, 2] = 1.0  # channel 2 always fires
    stats = unit_statistics(x)
    assert stats["unit_mean"].shape == (3,)
    np.testing.assert_allclose(stats["unit_mean"], [0.0, 1.0, 1.0])
    assert stats["dead_units"] == pytest.approx(1 / 3)
    assert stats["active_fraction"] == pytest.approx(9 / 24)
    assert stats["mean"] == pytest.approx(16 / 24)


def test_empty_input_is_refused_with_a_fix():
    with pytest.raises(ValueError, match="at least one sample"):
        unit_statistics(torch.zeros(0, 4))


@settings(max_examples=60, deadline=None)
@given(activations(shape=st.one_of(SHAPES, CONV_SHAPES)), st.floats(-1.0, 1.0))
def test_fractions_lie_in_unit_interval_and_agree(x, threshold):
    stats = unit_statistics(x, threshold)
    assert 0.0 <= stats["active_fraction"] <= 1.0
    assert 0.0 <= stats["dead_units"] <= 1.0
    assert stats["unit_mean"].shape == (x.shape[1],)
    # the overall mean is the mean of unit means (every unit has the same number of entries)
    assert stats["mean"] == pytest.approx(float(np.mean(stats["unit_mean"])), rel=1e-9, abs=1e-9)
    if stats["dead_units"] == 1.0:
        assert stats["active_fraction"] == 0.0


@settings(max_examples=60, deadline=None)
@given(activations(shape=SHAPES, nonnegative=True), st.randoms(use_true_random=False))
def test_invariant_to_permuting_samples_and_units(x, rnd):
    samples = torch.tensor(rnd.sample(range(x.shape[0]), x.shape[0]))
    units = torch.tensor(rnd.sample(range(x.shape[1]), x.shape[1]))
    a, b = unit_statistics(x), unit_statistics(x[samples][:, units])
    for key in ("active_fraction", "dead_units", "mean"):
        assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(b["unit_mean"], a["unit_mean"][units.numpy()], rtol=1e-9)


def test_config_validates_options():
    with pytest.raises(ValueError, match="finite"):
        UnitStatsConfig(dead_threshold=float("nan"))
    with pytest.raises(ValueError):
        UnitStatsConfig(modules="")


def test_conformance_by_entry_point_name():
    PluginTester("unit_stats").check_all()


def test_conformance_with_options_and_a_conv_model():
    model = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(1, 4, 3, padding=1),
            act=nn.ReLU(),
            flatten=nn.Flatten(),
            head=nn.Linear(4 * 6 * 6, 3),
        )
    )
    tester = PluginTester(
        UnitStats,
        options={"modules": "act", "dead_threshold": 0.1, "every_step": True},
        model=model,
        input_shape=(1, 6, 6),
    )
    tester.check_all()


def test_session_emits_the_metrics():
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(fc1=nn.Linear(5, 7), relu1=nn.ReLU(), fc2=nn.Linear(7, 2), relu2=nn.ReLU())
    )
    x, y = torch.randn(20, 5), torch.randint(0, 2, (20,))
    with infoshape.Session(model, plugins=["unit_stats"]) as session:
        loss = session.loss(session.model(x), y)
        loss.backward()
        session.step_end()
        metrics = session.epoch_end(probe=(x, y))
        without_probe = session.epoch_end()
    for capture, width in (("relu1", 7), ("relu2", 2)):
        expected = unit_statistics(model[:2](x) if capture == "relu1" else model(x))
        assert metrics[f"unit_stats.{capture}.active_fraction"] == pytest.approx(
            expected["active_fraction"]
        )
        assert metrics[f"unit_stats.{capture}.unit_mean"].shape == (width,)
    assert not any(k.startswith("unit_stats") for k in without_probe)
