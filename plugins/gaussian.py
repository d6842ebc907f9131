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
data a Gaussian surrogate. Differentiable (``torch.linalg.slogdet``); nats.
"""

from __future__ import annotations

import math

import torch

from infoshape.errors import ConfigError
from infoshape.estimator_plugin import EstimatorPlugin
from infoshape.math.linalg import class_conditional, nonempty_samples, paired_labels
from infoshape.registry import Estimator

__all__ = [
    "Gaussian",
    "entropy",
    "information_plane",
    "mutual_information",
    "mutual_information_labels",
]

RIDGE = 1e-6


def _samples(x, what: str = "x") -> torch.Tensor:
    return nonempty_samples(x, f"gaussian ({what})")


def _logdet_cov(z: torch.Tensor, ridge: float) -> torch.Tensor:
    """``log det(Σ + ridge·I)`` of the maximum-likelihood covariance of the rows of ``z``."""
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
    return logabsdet


def _entropy(z: torch.Tensor, ridge: float) -> torch.Tensor:
    return 0.5 * (z.shape[1] * math.log(2 * math.pi * math.e) + _logdet_cov(z, ridge))


def entropy(x, *, ridge: float = RIDGE) -> torch.Tensor:
    """``H = ½·log det(2πe·(Σ + ridge·I))`` in nats of a Gaussian fitted to the rows of ``x``."""
    return _entropy(_samples(x), ridge)


def mutual_information(x, y, *, ridge: float = RIDGE) -> torch.Tensor:
    """``I(X;Y) = ½·log(det Σ_x · det Σ_y / det Σ_xy)`` in nats (ridge on each covariance)."""
    xs, ys = _samples(x), _samples(y, "y")
    if xs.shape[0] != ys.shape[0]:
        raise ConfigError(
            "gaussian: x and y differ in number of samples",
            expected="paired rows, one per sample in each",
            got=f"{xs.shape[0]} and {ys.shape[0]} rows",
            fix="pass samples of the same batch",
        )
    joint = torch.cat([xs, ys.to(xs.device)], dim=1)
    return 0.5 * (_logdet_cov(xs, ridge) + _logdet_cov(ys, ridge) - _logdet_cov(joint, ridge))


def mutual_information_labels(t, labels, *, ridge: float = RIDGE) -> torch.Tensor:
    """``I(T;Y) = H(T) − Σ_c p(c)·H(T|Y=c)`` in nats, every entropy a Gaussian fit.

    ``p(c)`` are the label frequencies; classes absent from ``labels`` do not enter.
    """
    z = _samples(t, "t")
    labels = paired_labels(z, labels, "gaussian")
    conditional = class_conditional(lambda zc: _entropy(zc, ridge), z, labels)
    return _entropy(z, ridge) - conditional


def information_plane(x, t, labels, *, ridge: float = RIDGE):
    """``(I(X;T), I(T;Y))`` in nats from Gaussian fits.

    ``I(X;T)`` is limited by the ridge when ``T`` is a deterministic function of ``X``.
    """
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
        description="closed-form MI of Gaussian fits (slogdet of covariances)",
        information_plane=information_plane,
    )
