"""Matrix-based Rényi α-entropy and mutual information (docs/methods.md §1), the math of ``renyi``.

Kept in the core because several plugins build on it (the ``renyi`` estimator, MI-CE
mixing's objective); ``infoshape.plugins.renyi`` re-exports the functional API.

Sanchez Giraldo–Rao–Príncipe: the Gram matrix ``K_ij = exp(−‖z_i − z_j‖²/(2σ²))`` normalized
to ``A_ij = K_ij / (N·sqrt(K_ii K_jj))`` has eigenvalues ``λ_i ≥ 0`` summing to 1;
``H_α(A) = 1/(1−α) · log Σ λ_i^α``, ``H_α(A, B) = H_α(A∘B / tr(A∘B))``,
``I_α(A; B) = H_α(A) + H_α(B) − H_α(A, B)``. The functions take tensors or numpy/xarray arrays
``(N, ...)`` (flattened per sample), compute in float64, return float64 and are differentiable
(the Lanczos path excepted). ``I_α ≥ 0`` held in every test for α ∈ {1, 1.01} but is no law of
the matrix functional: far from α = 1 it can be negative (a four-point example at α = 2 is in
the tests).

Kernel conventions (``convention=``): ``"2sigma2"`` ``exp(−d²/(2σ²))`` (default), ``"sigma2"``
``exp(−d²/σ²)`` (Zaugg, Wickstrøm), ``"sigma"`` ``exp(−d²/σ)`` (SJ Yu). One kernel has
``σ_sigma2 = √2·σ_2sigma2`` and ``σ_sigma = 2·σ_2sigma2²`` (:func:`convert_sigma`).

Fast path (``method="lanczos"``; ``"auto"`` takes it above ``AUTO_EXACT_MAX_N`` samples for
α ≥ 1 when no gradient is needed, :func:`resolve_method`): ``tr f(A)``, ``f(λ) = λ^α`` or
``−λ log λ``, is split as in Hutch++ into the ``LANCZOS_RANK`` top eigenvalues (randomized
subspace iteration with ``LANCZOS_POWER`` power steps, Rayleigh–Ritz) and ``tr f(PAP)``,
``P = I − QQᵀ``, by stochastic Lanczos quadrature (``LANCZOS_PROBES`` Rademacher probes,
``LANCZOS_STEPS`` steps at most, full re-orthogonalization; it stops once the entropy settles
to ``LANCZOS_RTOL``, and the exact path runs when it does not within the cap) with the
quadratic Taylor polynomial of ``f`` at the mean tail eigenvalue as control variate (``tr P``,
``tr PAP``, ``tr (PAP)²`` are known exactly). Cost ``O((k + m·s)·N²)``, products in float32
with subnormal entries zeroed (``FLUSH_BELOW``); ``"auto"`` takes it only where a cost model
says it beats exact (:func:`lanczos_cost_ratio`). Measured relative error of the
entropy for α ≥ 1: at most 0.5 % at N = 4000 over Gaussian, clustered and low-rank data, two
widths, three seeds; 0.2 % at N = 10,000 (``benchmarks/estimators.py``); the tests hold it to
1 % at N = 1500. For α = 0.5 tiny eigenvalues weigh more: up to 2.4 % on the low-rank data.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch

from infoshape.errors import ConfigError
from infoshape.math.linalg import as_samples, one_hot, pairwise_sq_distances, require_finite

__all__ = [
    "AUTO_EXACT_MAX_N",
    "DECAY",
    "EIGENVALUE_RTOL",
    "EXACT_FLOP_COST",
    "FLUSH_BELOW",
    "LENGTH",
    "Convention",
    "Method",
    "SigmaAverage",
    "alignment_curve",
    "as_matrix",
    "as_tensor",
    "convert_sigma",
    "entropy",
    "gram",
    "information_plane",
    "is_labels",
    "joint_entropy",
    "label_gram",
    "lanczos_cost_ratio",
    "mutual_information",
    "normalize",
    "resolve_method",
    "select_sigma",
    "silverman_sigma",
]

Convention = Literal["2sigma2", "sigma2", "sigma"]
Method = Literal["auto", "exact", "lanczos"]
#: eigenvalues ``λ ≤ EIGENVALUE_RTOL · λ_max`` (round-off, negatives) count as 0.
EIGENVALUE_RTOL = 1e-12
#: ``|α − 1|`` below this uses the von Neumann limit ``−Σ λ log λ``.
VON_NEUMANN_TOL = 1e-6
#: ``method="auto"`` runs exact float64 ``eigvalsh`` up to this many samples (and above, where
#: the cost model finds Lanczos slower: :func:`lanczos_cost_ratio`).
AUTO_EXACT_MAX_N = 2000
LANCZOS_RANK, LANCZOS_POWER, LANCZOS_PROBES, LANCZOS_STEPS = 128, 2, 32, 30
#: Lanczos stops when two Gauss-rule entropies ``LANCZOS_CHECK`` steps apart differ by at most
#: ``LANCZOS_RTOL`` relative; not so by the ``LANCZOS_STEPS`` cap: the exact path runs instead.
LANCZOS_CHECK, LANCZOS_RTOL = 5, 1e-3
#: time per flop of float64 ``eigvalsh`` over that of a float32 matrix product, the cost model's
#: constant (:func:`lanczos_cost_ratio`). Measured 1.8 (MKL, 2 threads) and 6.4 (the machine of
#: issue 19); the lower bound of the range is taken, so that ``"auto"`` errs towards exact.
EXACT_FLOP_COST = 1.5
#: float32 entries of magnitude below this (subnormals) are zeroed before the Lanczos products:
#: ``exp(−d²/(2σ²))/N`` underflows into them, and products with subnormals can be 15× slower.
FLUSH_BELOW = torch.finfo(torch.float32).tiny
#: the length ``L`` of ``K = exp(−‖(z_i − z_j)/L‖²)`` for a width in each convention
LENGTH = {"2sigma2": lambda s: math.sqrt(2) * s, "sigma2": lambda s: s, "sigma": lambda s: s**0.5}


def _fail(what: str, expected: str, got: Any, fix: str) -> ConfigError:
    return ConfigError(f"renyi: {what}", expected=expected, got=repr(got), fix=fix)


def as_tensor(v: Any) -> torch.Tensor:
    """``v`` as a tensor: tensors as they are, numpy/xarray arrays (anything array-like) as one."""
    return v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))


def _length(sigma: Any, convention: str) -> Any:
    if convention not in LENGTH:
        raise _fail(
            "unknown kernel convention",
            "'2sigma2', 'sigma2' or 'sigma'",
            convention,
            "use one of the three forms of docs/methods.md §1",
        )
    return LENGTH[convention](sigma)


def convert_sigma(sigma: float, source: Convention, target: Convention) -> float:
    """The width giving in ``target`` the kernel that ``sigma`` gives in ``source``.

    ``2σ² = s² = τ`` for ``σ`` in ``"2sigma2"``, ``s`` in ``"sigma2"`` and ``τ`` in ``"sigma"``.
    """
    length, _ = _length(float(sigma), source), _length(1.0, target)
    return {"2sigma2": length / math.sqrt(2), "sigma2": length, "sigma": length * length}[target]


def gram(x: Any, sigma: float, convention: Convention = "2sigma2") -> torch.Tensor:
    """Gaussian Gram matrix ``K_ij = exp(−‖x_i − x_j‖²/(2σ²))`` (docs/methods.md §1), float64.

    Args:
        x: samples ``(N, ...)``, flattened per sample.
        sigma: kernel width (> 0) in ``convention``: ``"2sigma2"``, ``"sigma2"``
            (``exp(−d²/σ²)``) or ``"sigma"`` (``exp(−d²/σ)``); see :func:`convert_sigma`.
        convention: the kernel form.
    """
    if not float(sigma) > 0:
        raise _fail(
            "the kernel width must be positive",
            "sigma > 0",
            sigma,
            "pass a width, or sigma=None for Silverman's rule",
        )
    z = as_samples(as_tensor(x), torch.float64) / _length(sigma, convention)  # no underflow of σ²
    return torch.neg(pairwise_sq_distances(z)).exp_()  # in place: one N² temporary less


def label_gram(labels: Any, n_classes: int | None = None) -> torch.Tensor:
    """Label Gram ``K_y = Y Yᵀ`` of one-hot rows ``Y`` of integer labels (float rows as given).

    ``n_classes``: the one-hot width; ``None`` reads ``max(labels) + 1`` (a host sync on an
    accelerator: a training step passes it). ``K_y`` does not depend on it.
    """
    y = as_tensor(labels)
    y = y.to(torch.float64) if y.is_floating_point() and y.ndim == 2 else one_hot(y, n_classes)
    return y @ y.T


def normalize(K: Any) -> torch.Tensor:
    """``A_ij = K_ij / (N·sqrt(K_ii K_jj))``, so that ``tr A = 1`` (docs/methods.md §1), float64."""
    K = as_tensor(K).to(torch.float64)
    d = torch.diagonal(K).sqrt()
    if bool((d == 1).all()):  # a Gaussian Gram matrix: skip the N² outer product
        return K / K.shape[0]
    return K / (torch.outer(d, d) * K.shape[0])


def _frobenius2(A: torch.Tensor) -> torch.Tensor:
    """``‖A‖_F² = tr(A²)`` for symmetric ``A``, without an N² temporary."""
    return torch.linalg.vector_norm(A) ** 2


def _f(alpha: float, t: torch.Tensor, k: int = 0) -> torch.Tensor:
    """``f^(k)(t)/k!`` for ``f(λ) = λ^α``, or ``−λ log λ`` when α ≈ 1 (k ≤ 2)."""
    if abs(alpha - 1) < VON_NEUMANN_TOL:
        return (-t * t.log(), -t.log() - 1, -0.5 / t)[k]
    return (t**alpha, alpha * t ** (alpha - 1), alpha * (alpha - 1) / 2 * t ** (alpha - 2))[k]


def _gauss_rule(a: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights ``(b, j)`` of the Gauss rules of the tridiagonal ``T = (a, beta)``."""
    off = torch.diag_embed(beta, 1)
    theta, u = torch.linalg.eigh((torch.diag_embed(a) + off + off.mT).double())
    return theta, u[:, 0, :] ** 2


