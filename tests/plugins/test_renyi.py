"""The renyi plugin: closed forms, laws, gradients, the Lanczos path, kernel widths, the plugin.

Tolerances: closed forms 1e-9 (float64 eigvalsh); α → 1 continuity 1e-3 nats at α = 1.0001;
the Lanczos path 1 % of the exact entropy at N = 1500 (its stated error); laws 1e-8 relative.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import infoshape
from infoshape.errors import ConfigError, NonFiniteError
from infoshape.math import matrix_entropy
from infoshape.plugins import renyi
from infoshape.plugins.renyi import (
    Renyi,
    SigmaAverage,
    convert_sigma,
    entropy,
    gram,
    information_plane,
    joint_entropy,
    label_gram,
    mutual_information,
    normalize,
    select_sigma,
    silverman_sigma,
)
from infoshape.testing import PluginTester, activations, labels

ALPHAS = [0.5, 1.0, 1.01, 2.0, 3.0]
LAWS = settings(max_examples=40, deadline=None)
SHAPES = st.tuples(st.integers(3, 20), st.integers(1, 5))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _a(x, sigma=1.0):
    return normalize(gram(x, sigma))


# ------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("alpha", ALPHAS)
def test_identical_points_have_zero_entropy(alpha):
    A = _a(torch.full((40, 3), 2.5))  # K all ones: A = 1/N everywhere, one eigenvalue 1
    assert torch.allclose(A, torch.full((40, 40), 1 / 40, dtype=torch.float64))
    assert abs(float(entropy(A, alpha))) < 1e-9


@pytest.mark.parametrize("alpha", ALPHAS)
def test_far_apart_points_have_entropy_log_n(alpha):
    A = _a(100.0 * torch.eye(30))  # distances 141 σ: A = I/N
    assert float(entropy(A, alpha)) == pytest.approx(math.log(30), abs=1e-9)
    assert float(entropy(A, alpha, base=2)) == pytest.approx(math.log2(30), abs=1e-9)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_balanced_one_hot_gram_has_entropy_log_c(alpha):
    y = torch.arange(60) % 4
    A = normalize(label_gram(y))
    assert float(entropy(A, alpha)) == pytest.approx(math.log(4), abs=1e-9)
    # K_y ∘ K_y = K_y: the joint of the labels with themselves is H(Y), so I(Y;Y) = H(Y)
    assert float(joint_entropy(A, A, alpha)) == pytest.approx(math.log(4), abs=1e-9)
    assert float(mutual_information(y, y, alpha)) == pytest.approx(math.log(4), abs=1e-9)


def test_alpha_to_one_is_continuous_with_von_neumann():
    A = _a(torch.randn(80, 4, generator=_gen(), dtype=torch.float64), 1.5)
    von_neumann = float(entropy(A, 1.0))
    lam = torch.linalg.eigvalsh(A).clamp_min(1e-300)
    assert von_neumann == pytest.approx(float(-(lam * lam.log()).sum()), abs=1e-9)
    assert float(entropy(A, 1.0001)) == pytest.approx(von_neumann, abs=1e-3)
    assert float(entropy(A, 0.9999)) == pytest.approx(von_neumann, abs=1e-3)


def test_alpha_two_shortcut_equals_eigen_path():
    A = _a(torch.randn(60, 3, generator=_gen(1), dtype=torch.float64))
    lam = torch.linalg.eigvalsh(A)
    assert float(entropy(A, 2.0)) == pytest.approx(float(-torch.log((lam**2).sum())), abs=1e-10)
    assert float(entropy(A, 2.0)) == pytest.approx(float(entropy(A, 2.0 + 1e-9)), abs=1e-6)


def test_joint_of_a_matrix_with_itself():
    A = _a(torch.randn(50, 3, generator=_gen(2), dtype=torch.float64))
    B = A * A / torch.trace(A * A)
    assert float(joint_entropy(A, A)) == pytest.approx(float(entropy(B)), abs=1e-12)
    assert float(joint_entropy(A, A)) >= float(entropy(A)) - 1e-9  # joint ≥ marginal


# ------------------------------------------------------------------ laws
@LAWS
@given(activations(SHAPES, dtype=torch.float64), st.data())
def test_entropy_and_mutual_information_are_nonnegative_and_bounded(x, data):
    y = data.draw(activations((x.shape[0], 2), dtype=torch.float64))
    A = normalize(gram(x, silverman_sigma(x)))
    assert -1e-12 <= float(entropy(A)) <= math.log(x.shape[0]) + 1e-9  # round-off only
    assert float(mutual_information(x, y)) >= -1e-8
    assert float(mutual_information(x, y, 1.0)) >= -1e-8


def test_mutual_information_can_be_negative_far_from_alpha_one():
    """Not a law of the matrix functional: hypothesis found this example at α = 2."""
    x = torch.tensor([[0.0], [1.0], [1.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    assert float(mutual_information(x, y, 2.0)) < -0.01
    assert float(mutual_information(x, y, 1.01)) >= 0


@LAWS
@given(activations(SHAPES, dtype=torch.float64), st.data())
def test_mutual_information_is_symmetric(x, data):
    y = data.draw(activations((x.shape[0], 3), dtype=torch.float64))
    forward = mutual_information(x, y, sigma_x=2.0, sigma_y=3.0)
    assert float(forward) == pytest.approx(
        float(mutual_information(y, x, 1.01, 3.0, 2.0)), abs=1e-9
    )


@LAWS
@given(activations(SHAPES, dtype=torch.float64), st.data(), st.randoms())
def test_invariant_to_sample_order_and_unit_permutation(x, data, rnd):
    n, u = x.shape
    y = data.draw(labels(n, 3))
    rows = torch.tensor(rnd.sample(range(n), n))
    cols = torch.tensor(rnd.sample(range(u), u))
    base = float(mutual_information(x, y))
    assert float(mutual_information(x[rows], y[rows])) == pytest.approx(base, abs=1e-8)
    assert float(mutual_information(x[:, cols], y)) == pytest.approx(base, abs=1e-8)


@LAWS
@given(activations(SHAPES, dtype=torch.float64), st.floats(0.01, 100.0))
def test_scaling_x_and_sigma_together_leaves_mutual_information_unchanged(x, c):
    x = torch.where(x.abs() < 1e-100, 0.0, x)  # c·x must stay exact: no subnormal values
    y = torch.arange(x.shape[0]) % 2
    base = float(mutual_information(x, y, sigma_x=1.7))
    assert float(mutual_information(c * x, y, sigma_x=1.7 * c)) == pytest.approx(base, abs=1e-7)
    if bool((x != x[0]).any()):  # constant data get σ = 1 whatever their scale
        assert silverman_sigma(c * x) == pytest.approx(c * silverman_sigma(x), rel=1e-9)


def test_mutual_information_of_correlated_gaussians_rises_with_rho():
    """Common random numbers: y = ρ·z₁ + √(1−ρ²)·z₂ for the same z, N = 400.

    Independent data give a small positive bias, not 0: below 0.03 nats with σ = 1 (the data's
    std), about 0.15 nats with Silverman's narrower width (seeds 0–4: 0.14–0.18).
    """
    z = torch.randn(400, 2, generator=_gen(3), dtype=torch.float64)
    fixed, silverman = [], []
    for rho in (0.0, 0.3, 0.6, 0.9):
        y = rho * z[:, :1] + math.sqrt(1 - rho * rho) * z[:, 1:]
        fixed.append(float(mutual_information(z[:, :1], y, sigma_x=1.0, sigma_y=1.0)))
        silverman.append(float(mutual_information(z[:, :1], y)))
    for values in (fixed, silverman):
        assert values == sorted(set(values))  # strictly increasing
    assert fixed[0] < 0.03 and fixed[-1] > 0.3
    assert silverman[0] < 0.25


# ------------------------------------------------------------------ gradients, conventions
@pytest.mark.parametrize("alpha", [0.7, 1.0, 1.01, 2.0])
def test_gradcheck_entropy_and_mutual_information(alpha):
    x = torch.randn(7, 3, generator=_gen(4), dtype=torch.float64, requires_grad=True)
    y = torch.randn(7, 2, generator=_gen(5), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: entropy(_a(a, 1.2), alpha), (x,))
    assert torch.autograd.gradcheck(
        lambda a, b: mutual_information(a, b, alpha, sigma_x=1.2, sigma_y=0.9), (x, y)
    )
    labels_ = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    assert torch.autograd.gradcheck(lambda a: mutual_information(a, labels_, alpha, 1.0), (x,))


@pytest.mark.parametrize("convention", ["sigma2", "sigma"])
def test_kernel_conventions_agree_after_conversion(convention):
    x = torch.randn(40, 5, generator=_gen(6), dtype=torch.float64)
    y = torch.arange(40) % 3
    other = convert_sigma(1.3, "2sigma2", convention)
    assert torch.allclose(gram(x, 1.3), gram(x, other, convention), atol=1e-14)
    assert convert_sigma(other, convention, "2sigma2") == pytest.approx(1.3, rel=1e-12)
    reference = float(mutual_information(x, y, sigma_x=1.3))
    assert float(mutual_information(x, y, sigma_x=other, convention=convention)) == pytest.approx(
        reference, abs=1e-12
    )
    assert float(mutual_information(x, y, convention=convention)) == pytest.approx(
        float(mutual_information(x, y)), abs=1e-12
    )  # Silverman's width is converted too
    select = select_sigma(x, y, convention=convention)
    assert convert_sigma(select, convention, "2sigma2") == pytest.approx(select_sigma(x, y))


# ------------------------------------------------------------------ the Lanczos path
def _data(kind: str, n: int) -> torch.Tensor:
    g = _gen(7)
    if kind == "gaussian":
        return torch.randn(n, 128, generator=g, dtype=torch.float64)
    centers = 3 * torch.randn(10, 128, generator=g, dtype=torch.float64)
    return centers[torch.arange(n) % 10] + torch.randn(n, 128, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["gaussian", "clusters"])
def test_lanczos_is_within_one_percent_of_exact(kind):
    x = _data(kind, 1500)
    A = normalize(gram(x, silverman_sigma(x)))
    for alpha in (1.01, 1.0):
        exact = float(entropy(A, alpha, method="exact"))
        for seed in (0, 1):
            fast = float(entropy(A, alpha, method="lanczos", seed=seed))
            assert fast != exact  # Lanczos ran: no fallback to exact
            assert abs(fast - exact) <= 0.01 * exact, (alpha, seed, fast, exact)


def test_resolve_method_names_the_path():
    assert renyi.resolve_method(1000) == "exact"
    assert renyi.resolve_method(5000) == "lanczos"
    assert renyi.resolve_method(5000, grad=True) == "exact"
    assert renyi.resolve_method(5000, alpha=2.0) == "frobenius"
    assert renyi.resolve_method(100, method="lanczos") == "exact"  # too small to deflate
    assert renyi.resolve_method(1000, method="lanczos") == "lanczos"


def _tight_clusters(n: int) -> torch.Tensor:
    """10 tight clusters in 64-D: at σ = 0.84, ``exp(−d²/(2σ²))/N`` of pairs across clusters
    falls among the float32 subnormals (43 % of the entries at N = 400; issue 19 item 10)."""
    g = _gen(12)
    centres = torch.randn(10, 64, generator=g, dtype=torch.float64)
    return centres[torch.arange(n) % 10] + 0.1 * torch.randn(
        n, 64, generator=g, dtype=torch.float64
    )


def test_lanczos_products_see_no_subnormal_entries(monkeypatch):
    A = _a(_tight_clusters(400), 0.84)
    tiny = torch.finfo(torch.float32).tiny
    assert bool(((A != 0) & (A.abs() < tiny)).any())  # the data has them
    seen = []
    quadrature = matrix_entropy._quadrature

    def spy(A32, *args):
        seen.append(int(((A32 != 0) & (A32.abs() < tiny)).sum()))
        return quadrature(A32, *args)

    monkeypatch.setattr(matrix_entropy, "_quadrature", spy)
    fast = float(entropy(A, method="lanczos"))
    assert seen == [0]  # zeroed: products with subnormals can be 15× slower
    assert fast == pytest.approx(float(entropy(A, method="exact")), rel=0.01)


def test_auto_takes_exact_where_the_cost_model_finds_lanczos_slower(monkeypatch):
    assert renyi.resolve_method(3000) == "lanczos"
    with monkeypatch.context() as m:
        m.setattr(matrix_entropy, "LANCZOS_PROBES", 1000)  # a plan costlier than eigvalsh
        assert renyi.resolve_method(5000) == "exact"
        assert renyi.resolve_method(5000, method="lanczos") == "lanczos"  # as asked
        assert matrix_entropy.lanczos_cost_ratio(5000) > 1
    ratios = [matrix_entropy.lanczos_cost_ratio(n) for n in (1000, 2001, 3000, 10_000)]
    assert ratios == sorted(ratios, reverse=True) and ratios[0] > 1 > ratios[1]


def test_lanczos_falls_back_to_exact_when_the_quadrature_does_not_settle(monkeypatch):
    A = _a(torch.randn(400, 8, generator=_gen(13), dtype=torch.float64), 1.0)
    exact = float(entropy(A, method="exact"))
    assert float(entropy(A, method="lanczos")) != exact
    monkeypatch.setattr(matrix_entropy, "LANCZOS_STEPS", 5)  # one check: nothing to compare
    assert float(entropy(A, method="lanczos")) == exact


def test_auto_runs_exact_below_the_threshold_and_with_a_gradient():
    x = torch.randn(200, 4, generator=_gen(8), dtype=torch.float64, requires_grad=True)
    A = _a(x, 2.0)
    with torch.no_grad():
        assert float(entropy(A, method="auto")) == float(entropy(A, method="exact"))
    entropy(A, method="auto").backward()  # a gradient needs the exact path: auto takes it
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())
    with pytest.raises(ConfigError, match="no gradient"):
        entropy(_a(x, 2.0), method="lanczos")


# ------------------------------------------------------------------ kernel widths
@pytest.mark.parametrize("ratio", [2.0, 3.0])
def test_select_sigma_finds_the_planted_cluster_scale(ratio):
    """Four clusters of within-cluster RMS distance w = s·√(2d), centres ratio·w apart."""
    d, y = 8, torch.arange(200) % 4
    noise = torch.randn(200, d, generator=_gen(9), dtype=torch.float64)
    found = {}
    for s in (0.5, 2.0):
        w = s * math.sqrt(2 * d)
        x = torch.eye(4, d, dtype=torch.float64)[y] * ratio * w / math.sqrt(2) + s * noise
        found[s] = select_sigma(x, y)
        assert 0.5 * w <= found[s] <= 2 * w
    assert found[2.0] / found[0.5] == pytest.approx(4.0, rel=1e-9)  # equivariant


def test_sigma_average_and_degenerate_inputs():
    avg = SigmaAverage(decay=0.5)
    assert avg.update(2.0) == 2.0 and avg.update(4.0) == 3.0
    with pytest.raises(ValueError):
        SigmaAverage(decay=1.0)
    x = torch.randn(30, 2, generator=_gen(10), dtype=torch.float64)
    y = torch.arange(30) % 2
    avg = SigmaAverage(decay=0.9)
    first = select_sigma(x, y, average=avg)
    assert select_sigma(3 * x, y, average=avg) == pytest.approx(0.9 * first + 0.1 * 3 * first)
    assert select_sigma(torch.ones(5, 3), y[:5]) == 1.0
    assert silverman_sigma(torch.ones(5, 3)) == 1.0
    n, dim = 500, 1
    z = torch.randn(n, dim, generator=_gen(11), dtype=torch.float64)
    rule = 1.0592 * float(z.std(correction=0)) * n ** (-1 / 5)  # Silverman, d = 1
    assert silverman_sigma(z) == pytest.approx(rule, rel=1e-4)
    assert silverman_sigma(z, gamma=0.8) == pytest.approx(0.8 * n ** (-1 / 5))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: gram(torch.ones(3, 2), 1.0, "tau"), "kernel convention"),
        (lambda: gram(torch.ones(3, 2), 0.0), "positive"),
        (lambda: entropy(torch.eye(3) / 3, -1.0), "order"),
        (lambda: entropy(torch.eye(3) / 3, base=10), "log base"),
        (lambda: entropy(torch.eye(3) / 3, method="svd"), "unknown method"),
    ],
)
def test_errors_say_what_was_expected(call, match):
    with pytest.raises(ConfigError, match=match) as err:
        call()
    assert "expected:" in str(err.value) and "fix:" in str(err.value)


def test_numpy_input_and_module_constants():
    x = np.random.default_rng(0).normal(size=(20, 3))
    assert float(mutual_information(x, x)) > 0
    assert renyi.EIGENVALUE_RTOL == 1e-12 and renyi.AUTO_EXACT_MAX_N == 2000


# ------------------------------------------------------------------ the plugin
OPTIONS = {"layers": ["fc*"], "input_module": "fc1", "sigma_decay": 0.5}


@pytest.mark.parametrize("options", [OPTIONS, {}], ids=["layers", "defaults"])
def test_plugin_conformance(options):
    PluginTester(Renyi, options=options).check_all()


def test_plugin_emits_probe_metrics(mlp, batch):
    x, y = batch
    opts = {"renyi": {**OPTIONS, "sigma_method": "silverman"}}
    with infoshape.Session(mlp, plugins=["renyi"], options=opts) as session:
        assert session.epoch_end() == {}  # no probe set: nothing to measure
        metrics = session.epoch_end(probe=(x, y))
    names = {"fc1", "fc2"}  # the fixture model ends in "out"
    expected = {f"renyi.{n}.{k}" for n in names for k in ("sigma", "H_T", "I_TY", "I_XT")}
    assert set(metrics) == expected
    assert all(math.isfinite(v) and v >= -1e-9 for v in metrics.values())
    assert all(metrics[f"renyi.{n}.I_TY"] <= metrics[f"renyi.{n}.H_T"] + 1e-9 for n in names)


def test_estimator_and_information_plane():
    estimator = infoshape.get_estimator("renyi")
    assert estimator.function is mutual_information and estimator.differentiable
    assert estimator.unit == "nats"
    g = _gen(12)
    x = torch.randn(120, 20, generator=g, dtype=torch.float64)
    t = torch.relu(x @ torch.randn(20, 6, generator=g, dtype=torch.float64))
    y = (x[:, 0] > 0).long()
    i_xt, i_ty = estimator.information_plane(x, t, y)
    assert i_xt.ndim == 0 and i_ty.ndim == 0
    assert all(math.isfinite(float(v)) and float(v) >= 0 for v in (i_xt, i_ty))
    assert (float(i_xt), float(i_ty)) == (
        float(information_plane(x, t, y)[0]),
        float(mutual_information(t, y)),
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("what", ["x", "t", "labels"])
def test_nonfinite_input_is_refused_naming_how_many_values(what, bad):
    # before the fix, NaN raised a raw linear-algebra error from eigvalsh
    g = torch.Generator().manual_seed(1)
    args = {"x": torch.randn(10, 3, generator=g), "t": torch.randn(10, 4, generator=g)}
    args["labels"] = (torch.arange(10) % 2).double()
    args[what][3] = bad
    with pytest.raises(NonFiniteError, match=f"renyi: {what} holds") as err:
        renyi.information_plane(args["x"], args["t"], args["labels"])
    assert "first: sample 3" in str(err.value)
    count = 1 if what == "labels" else args[what].shape[1]
    assert f"{count} {'NaN' if math.isnan(bad) else '±Inf'}" in str(err.value)
    with pytest.raises(NonFiniteError, match="renyi: x holds"):
        renyi.mutual_information(args[what], args["t" if what != "t" else "x"])
    A = torch.eye(4) / 4
    A[1, 2] = bad
    with pytest.raises(NonFiniteError, match="renyi: A holds") as err:
        renyi.entropy(A)
    counts = "1 NaN and 0 ±Inf" if math.isnan(bad) else "0 NaN and 1 ±Inf"
    assert f"{counts} of 16 values in 1 of 4 samples" in str(err.value)
