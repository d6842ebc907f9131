"""ksg: agreement with closed forms on Gaussians, laws, the plugin and the registry.

Tolerances: KSG is consistent but has O(1/sqrt(N)) noise; over seeds 0-4 at N = 2000 the
1-D errors stay below 0.02 nats and the 2+2-D and mixed (Ross) errors below 0.03 nats, so the
seeded tests allow 0.05 nats (0.06 in 2+2-D).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import infoshape
from infoshape.errors import ConfigError
from infoshape.plugins.ksg import information_plane, mutual_information, mutual_information_mixed
from infoshape.testing import PluginTester, activations, activations_and_labels

N = 2000
LAWS = settings(max_examples=30, deadline=None)
SHAPES = st.tuples(st.integers(5, 30), st.integers(1, 4))
EXACT = {"standardize": False, "jitter": 0.0}  # distances computed identically in any order


def correlated(rho: float, dims: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``dims`` independent pairs (x_i, y_i) of unit Gaussians with correlation ``rho``."""
    z = torch.randn(N, 2 * dims, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = z[:, :dims]
    return x, rho * x + math.sqrt(1 - rho**2) * z[:, dims:]


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_correlated_gaussians_match_the_closed_form(rho):
    x, y = correlated(rho)
    assert mutual_information(x, y).item() == pytest.approx(-0.5 * math.log(1 - rho**2), abs=0.05)


def test_correlated_gaussian_vectors_match_the_closed_form():
    x, y = correlated(0.6, dims=2)
    assert mutual_information(x, y).item() == pytest.approx(-math.log(1 - 0.36), abs=0.06)


def test_class_conditional_gaussians_match_the_mixture_entropy():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (N,), generator=g)
    t = (2.0 * y - 1.0)[:, None] + torch.randn(N, 1, generator=g, dtype=torch.float64)
    grid = np.linspace(-12, 12, 200_001)  # H(T) of ½N(−1,1) + ½N(1,1) by quadrature
    f = (np.exp(-((grid - 1) ** 2) / 2) + np.exp(-((grid + 1) ** 2) / 2)) / (2 * np.sqrt(2 * np.pi))
    exact = -np.trapezoid(f * np.log(f), grid) - 0.5 * math.log(2 * math.pi * math.e)
    assert mutual_information_mixed(t, y).item() == pytest.approx(exact, abs=0.05)


def test_labels_of_separated_clusters_carry_h_y_and_random_labels_none():
    g = torch.Generator().manual_seed(1)
    y = torch.arange(300) % 3
    t = 100.0 * y[:, None] + torch.randn(300, 2, generator=g, dtype=torch.float64)
    assert mutual_information_mixed(t, y).item() == pytest.approx(math.log(3), abs=0.01)
    noise = torch.randn(N, 3, generator=g, dtype=torch.float64)
    assert abs(mutual_information_mixed(noise, torch.arange(N) % 3).item()) < 0.04


def test_standardization_makes_it_scale_invariant_and_the_jitter_reproducible():
    x, y = correlated(0.5)
    base = mutual_information(x, y).item()
    assert mutual_information(1e3 * x, 1e-3 * y).item() == pytest.approx(base, abs=1e-9)
    assert mutual_information(x, y).item() == base


@LAWS
@given(activations(shape=SHAPES, dtype=torch.float64), activations(shape=(30, 2)))
def test_symmetric(x, y):
    y = y[: x.shape[0]]
    assert mutual_information(x, y).item() == pytest.approx(mutual_information(y, x).item())


@LAWS
@given(activations_and_labels(shape=SHAPES, n_classes=2, dtype=torch.float64), st.randoms())
def test_invariant_to_sample_order_and_unit_permutation(pair, rnd):
    t, y = pair
    rows = torch.tensor(rnd.sample(range(t.shape[0]), t.shape[0]))
    cols = torch.tensor(rnd.sample(range(t.shape[1]), t.shape[1]))
    moved = t[rows][:, cols]
    x = t[:, :1] * 2.0 + 1.0
    assert mutual_information(moved, x[rows], **EXACT).item() == pytest.approx(
        mutual_information(t, x, **EXACT).item(), abs=1e-9
    )
    if int(torch.bincount(y).max()) > 1:
        assert mutual_information_mixed(moved, y[rows], **EXACT).item() == pytest.approx(
            mutual_information_mixed(t, y, **EXACT).item(), abs=1e-9
        )


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda z: mutual_information(z, z, k=10), "more samples than neighbours"),
        (lambda z: mutual_information(z, z[:3]), "number of samples"),
        (lambda z: mutual_information_mixed(z, torch.zeros(3, dtype=torch.long)), "labels and"),
        (lambda z: mutual_information_mixed(z, torch.arange(6)), "classes of two"),
    ],
)
def test_bad_arguments_raise_explained_errors(call, fragment):
    with pytest.raises(ConfigError, match=fragment) as err:
        call(torch.randn(6, 2))
    assert err.value.expected and err.value.fix


def test_plugin_conformance():
    PluginTester("ksg").check_all()


def test_registry_record_and_information_plane():
    record = infoshape.get_estimator("ksg")
    assert (record.unit, record.differentiable) == ("nats", False)
    assert record.function is mutual_information and record.information_plane is information_plane
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(60, 5, generator=g), torch.randn(60, 4, generator=g)
    values = record.information_plane(x.double(), t.double(), torch.arange(60) % 3)
    assert len(values) == 2
    assert all(v.ndim == 0 and bool(torch.isfinite(v)) for v in values)