def _quadrature(A32: torch.Tensor, q: torch.Tensor, v: torch.Tensor, value: Any) -> float | None:
    """Lanczos on ``PAP`` from rows ``v ⟂ q``: the settled ``value`` of its Gauss rules, or None.

    ``value(nodes, weights)`` of the rules of ``vᵀ f(PAP) v``, checked every ``LANCZOS_CHECK``.
    """
    b, n, s = *v.shape, LANCZOS_STEPS
    basis, a, beta = v.new_zeros(b, s, n), v.new_zeros(b, s), v.new_zeros(b, s)
    last = None
    for j in range(s):
        basis[:, j] = v
        w = v @ A32
        w = w - (w @ q) @ q.T
        a[:, j] = (w * v).sum(1)
        for _ in range(2):  # full re-orthogonalization, twice is enough
            w = (
                w
                - torch.bmm(torch.bmm(basis[:, : j + 1], w[:, :, None]).mT, basis[:, : j + 1])[:, 0]
            )
        norm = w.norm(dim=1)
        ok = norm > 1e-7 * a[:, 0].abs()  # breakdown: the Krylov space is invariant
        beta[:, j] = torch.where(ok, norm, 0.0)
        v = torch.where(ok[:, None], w / torch.where(ok, norm, 1.0)[:, None], 0.0)
        if (j + 1) % LANCZOS_CHECK == 0:
            h = value(*_gauss_rule(a[:, : j + 1], beta[:, :j]))
            if last is not None and abs(h - last) <= LANCZOS_RTOL * max(abs(h), 1e-3):
                return h
            last = h
    return None


