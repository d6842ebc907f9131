"""The ``kl_pairwise`` plugin: Kolchinsky–Tracey pairwise-distance bounds on I(T;X) and I(T;Y).

A representation ``z`` plus Gaussian noise, ``T = Z + ε``, ``ε ~ N(0, σ²I)``, is a mixture
of ``N`` Gaussians centred on the samples (Kolchinsky & Tracey, "Estimating mixture entropy
with pairwise distances", Entropy 2017, §4). With ``D_ij = ‖z_i − z_j‖²`` and ``d`` features:

- upper bound (KL distance):
  ``H_KL = d/2 + (d/2)·log(2πσ²) + log N − (1/N)·Σ_i LSE_j(−D_ij / (2σ²))``;
- lower bound (Bhattacharyya distance ``D_ij/(8σ²)``): ``H_KL`` evaluated at ``4σ²``
  plus ``(d/2)·log(1/4)``, i.e. ``H_KL`` with ``σ² → 4σ²`` inside the LSE only (the
  ``log(1/4)`` cancels the change of the normalizer; this is the reference code's form);
- ``H(T|X) = (d/2)·(log(2πσ²) + 1)``, ``I(T;X) = H(T) − H(T|X)``,
  ``I(T;Y) = H(T) − Σ_c p(c)·H(T|Y=c)``, both entropies with the same bound (as in the
  reference code; the difference of two bounds is an estimate, not a bound).

Every function is differentiable torch code, computes in float64 and returns nats unless
``unit="bits"``. The bounds satisfy ``0 ≤ I(T;X) ≤ log N`` and lower ≤ upper. For labels,
``I(T;Y) = H(Y) − (1/N)·Σ_i log(S_i / S_i^c)`` with ``S_i = Σ_j exp(−D_ij/(2sσ²))`` over all
samples and ``S_i^c`` over those of ``i``'s class (``s`` = 1 or 4), so ``I(T;Y) ≤ H(Y)``, the
plug-in entropy of the labels, by construction (``S_i ≥ S_i^c``); ``I(T;Y) ≥ 0`` held in every
test. Inputs holding NaN or Inf are refused (:class:`~infoshape.errors.NonFiniteError`).

Saturation: when the noise is small against the distances between samples, every sample is
told apart: ``I(T;X) → log N`` and ``I(T;Y) → H(Y)``, trivially. :func:`information_plane`
warns ``saturated`` (:class:`~infoshape.errors.EstimatorAssumptionWarning`) when
``I(T;X) ≥ (1 − SATURATION_RTOL)·log N``.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Literal

import attrs
import torch

from infoshape.errors import ConfigError, EstimatorAssumptionWarning
from infoshape.math.linalg import (
    class_conditional,
    nonempty_samples,
    paired_labels,
    pairwise_sq_distances,
    require_finite,
)
from infoshape.options import one_of, positive
from infoshape.plugin import EstimatorPlugin
from infoshape.registry import Estimator

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = [
    "SATURATION_RTOL",
    "KLPairwise",
    "conditional_entropy",
    "entropy_lower",
    "entropy_upper",
    "information_plane",
    "mi_tx",
    "mi_ty",
]

Bound = Literal["upper", "lower"]
Unit = Literal["nats", "bits"]
#: ``I(T;X) ≥ (1 − SATURATION_RTOL)·log N`` counts as saturated (module docstring).
SATURATION_RTOL = 0.01


def _check(noise_var: float, bound: str = "upper", unit: str = "nats") -> None:
    if not float(noise_var) > 0:
        raise ConfigError(
            "kl_pairwise: the noise variance must be positive",
            expected="noise_var > 0 (docs/methods.md default 0.1; papers also use 1e-3 and 0.05)",
            got=repr(noise_var),
            fix="pass noise_var=0.1",
        )
    if bound not in ("upper", "lower"):
        raise ConfigError(
            "kl_pairwise: unknown bound",
            expected='"upper" (KL) or "lower" (Bhattacharyya)',
            got=repr(bound),
            fix='pass bound="upper" or bound="lower"',
        )
    if unit not in ("nats", "bits"):
        raise ConfigError(
            "kl_pairwise: unknown unit",
            expected='"nats" or "bits"',
            got=repr(unit),
            fix='pass unit="nats" or unit="bits"',
        )


def _in(value: torch.Tensor, unit: str) -> torch.Tensor:
    return value / math.log(2.0) if unit == "bits" else value


def _entropy(z: torch.Tensor, noise_var: float, bound: str) -> torch.Tensor:
    """The mixture-entropy bound in nats of float64 samples ``z`` (N, d)."""
    n, d = z.shape
    scale = 1.0 if bound == "upper" else 4.0  # KL: D/(2σ²); Bhattacharyya: D/(8σ²)
    lse = torch.logsumexp(-pairwise_sq_distances(z) / (2.0 * scale * noise_var), dim=1)
    return d / 2 + (d / 2) * math.log(2 * math.pi * noise_var) + math.log(n) - lse.mean()


def _samples(x: torch.Tensor | ArrayLike, what: str = "x") -> torch.Tensor:
    return require_finite(nonempty_samples(x, "kl_pairwise"), "kl_pairwise", what)


def entropy_upper(
    x: torch.Tensor | ArrayLike, noise_var: float = 0.1, *, unit: Unit = "nats"
) -> torch.Tensor:
    """KL upper bound on ``H(Z + ε)``, ``ε ~ N(0, noise_var·I)`` (Kolchinsky–Tracey eq. 10)."""
    _check(noise_var, unit=unit)
    return _in(_entropy(_samples(x), noise_var, "upper"), unit)


def entropy_lower(
    x: torch.Tensor | ArrayLike, noise_var: float = 0.1, *, unit: Unit = "nats"
) -> torch.Tensor:
    """Bhattacharyya lower bound on ``H(Z + ε)``, ``ε ~ N(0, noise_var·I)``."""
    _check(noise_var, unit=unit)
    return _in(_entropy(_samples(x), noise_var, "lower"), unit)


def conditional_entropy(d: int, noise_var: float = 0.1, *, unit: Unit = "nats") -> float:
    """``H(T|X) = (d/2)·(log(2πσ²) + 1)``: the entropy of the noise in ``d`` dimensions."""
    _check(noise_var, unit=unit)
    value = (d / 2) * (math.log(2 * math.pi * noise_var) + 1.0)
    return value / math.log(2.0) if unit == "bits" else value


def mi_tx(
    x: torch.Tensor | ArrayLike,
    noise_var: float = 0.1,
    bound: Bound = "upper",
    *,
    unit: Unit = "nats",
) -> torch.Tensor:
    """``I(T;X) = H(T) − H(T|X)`` for ``T = Z + ε`` with the chosen bound on ``H(T)``."""
    _check(noise_var, bound, unit)
    z = _samples(x)
    return _in(_entropy(z, noise_var, bound) - conditional_entropy(z.shape[1], noise_var), unit)


def mi_ty(
    x: torch.Tensor | ArrayLike,
    labels: torch.Tensor | ArrayLike,
    noise_var: float = 0.1,
    bound: Bound = "upper",
    *,
    unit: Unit = "nats",
) -> torch.Tensor:
    """``I(T;Y) = H(T) − Σ_c p(c)·H(T|Y=c)``, each entropy with the chosen bound.

    ``p(c)`` are the label frequencies; only classes present in ``labels`` enter.
    """
    _check(noise_var, bound, unit)
    z = _samples(x)
    labels = require_finite(paired_labels(z, labels, "kl_pairwise"), "kl_pairwise", "labels")
    conditional = class_conditional(lambda zc: _entropy(zc, noise_var, bound), z, labels)
    return _in(_entropy(z, noise_var, bound) - conditional, unit)


def _warn_saturated(i_tx: torch.Tensor, n: int, noise_var: float) -> None:
    if n < 2 or float(i_tx) < (1 - SATURATION_RTOL) * math.log(n):
        return
    warnings.warn(
        EstimatorAssumptionWarning(
            "kl_pairwise",
            "saturated",
            "the noise tells every sample apart: I(X;T) = log N and I(T;Y) = H(Y) trivially",
            expected=f"I(X;T) well below log N = {math.log(n):.4g} nats",
            got=f"I(X;T) = {float(i_tx):.4g} nats with noise_var={noise_var!r} for {n} samples",
            fix="raise noise_var to the scale of the distances between samples "
            "(the papers use 1e-3 to 0.1 for activations of order 1)",
        ),
        stacklevel=3,
    )


def information_plane(
    x: torch.Tensor | ArrayLike | None,
    t: torch.Tensor | ArrayLike,
    labels: torch.Tensor | ArrayLike,
    noise_var: float = 0.1,
    bound: Bound = "upper",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(I(X;T), I(T;Y))`` in nats: the noise-based ``mi_tx(t)`` (``x`` unused) and ``mi_ty``.

    ``x`` is still checked for NaN/Inf; warns ``saturated`` at ``I(X;T) ≈ log N``.
    """
    if x is not None:
        require_finite(torch.as_tensor(x), "kl_pairwise", "x")
    t = _samples(t, "t")
    i_tx = mi_tx(t, noise_var, bound)
    _warn_saturated(i_tx, len(t), noise_var)
    return i_tx, mi_ty(t, labels, noise_var, bound)


