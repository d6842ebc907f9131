"""The ``gaussian`` plugin: closed-form entropy and mutual information of Gaussian fits.

The samples are summarized by their maximum-likelihood covariance ``Σ = (1/N)·Σ_i
(z_i − z̄)(z_i − z̄)ᵀ`` plus a ridge ``r·I`` (default ``r = 1e-6``, the same absolute ridge
on every covariance, so independent blocks give exactly zero information), in float64:

- ``H(Z) = ½·log det(2πe·Σ)``;
- ``I(X;Y) = ½·log(det Σ_x · det Σ_y / det Σ_xy)``, ``Σ_xy`` the joint covariance;
- ``I(T;Y)`` for class labels: ``H(T) − Σ_c p(c)·H(T|Y=c)``, one Gaussian fitted to all of
  ``T`` and one per class (the Gaussian class-conditional form; ``≥ 0`` since
  ``log det`` is concave and the total covariance dominates the within-class one).

Exact for Gaussian data (``I = −½·log(1 − ρ²)`` for two correlated Gaussians); for other
data a Gaussian surrogate. Differentiable (``torch.linalg.slogdet``); nats. Inputs holding
NaN or Inf are refused (:class:`~infoshape.errors.NonFiniteError`).

Where the surrogate breaks, the functions warn
(:class:`~infoshape.errors.EstimatorAssumptionWarning`):

- ``ridge_dominated``: a covariance has eigenvalues at the ridge's scale (``λ ≤ RIDGE_SETS·ridge``
  or ``≤ RANK_RTOL·λ_max``): fewer samples than dimensions (overall, or ``N_c ≤ d`` in a class),
  or ``T`` a deterministic (e.g. linear) function of ``X``. Those ``log λ`` are ``log ridge``,
  so the ridge, not the data, sets the result (N = 200, d = 4096 gave 1632 nats);
- ``exceeds_h_y``: the class-conditional ``I(T;Y)`` exceeded ``H(Y)``, the plug-in entropy of
  the labels, which bounds the true ``I(T;Y)`` for discrete labels (a deterministic layer gave
  231 nats for ``H(Y) = 2.30``). The value returned is capped at ``H(Y)`` (``ceiling=True``);
  the cap passes no gradient.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import torch

from infoshape.errors import ConfigError, EstimatorAssumptionWarning
from infoshape.math.linalg import (
    class_conditional,
    label_entropy,
    nonempty_samples,
    paired_labels,
    require_finite,
)
from infoshape.plugin import EstimatorPlugin
from infoshape.registry import Estimator

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = [
    "RIDGE",
    "Gaussian",
    "entropy",
    "information_plane",
    "mutual_information",
    "mutual_information_labels",
]

RIDGE = 1e-6
#: an eigenvalue ``λ ≤ RIDGE_SETS·ridge`` of a covariance is set by the ridge: the ridge moves
#: its ``log`` by at least ``log(1 + 1/RIDGE_SETS)`` (0.095 nats).
RIDGE_SETS = 10.0
#: an eigenvalue ``λ ≤ RANK_RTOL·λ_max`` is rounding (a singular covariance), whatever the ridge.
RANK_RTOL = 1e-10

#: per call, the covariances found singular at the ridge's scale: ``(what, n, d, n_small)``
_Singular = list[tuple[str, int, int, int]]


def _samples(x: torch.Tensor | ArrayLike, what: str = "x") -> torch.Tensor:
    return require_finite(nonempty_samples(x, f"gaussian ({what})"), "gaussian", what)


def _logdet_cov(
    z: torch.Tensor, ridge: float, singular: _Singular | None = None, what: str = "T"
) -> torch.Tensor:
    """``log det(Σ + ridge·I)`` of the maximum-likelihood covariance of the rows of ``z``.

    Appends ``(what, N, d, count)`` to ``singular`` when ``count > 0`` eigenvalues of ``Σ`` are
    at the ridge's scale (``RIDGE_SETS``, ``RANK_RTOL``).
    """
    if not ridge >= 0:
        raise ConfigError(
            "gaussian: the ridge must be non-negative",
            expected=f"ridge >= 0 (default {RIDGE})",
            got=repr(ridge),
            fix=f"pass ridge={RIDGE}",
        )
    centred = z - z.mean(dim=0, keepdim=True)
    cov = centred.T @ centred / z.shape[0]
    eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    sign, logabsdet = torch.linalg.slogdet(cov + ridge * eye)
    if bool(sign <= 0):
        raise ConfigError(
            "gaussian: the covariance is not positive definite",
            expected="full-rank data, or a positive ridge large enough for the data's scale",
            got=f"ridge={ridge!r}",
            fix="pass a larger ridge, e.g. ridge=1e-4",
        )
    if singular is not None:
        n, d = z.shape
        if n <= d:  # rank <= N - 1: at least d - N + 1 eigenvalues are 0, no need to look
            small = d - n + 1
        else:
            lam = torch.linalg.eigvalsh(cov.detach())
            small = int((lam <= max(RIDGE_SETS * ridge, RANK_RTOL * float(lam[-1]))).sum())
        if small:
            singular.append((what, n, d, small))
    return logabsdet


def _warn_ridge(singular: _Singular, quantity: str, ridge: float) -> None:
    if not singular:
        return
    what, n, d, small = singular[0]
    more = f" (and {len(singular) - 1} more covariances)" if len(singular) > 1 else ""
    warnings.warn(
        EstimatorAssumptionWarning(
            "gaussian",
            "ridge_dominated",
            f"{quantity}: the ridge sets the result, not the data",
            expected="full-rank covariances: more samples than dimensions (in every class), "
            "and T no deterministic linear function of X",
            got=f"the covariance of {what}: {n} samples in {d} dimensions, at least {small} of {d} "
            f"eigenvalues at most {RIDGE_SETS:g}·ridge = {RIDGE_SETS * ridge:.3g}{more}",
            fix="reduce the dimension (PCA or a random projection to d < samples per class), "
            "use more samples, or an estimator without the Gaussian assumption (kl_pairwise, "
            "binning); another ridge only moves the value",
        ),
        stacklevel=3,
    )


def _entropy(
    z: torch.Tensor, ridge: float, singular: _Singular | None = None, what: str = "T"
) -> torch.Tensor:
    logdet = _logdet_cov(z, ridge, singular, what)
    return 0.5 * (z.shape[1] * math.log(2 * math.pi * math.e) + logdet)


def entropy(x: torch.Tensor | ArrayLike, *, ridge: float = RIDGE) -> torch.Tensor:
    """``H = ½·log det(2πe·(Σ + ridge·I))`` in nats of a Gaussian fitted to the rows of ``x``.

    Warns ``ridge_dominated`` (module docstring) when the ridge sets the result.
    """
    singular: _Singular = []
    h = _entropy(_samples(x), ridge, singular, "x")
    _warn_ridge(singular, "H(X)", ridge)
    return h


def mutual_information(
    x: torch.Tensor | ArrayLike, y: torch.Tensor | ArrayLike, *, ridge: float = RIDGE
) -> torch.Tensor:
    """``I(X;Y) = ½·log(det Σ_x · det Σ_y / det Σ_xy)`` in nats (ridge on each covariance).

    Warns ``ridge_dominated`` when the ridge sets a covariance (``Y`` a deterministic linear
    function of ``X`` makes ``Σ_xy`` singular: the value is then ``≈ ½·k·log(λ/ridge)``).
    """
    xs, ys = _samples(x), _samples(y, "y")
    if xs.shape[0] != ys.shape[0]:
        raise ConfigError(
            "gaussian: x and y differ in number of samples",
            expected="paired rows, one per sample in each",
            got=f"{xs.shape[0]} and {ys.shape[0]} rows",
            fix="pass samples of the same batch",
        )
    joint = torch.cat([xs, ys.to(xs.device)], dim=1)
    singular: _Singular = []
    value = 0.5 * (
        _logdet_cov(xs, ridge, singular, "x")
        + _logdet_cov(ys, ridge, singular, "y")
        - _logdet_cov(joint, ridge, singular, "(x, y) jointly")
    )
    _warn_ridge(singular, "I(X;Y)", ridge)
    return value


def mutual_information_labels(
    t: torch.Tensor | ArrayLike,
    labels: torch.Tensor | ArrayLike,
    *,
    ridge: float = RIDGE,
    ceiling: bool = True,
) -> torch.Tensor:
    """``I(T;Y) = H(T) − Σ_c p(c)·H(T|Y=c)`` in nats, every entropy a Gaussian fit.

    ``p(c)`` are the label frequencies; classes absent from ``labels`` do not enter.
    Warns ``ridge_dominated`` when the ridge sets a covariance (``N_c ≤ d`` in a class), and
    ``exceeds_h_y`` when the Gaussian value exceeds ``H(Y)`` (module docstring).

    Args:
        t: the representation ``(N, ...)``.
        labels: ``(N,)`` class labels.
        ridge: added to every covariance's diagonal.
        ceiling: cap the value at ``H(Y)``, the plug-in entropy of ``labels`` (no gradient
            flows through the cap); ``False`` returns the raw Gaussian value (still warned).
    """
    z = _samples(t, "t")
    labels = require_finite(paired_labels(z, labels, "gaussian"), "gaussian", "labels")
    singular: _Singular = []
    total = _entropy(z, ridge, singular, "T")
    conditional = class_conditional(
        lambda zc: _entropy(zc, ridge, singular, "T in a class"), z, labels
    )
    _warn_ridge(singular, "I(T;Y)", ridge)
    value, h_y = total - conditional, label_entropy(labels).to(z.device)
    if float(value.detach() - h_y) > 1e-9:  # rounding of an exact H(Y) is no violation
        warnings.warn(
            EstimatorAssumptionWarning(
                "gaussian",
                "exceeds_h_y",
                "I(T;Y) of the Gaussian fits exceeds H(Y)"
                + (", capped at H(Y)" if ceiling else ""),
                expected=f"I(T;Y) <= H(Y) = {float(h_y):.4g} nats (the labels' plug-in entropy)",
                got=f"{float(value):.4g} nats: class-conditional Gaussians are a poor fit here",
                fix="read the value as 'T separates the classes' only; kl_pairwise or binning "
                "estimate I(T;Y) without the Gaussian assumption",
            ),
            stacklevel=2,
        )
    return torch.minimum(value, h_y) if ceiling else value


def information_plane(
    x: torch.Tensor | ArrayLike,
    t: torch.Tensor | ArrayLike,
    labels: torch.Tensor | ArrayLike,
    *,
    ridge: float = RIDGE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(I(X;T), I(T;Y))`` in nats from Gaussian fits, ``I(T;Y)`` capped at ``H(Y)``.

    ``I(X;T)`` is set by the ridge when ``T`` is a deterministic function of ``X`` (warned).
    """
    x, t = _samples(x, "x"), _samples(t, "t")
    return mutual_information(x, t, ridge=ridge), mutual_information_labels(t, labels, ridge=ridge)


class Gaussian(EstimatorPlugin):
    """The closed-form Gaussian estimator in the estimator registry."""

    name = "gaussian"
    estimator = Estimator(
        name="gaussian",
        function=mutual_information,
        unit="nats",
        differentiable=True,
        cost="O(N d^2 + d^3)",
        description="closed-form MI of Gaussian fits (log-determinants of covariances)",
        information_plane=information_plane,
    )