def _float32(A: torch.Tensor) -> torch.Tensor:
    """``A`` in float32 with subnormal entries zeroed (``FLUSH_BELOW``): fast products."""
    return (A32 := A.float()).masked_fill_(A32.abs() < FLUSH_BELOW, 0.0)


def _entropy_of_trace(alpha: float, s: torch.Tensor) -> torch.Tensor:
    """``H_α`` from ``s = tr f(A)``: ``s`` itself (von Neumann), else ``log s / (1 − α)``."""
    return s if abs(alpha - 1) < VON_NEUMANN_TOL else torch.log(s) / (1 - alpha)


@torch.no_grad()
def _lanczos_entropy(A: torch.Tensor, alpha: float, seed: int) -> torch.Tensor | None:
    """``H_α`` by top eigenvalues plus SLQ (module docstring); ``None``: SLQ did not settle."""
    n, gen, A32 = A.shape[0], torch.Generator().manual_seed(seed), _float32(A)
    y = A32 @ torch.randn(n, LANCZOS_RANK, generator=gen)
    for _ in range(LANCZOS_POWER):
        y = A32 @ torch.linalg.qr(y).Q
    q = torch.linalg.qr(y.double()).Q
    aq = (A32 @ q.float()).double()
    qaq = q.T @ aq
    lam = torch.linalg.eigvalsh(qaq)
    floor = EIGENVALUE_RTOL * lam[-1]
    head = _f(alpha, lam[lam > floor]).sum()
    t0, t1 = n - LANCZOS_RANK, torch.trace(A) - torch.trace(qaq)
    mean = t1 / t0
    if not mean > floor:
        return _entropy_of_trace(alpha, head)
    z = (torch.randint(0, 2, (n, LANCZOS_PROBES), generator=gen) * 2 - 1).double()
    z = z - q @ (q.T @ z)
    zn = z.norm(dim=0)
    t2 = _frobenius2(A) - 2 * (aq * aq).sum() + (qaq * qaq).sum()  # tr (PAP)²
    c0, c1, c2 = (_f(alpha, mean, k) for k in range(3))
    exact = c0 * t0 + c1 * (t1 - mean * t0) + c2 * (t2 - 2 * mean * t1 + mean**2 * t0)

    def value(theta: torch.Tensor, w: torch.Tensor) -> float:
        taylor = c0 + c1 * (theta - mean) + c2 * (theta - mean) ** 2
        f = torch.where(theta > floor, _f(alpha, theta.clamp_min(floor)), 0.0)
        tail = (((w * (f - taylor)).sum(1) * zn**2).mean() + exact).clamp_min(0.0)
        return float(_entropy_of_trace(alpha, head + tail))

    h = _quadrature(A32, q.float(), (z / zn).T.float().contiguous(), value)
    return None if h is None else torch.tensor(h, dtype=torch.float64)


