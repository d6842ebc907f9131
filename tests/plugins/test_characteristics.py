"""characteristics: hand computations on fixed matrices, invariance laws, plugin and store."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import infoshape
from infoshape.apps.models import build_model
from infoshape.errors import ConfigError
from infoshape.plugins.characteristics import (
    amplitude,
    characteristics,
    correlation,
    covariance,
    dead_units,
    default_layer,
    mutual_information,
    sparsity,
    stable_rank,
    stable_rank_cov,
)
from infoshape.plugins.kl_pairwise import mi_tx, mi_ty
from infoshape.testing import PluginTester, activations, small_mlp

TIGHT = 1e-12
# N = 4 samples, u = 3 units; unit 1 is dead.
Z = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 0.0], [0.0, 0.0, 4.0], [2.0, 0.0, 2.0]])


def test_amplitude_sparsity_dead_units_by_hand():
    assert amplitude(Z) == pytest.approx(14 / 12, abs=TIGHT)  # |z| sums to 14 over 12 entries
    assert sparsity(Z) == pytest.approx(6 / 12, abs=TIGHT)  # zeros per row: 1, 2, 2, 1
    assert dead_units(Z) == pytest.approx(1 / 3, abs=TIGHT)
    assert sparsity(Z, zero_tol=1.0) == pytest.approx(7 / 12, abs=TIGHT)
    assert dead_units(Z) <= sparsity(Z)  # eq. 5


def test_covariance_by_hand():
    # means 1.5, 0, 2; C_02 = ((-.5)(0) + (1.5)(-2) + (-1.5)(2) + (.5)(0)) / 4 = -1.5,
    # C_01 = C_12 = 0: the mean of |C_ij| over the 3 pairs is 1.5 / 3.
    assert covariance(Z) == pytest.approx(0.5, abs=TIGHT)
    assert math.isnan(covariance(Z[:, :1]))


def test_correlation_skips_dead_units_and_counts_positive_values():
    # live units 0 and 2: var 1.25 and 2, rho = -1.5 / sqrt(2.5); no positive rho
    assert correlation(Z, "absolute") == pytest.approx(1.5 / math.sqrt(2.5), abs=TIGHT)
    assert correlation(Z, "positive") == 0.0
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    c = torch.tensor([0.0, 0.0, 1.0, 0.0])
    w = torch.stack([a, c, 5.0 - a], dim=1)
    # rho(a, c) = .125 / sqrt(1.25 * .1875) = 1/sqrt(15), rho(c, 5-a) = -1/sqrt(15),
    # rho(a, 5-a) = -1
    assert correlation(w, "positive") == pytest.approx(1 / math.sqrt(15), abs=TIGHT)
    assert correlation(w, "absolute") == pytest.approx((1 + 2 / math.sqrt(15)) / 3, abs=TIGHT)
    assert math.isnan(correlation(torch.zeros(5, 3)))
    with pytest.raises(ConfigError, match="correlation mode"):
        correlation(Z, "signed")


def test_stable_rank_by_hand():
    # ||Z||_F^2 = 38; Z^T Z on the live units is [[14, 6], [6, 24]], top eigenvalue 19 + sqrt(61)
    raw = 38 / (19 + math.sqrt(61))
    assert stable_rank(Z, normalize=False) == pytest.approx(raw, rel=1e-10)
    assert stable_rank(Z) == pytest.approx(raw / 3, rel=1e-10)  # min(N, u) = 3
    assert stable_rank(torch.eye(5)) == pytest.approx(1.0, abs=TIGHT)
    assert stable_rank(torch.ones(6, 4)) == pytest.approx(1 / 4, abs=TIGHT)
    assert stable_rank(torch.zeros(3, 2)) == 0.0


def test_stable_rank_cov_by_hand():
    # C on the live units 0, 2 is [[5/4, -3/2], [-3/2, 2]] (test_covariance_by_hand):
    # trace 13/4, det 1/4, so ||C||_F^2 = trace^2 - 2 det = 161/16 and
    # lambda_max = (13/4 + sqrt(153)/4) / 2: the ratio is 644 / (13 + sqrt(153))^2
    raw = 644 / (13 + math.sqrt(153)) ** 2
    assert stable_rank_cov(Z, normalize=False) == pytest.approx(raw, rel=1e-10)
    assert stable_rank_cov(Z) == pytest.approx(raw / 3, rel=1e-10)  # min(N, u) = 3


def test_stable_rank_cov_ignores_the_mean_direction():
    # W = 10 + E, the columns of E sum to 0: C = E^T E / 4 = I / 2, so ||C||_F^2/||C||_2^2 = 2;
    # uncentred W^T W = 400 J + 2 I (eigenvalues 802, 2) and ||W||_F^2 = 804
    e = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    w = 10.0 + e
    assert stable_rank_cov(w, normalize=False) == pytest.approx(2.0, rel=1e-12)
    assert stable_rank_cov(w) == pytest.approx(1.0, rel=1e-12)  # min(N, u) = 2
    assert stable_rank(w) == pytest.approx(804 / 802 / 2, rel=1e-6)
    for constant in (
        torch.zeros(3, 2),
        torch.full((6, 4), 3.7),
        torch.tensor([[0.1, 0.2, 0.3]] * 7),
    ):
        assert stable_rank_cov(constant) == 0.0
    assert stable_rank_cov(Z[:1]) == 0.0  # one sample: C = 0


def test_stable_rank_cov_is_the_paper_formula_on_numpy_covariance():
    rng = np.random.default_rng(0)
    for n, u in ((50, 7), (5, 12), (30, 30)):
        z = np.maximum(rng.normal(size=(n, u)) @ rng.normal(size=(u, u)) + 0.5, 0.0)
        c = np.cov(z, rowvar=False, bias=True)
        expected = np.linalg.norm(c, "fro") ** 2 / np.linalg.norm(c, 2) ** 2
        assert stable_rank_cov(z, normalize=False) == pytest.approx(expected, rel=1e-9)
        assert stable_rank_cov(torch.from_numpy(z)) == pytest.approx(expected / min(n, u), rel=1e-9)
        shifted = z + rng.uniform(-5.0, 5.0, size=u)  # a shift per unit leaves C as it is
        assert stable_rank_cov(shifted) == pytest.approx(expected / min(n, u), rel=1e-9)


@settings(max_examples=30, deadline=None)
@given(activations(shape=st.tuples(st.integers(2, 20), st.integers(1, 6))), st.randoms())
def test_stable_rank_cov_invariances(z, rnd):
    # sample order and unit order change neither C's spectrum nor Z's singular values
    z = z.double()
    rows = torch.tensor(rnd.sample(range(z.shape[0]), z.shape[0]))
    cols = torch.tensor(rnd.sample(range(z.shape[1]), z.shape[1]))
    value = stable_rank_cov(z)
    assert 0.0 <= value <= 1.0 + 1e-12
    assert stable_rank_cov(z[rows]) == pytest.approx(value, rel=1e-9, abs=1e-12)
    assert stable_rank_cov(z[:, cols]) == pytest.approx(value, rel=1e-9, abs=1e-12)
    assert stable_rank(z[rows][:, cols]) == pytest.approx(stable_rank(z), rel=1e-9, abs=1e-12)


def test_mutual_information_far_apart_points():
    n = 12
    z = 100.0 * torch.eye(n)  # every pair far apart: I(z;x) = log N, I(z;y) = H(Y)
    labels = torch.arange(n) % 3
    values = mutual_information(z, labels)
    assert set(values) == {"I_zx_upper", "I_zx_lower", "I_zy_upper", "I_zy_lower"}
    for bound in ("upper", "lower"):
        assert values[f"I_zx_{bound}"] == pytest.approx(math.log(n), abs=1e-9)
        assert values[f"I_zy_{bound}"] == pytest.approx(math.log(3), abs=1e-9)


def test_mutual_information_is_the_kl_pairwise_estimate():
    g = torch.Generator().manual_seed(0)
    z, y = torch.rand(30, 5, generator=g), torch.arange(30) % 4
    values = mutual_information(z, y, noise_var=0.05, bounds=("lower",))
    assert values == {
        "I_zx_lower": pytest.approx(float(mi_tx(z, 0.05, "lower")), abs=TIGHT),
        "I_zy_lower": pytest.approx(float(mi_ty(z, y, 0.05, "lower")), abs=TIGHT),
    }


def test_characteristics_collects_every_value_and_accepts_numpy():
    values = characteristics(Z.numpy(), np.array([0, 1, 0, 1]))
    assert values["covariance"] == pytest.approx(0.5, abs=TIGHT)
    assert values["sparsity"] == pytest.approx(0.5, abs=TIGHT)
    assert len(values) == 11
    assert "I_zx_upper" not in characteristics(Z)  # no labels: no I(z;y), I(z;x)


@settings(max_examples=30, deadline=None)
@given(
    activations(shape=st.tuples(st.integers(3, 20), st.integers(2, 6)), nonnegative=True),
    st.randoms(),
)
def test_correlation_survives_permuted_positive_scaling_and_covariance_does_not(z, rnd):
    # Theorem 2: a permuted positive diagonal Q keeps the network's output; rho is invariant
    z = z.double()
    perm = torch.tensor(rnd.sample(range(z.shape[1]), z.shape[1]))
    scale = torch.tensor([rnd.uniform(0.5, 3.0) for _ in range(z.shape[1])], dtype=torch.float64)
    moved = z[:, perm] * scale
    for mode in ("positive", "absolute"):
        a, b = correlation(z, mode), correlation(moved, mode)
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-8)
    assert sparsity(moved) == sparsity(z) and dead_units(moved) == dead_units(z)
    assert covariance(2 * z) == pytest.approx(4 * covariance(z), rel=1e-12, abs=1e-300)


def test_default_layer_is_the_last_hidden_layer():
    assert default_layer(build_model("mlp", (1, 8, 8), 10, hidden=[16, 8, 4])) == "relu3"
    assert default_layer(small_mlp()) == "relu2"
    with pytest.raises(ConfigError, match="last hidden layer"):
        default_layer(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_epoch_metrics_match_the_functions_and_reach_the_store(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 8, generator=g), torch.arange(40) % 3
    torch.manual_seed(0)
    model = small_mlp()
    store = tmp_path / "run.zarr"
    options = {"characteristics": {"layers": ["relu*"], "correlation": "absolute"}}
    with infoshape.Session(model, plugins=["characteristics"], options=options, store=store) as s:
        assert s.epoch_end() == {}  # no probe set: nothing to measure
        metrics = s.epoch_end(probe=(x, y))
    with torch.no_grad():
        relu2 = model[:4](x)
    expected = characteristics(relu2, y, correlation_mode="absolute")
    assert {k: v for k, v in metrics.items() if k.startswith("characteristics.relu2.")} == {
        f"characteristics.relu2.{k}": pytest.approx(v, rel=1e-6, abs=1e-9)
        for k, v in expected.items()
    }
    assert len(metrics) == 22  # relu1 and relu2
    saved = infoshape.open_store(store)["metrics"].to_dataset()
    assert float(saved["characteristics.relu2.sparsity"].sel(epoch=1)) == pytest.approx(
        expected["sparsity"], abs=1e-12
    )


@pytest.mark.parametrize("options", [None, {"layers": ["fc1", "relu1"], "bounds": ["upper"]}])
def test_plugin_conformance(options):
    PluginTester("characteristics", options=options).check_all()
