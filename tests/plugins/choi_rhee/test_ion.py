"""ION/CPN analysis: recovered maps, non-equivalent pairs, and Theorem 2 on stored activations."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import infoshape
from infoshape.errors import ConfigError, UnknownNameError
from infoshape.plugins.choi_rhee.ion import (
    check_equivalence,
    compare,
    fit_linear,
    fit_relu,
    numerical_rank,
    representation,
)
from infoshape.testing import small_mlp

RNG = np.random.default_rng(0)


def _nonsingular(u: int, rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=(u, u))
    assert np.linalg.cond(q) < 1e4
    return q


def test_linear_ion_is_recovered_with_its_q_and_m():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(200, 10))  # a linear layer's representation
    q, m = _nonsingular(10, rng), rng.normal(size=10)
    b = (a - m) @ q.T  # Theorem 1, eq. 2: z~ = Q (z - m)
    fit = fit_linear(a, b)
    assert fit.residual < 1e-10 and fit.equivalent()
    np.testing.assert_allclose(fit.q, q, atol=1e-8)
    np.testing.assert_allclose(-np.linalg.solve(fit.q, fit.offset), m, atol=1e-8)  # m = -Q^-1 c
    np.testing.assert_allclose(fit.apply(a), b, atol=1e-8)
    assert np.isfinite(fit.condition)


def test_relu_ion_is_recovered_with_its_permutation_and_scales():
    rng = np.random.default_rng(2)
    a = np.maximum(rng.normal(size=(300, 12)), 0.0)
    perm, scales = rng.permutation(12), rng.uniform(0.5, 2.0, size=12)
    b = a[:, perm] * scales  # Theorem 2, eq. 4: z~ = Q z, Q a permuted positive diagonal
    fit = fit_relu(a, b)
    assert fit.residual < 1e-12 and fit.equivalent()
    np.testing.assert_array_equal(fit.permutation, perm)
    np.testing.assert_allclose(fit.scales, scales, rtol=1e-12)
    assert fit_linear(a, b).equivalent()  # a permuted diagonal is linear too


def test_a_mixed_relu_representation_is_linear_but_not_relu_equivalent():
    # Table 3's CPN "ones with random positive diagonal": Q mixes units; b = a Q^T stays a
    # linear image of a, but no permuted positive diagonal reproduces it
    rng = np.random.default_rng(3)
    a = np.maximum(rng.normal(size=(300, 8)), 0.0)
    q = np.ones((8, 8)) + np.diag(rng.uniform(0, 1, size=8))
    b = a @ q.T
    assert fit_linear(a, b).equivalent()
    relu = fit_relu(a, b)
    assert relu.residual > 0.3 and not relu.equivalent()


def test_non_equivalent_pair_gives_a_large_residual():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(300, 6))
    b = np.maximum(a @ rng.normal(size=(6, 6)), 0.0) ** 2  # a nonlinear image
    c = rng.normal(size=(300, 6))  # unrelated
    for other in (b, c):
        assert fit_linear(a, other).residual > 0.3
        assert fit_relu(np.maximum(a, 0), other).residual > 0.3
    assert not fit_linear(a, c).equivalent()


def test_dead_units_do_not_break_the_linear_check():
    rng = np.random.default_rng(5)
    a = np.maximum(rng.normal(size=(100, 6)), 0.0)
    a[:, [1, 4]] = 0.0  # two dead units: least squares cannot identify Q on them
    b = a[:, ::-1] * 3.0
    assert fit_linear(a, b).equivalent()
    relu = fit_relu(a, b)
    assert relu.equivalent()
    np.testing.assert_allclose(relu.scales, [3, 1, 3, 3, 1, 3], rtol=1e-12)  # dead: scale 1


def test_numerical_rank():
    rng = np.random.default_rng(6)
    low = rng.normal(size=(50, 3)) @ rng.normal(size=(3, 8))
    assert numerical_rank(low) == 3
    assert numerical_rank(np.ones((5, 4))) == 0  # centred: nothing varies


def test_compare_checks_the_papers_claims():
    rng = np.random.default_rng(7)
    a = np.maximum(rng.normal(size=(200, 10)), 0.0)
    scaled = compare(a, a[:, rng.permutation(10)] * rng.uniform(0.2, 5.0, size=10))
    assert set(scaled.claims) == {
        "linear_ion_keeps_rank",
        "relu_ion_keeps_correlation",
        "relu_ion_keeps_sparsity",
        "relu_ion_keeps_dead_units",
    }
    assert all(scaled.claims.values())
    covs = scaled.characteristics["a"]["covariance"], scaled.characteristics["b"]["covariance"]
    assert abs(covs[0] - covs[1]) > 1e-3  # covariance is not kept: it scales
    mixed = compare(a, a @ (np.ones((10, 10)) + np.eye(10)).T)
    assert mixed.claims == {"linear_ion_keeps_rank": True}  # Theorem 2 does not apply
    corr = mixed.characteristics["a"]["correlation"], mixed.characteristics["b"]["correlation"]
    assert corr[1] > corr[0] + 0.3  # Theorem 1: an ION can raise correlation at will
    text = scaled.format()
    assert "relu    residual" in text and "claim relu_ion_keeps_correlation: holds" in text


def test_bad_inputs_raise_explained_errors():
    with pytest.raises(ConfigError, match="different numbers of samples"):
        fit_linear(np.zeros((4, 2)), np.zeros((5, 2)))
    with pytest.raises(ConfigError, match="fewer units"):
        fit_relu(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ConfigError, match="samples and features"):
        fit_linear(np.zeros(4), np.zeros(4))


def _store(path, model, x, y, epochs=1, first=100):
    with infoshape.Session(model, taps=[infoshape.Tap("relu1", store=True)], store=path) as s:
        for _ in range(epochs):
            s.epoch_end(probe=(x, y, np.arange(first, first + len(y))))


def test_theorem_two_network_on_stored_activations(tmp_path):
    # build the ION of Theorem 2: W1~ = Q W1, b1~ = Q b1, W2~ = W2 Q^-1 with Q = P D
    torch.manual_seed(0)
    model = small_mlp()
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(16, generator=g)
    d = torch.rand(16, generator=g) + 0.5
    with torch.no_grad():
        other.fc1.weight.copy_(d[:, None] * model.fc1.weight[perm])
        other.fc1.bias.copy_(d * model.fc1.bias[perm])
        other.fc2.weight.copy_(model.fc2.weight[:, perm] / d)
    x, y = torch.randn(60, 8, generator=g), torch.arange(60) % 3
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x))  # eq. 3: identical outputs
    _store(tmp_path / "a.zarr", model, x, y, epochs=2)
    _store(tmp_path / "b.zarr", other, x[10:], y[10:], first=110)  # overlapping probe sets
    report = check_equivalence(tmp_path / "a.zarr", tmp_path / "b.zarr", tap="relu1", tol=1e-4)
    assert report.relu is not None and report.relu.equivalent(1e-4)
    np.testing.assert_allclose(report.relu.scales, d.numpy(), rtol=1e-4)
    np.testing.assert_array_equal(report.relu.permutation, perm.numpy())
    assert report.claims and all(report.claims.values())
    assert "50 samples" in report.source
    same = check_equivalence(tmp_path / "a.zarr", tap="relu1", epoch_a=0, epoch_b=1)
    assert same.linear.residual < 1e-12  # no training between the epochs


def test_representation_reads_a_tap_and_refuses_unknown_ones(tmp_path):
    x, y = torch.randn(20, 8), torch.arange(20) % 3
    _store(tmp_path / "a.zarr", small_mlp(), x, y)
    values, samples = representation(tmp_path / "a.zarr", "relu1")
    assert values.shape == (20, 16) and samples.tolist() == list(range(100, 120))
    with pytest.raises(UnknownNameError, match="relu1"):
        representation(tmp_path / "a.zarr", "relu9")
    with pytest.raises(ConfigError, match="epoch 3"):
        representation(tmp_path / "a.zarr", "relu1", epoch=3)