def lanczos_cost_ratio(n: int) -> float:
    """Estimated time of the Lanczos path over that of the exact one, for ``n`` samples.

    Flops, float32 products weighing 1 and float64 ``eigvalsh`` ``EXACT_FLOP_COST``: exact
    ``(4/3)·n³`` (the tridiagonal reduction); Lanczos ``2n²·((p + 2)·k + m·s)`` for the
    products (``k = LANCZOS_RANK``, ``p = LANCZOS_POWER``, ``m = LANCZOS_PROBES``, ``s`` the
    ``LANCZOS_STEPS`` cap) plus ``4n·(m·s² + (p + 2)·k²)`` for re-orthogonalization and QR.
    """
    k, p, m, s = LANCZOS_RANK, LANCZOS_POWER, LANCZOS_PROBES, LANCZOS_STEPS
    lanczos = 2 * n * n * ((p + 2) * k + m * s) + 4 * n * (m * s * s + (p + 2) * k * k)
    return lanczos / (EXACT_FLOP_COST * 4 / 3 * n**3)


def resolve_method(n: int, alpha: float = 1.01, method: Method = "auto", grad: bool = False) -> str:
    """The path :func:`entropy` takes: ``"frobenius"`` (α = 2), ``"exact"`` or ``"lanczos"``.

    ``"auto"`` runs Lanczos only above ``AUTO_EXACT_MAX_N`` samples, for α ≥ 1, without a
    gradient, and where the cost model says it is the faster (:func:`lanczos_cost_ratio`
    ``< 1``); ``"lanczos"`` runs it as asked, except on fewer than
    ``2·(LANCZOS_RANK + LANCZOS_PROBES)`` samples. Either falls back to exact at run time when
    the quadrature does not settle within ``LANCZOS_STEPS`` steps (:func:`entropy`).
    """
    if method not in ("auto", "exact", "lanczos"):
        raise _fail("unknown method", "'auto', 'exact' or 'lanczos'", method, "use 'auto'")
    if alpha == 2:
        return "frobenius"
    if method == "lanczos" and grad:
        raise _fail(
            "the Lanczos estimate carries no gradient",
            "method='exact' or 'auto'",
            method,
            "use method='exact' in a penalty, or detach the input",
        )
    auto = n > AUTO_EXACT_MAX_N and not grad and alpha >= 1  # α < 1 weighs tiny eigenvalues
    auto &= lanczos_cost_ratio(n) < 1
    fast = method == "lanczos" or (method == "auto" and auto)
    return "lanczos" if fast and n > 2 * (LANCZOS_RANK + LANCZOS_PROBES) else "exact"