class KLPairwise(EstimatorPlugin):
    """Pairwise-distance bounds as an estimator, and per-layer I(T;X), I(T;Y) at epoch end."""

    name = "kl_pairwise"
    estimator = Estimator(
        name="kl_pairwise",
        function=mi_tx,
        unit="nats",
        differentiable=True,
        cost="O(N^2 d)",
        description="Kolchinsky–Tracey pairwise-distance bounds on I(T;X), I(T;Y)",
        information_plane=information_plane,
    )

    @attrs.frozen(kw_only=True)
    class Config:
        """Options of the ``kl_pairwise`` plugin.

        Attributes:
            noise_var: variance σ² of the added Gaussian noise.
            bound: ``"upper"`` (KL) or ``"lower"`` (Bhattacharyya).
            layers: module globs to tap (outputs); each gets ``kl_pairwise.<capture>.I_TX``
                and ``.I_TY`` on the probe set at every epoch end.
        """

        noise_var: float = attrs.field(default=0.1, validator=positive())
        bound: Bound = attrs.field(default="upper", validator=one_of("upper", "lower"))
        layers: tuple[str, ...] = ()

    def layer_metrics(self, t: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``I_TX`` and ``I_TY`` of one layer's probe representation."""
        i_tx, i_ty = information_plane(
            None, t, labels, noise_var=self.config.noise_var, bound=self.config.bound
        )  # warns "saturated" like the offline analysis
        return {"I_TX": i_tx, "I_TY": i_ty}