def entropy(
    A: Any,
    alpha: float = 1.01,
    base: Literal["e", 2] = "e",
    method: Method = "auto",
    *,
    seed: int = 0,
) -> torch.Tensor:
    """Matrix-based Rényi α-entropy ``H_α(A) = 1/(1−α) · log Σ λ_i(A)^α`` (docs/methods.md §1).

    Args:
        A: a trace-one positive semi-definite ``(N, N)`` matrix (:func:`normalize`).
        alpha: order α > 0. ``|α − 1| < VON_NEUMANN_TOL``: von Neumann ``−Σ λ log λ``;
            α = 2: ``−log ‖A‖_F²``, no eigendecomposition.
        base: ``"e"`` (nats) or ``2`` (bits).
        method: ``"exact"`` (float64 ``eigvalsh``; eigenvalues ``≤ EIGENVALUE_RTOL·λ_max`` set
            to 0 before the power), ``"lanczos"`` (no gradient; module docstring) or ``"auto"``
            (:func:`resolve_method`).
        seed: seed of the Lanczos probes.

    Returns:
        a float64 scalar tensor.

    Raises:
        NonFiniteError: ``A`` holds NaN or Inf.
    """
    A = require_finite(as_tensor(A), "renyi", "A").to(torch.float64)
    if not alpha > 0:
        raise _fail("the order must be positive", "alpha > 0", alpha, "alpha=1.01 is the default")
    if base not in ("e", 2, "2"):
        raise _fail("unknown log base", "'e' (nats) or 2 (bits)", base, "pass base='e' or base=2")
    path = resolve_method(A.shape[0], alpha, method, A.requires_grad and torch.is_grad_enabled())
    h = _lanczos_entropy(A, alpha, seed) if path == "lanczos" else None
    if path == "frobenius":
        h = -torch.log(_frobenius2(A))
    elif h is None:  # exact, or the Lanczos quadrature did not settle: exact as the fallback
        lam = torch.linalg.eigvalsh(A)
        keep = lam > EIGENVALUE_RTOL * lam[-1].detach()
        h = _entropy_of_trace(
            alpha, torch.where(keep, _f(alpha, torch.where(keep, lam, 1.0)), 0.0).sum()
        )
    return h if base == "e" else h / math.log(2.0)


def joint_entropy(A: Any, B: Any, alpha: float = 1.01, **options: Any) -> torch.Tensor:
    """``H_α(A, B) = H_α(A∘B / tr(A∘B))`` (docs/methods.md §1); ``options``: :func:`entropy`."""
    C = as_tensor(A).to(torch.float64) * as_tensor(B).to(torch.float64)
    return entropy(C / torch.trace(C), alpha, **options)


def silverman_sigma(
    x: Any, gamma: float | None = None, convention: Convention = "2sigma2"
) -> float:
    """Silverman's rule ``σ = γ·N^(−1/(4+d))`` (docs/methods.md §1), ``d`` features per sample.

    ``gamma=None``: ``γ = (4/(d+2))^(1/(d+4)) · sqrt(Σ_j Var x_j)``, Silverman's multivariate
    constant times the *total* standard deviation (d = 1: ``1.06·s·N^(−1/5)`` exactly). The
    total, not the per-feature, spread keeps ``d²/(2σ²)`` of order 1 in high dimension, where the
    per-feature rule makes ``K`` the identity. A number fixes γ (Yu et al. use 0.8 on
    standardized data). Constant data give σ = 1. A plain float: no gradient flows through σ.
    """
    x = as_samples(as_tensor(x), torch.float64).detach()
    n, d = x.shape
    if gamma is None:  # the spread of x / max|x|, scaled back: no underflow for tiny data
        scale = float(x.abs().max()) if x.numel() else 0.0
        spread = float((x / scale).var(0, correction=0).sum().sqrt()) * scale if scale else 0.0
        gamma = (4 / (d + 2)) ** (1 / (d + 4)) * spread
    sigma = gamma * n ** (-1 / (4 + d))
    return convert_sigma(
        sigma if math.isfinite(sigma) and sigma > 0 else 1.0, "2sigma2", convention
    )


def is_labels(v: torch.Tensor) -> bool:
    """Whether ``v`` holds labels (integer or boolean values), not samples (float values)."""
    return not (v.is_floating_point() or v.is_complex())


def as_matrix(v: Any, sigma: float | None, convention: Convention = "2sigma2") -> torch.Tensor:
    """``A`` of labels (one-hot Gram) or of samples (Silverman's σ when ``sigma`` is None)."""
    v = as_tensor(v)
    if is_labels(v):
        return normalize(label_gram(v))
    return normalize(
        gram(v, silverman_sigma(v, None, convention) if sigma is None else sigma, convention)
    )


def _mi(A: torch.Tensor, B: torch.Tensor, alpha: float, **options: Any) -> torch.Tensor:
    h_a, h_b = entropy(A, alpha, **options), entropy(B, alpha, **options)
    return h_a + h_b - joint_entropy(A, B, alpha, **options)


def mutual_information(
    x: Any,
    y: Any,
    alpha: float = 1.01,
    sigma_x: float | None = None,
    sigma_y: float | None = None,
    *,
    convention: Convention = "2sigma2",
    **options: Any,
) -> torch.Tensor:
    """``I_α(X; Y) = H_α(A) + H_α(B) − H_α(A, B)`` (docs/methods.md §1), a float64 scalar.

    Args:
        x: samples ``(N, ...)``, or integer labels ``(N,)`` (one-hot Gram, :func:`label_gram`).
        y: the same for the other variable.
        alpha: order α.
        sigma_x: kernel width of ``x`` in ``convention``; ``None``: :func:`silverman_sigma`.
        sigma_y: the same for ``y``.
        convention: kernel form (module docstring).
        **options: ``base``, ``method``, ``seed`` as for :func:`entropy`.

    Raises:
        NonFiniteError: ``x`` or ``y`` holds NaN or Inf.
    """
    x, y = require_finite(as_tensor(x), "renyi", "x"), require_finite(as_tensor(y), "renyi", "y")
    return _mi(
        as_matrix(x, sigma_x, convention), as_matrix(y, sigma_y, convention), alpha, **options
    )


def information_plane(
    x: Any, t: Any, labels: Any, alpha: float = 1.01, **options: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(I(X;T), I(T;Y))``: Silverman widths for X and T, the one-hot Gram for Y.

    The registry's ``Estimator.information_plane``; ``options`` as for :func:`entropy`.
    ``I(T;Y) ≤ H_α(Y) ≤ H(Y)`` held in every test (α = 1.01).

    Raises:
        NonFiniteError: ``x``, ``t`` or ``labels`` holds NaN or Inf.
    """
    x, t = require_finite(as_tensor(x), "renyi", "x"), require_finite(as_tensor(t), "renyi", "t")
    labels = require_finite(as_tensor(labels), "renyi", "labels")
    A_x, A_t, A_y = (as_matrix(v, None) for v in (x, t, labels))
    return _mi(A_x, A_t, alpha, **options), _mi(A_t, A_y, alpha, **options)


# Kernel-width selection lives in its own module (it builds on the Gram matrices above);
# its names stay importable from here.
from infoshape.math.kernel_width import (  # noqa: E402
    DECAY,
    SigmaAverage,
    alignment_curve,
    select_sigma,
)
