"""The ``binning`` plugin: the classic information-plane estimator (Shwartz-Ziv & Tishby 2017).

Each unit of a representation ``T`` is cut into ``n_bins`` equal-width bins over one range
per layer (the layer's min and max over all samples and units, or fixed ``bounds``); each
binned row is one symbol. Entropies are the plug-in (maximum-likelihood) entropies of the
symbol frequencies, in nats:

- ``H(T) = −Σ_t p(t)·log p(t)``;
- ``I(X;T) = H(T) − H(T|X)``, ``X`` the input rows grouped by exact equality: for a
  deterministic network ``H(T|X) = 0`` and ``I(X;T) = H(T)``;
- ``I(T;Y) = H(T) − Σ_c p(c)·H(T|Y=c)``.

Mutual information is computed as ``H(A) + H(B) − H(A,B)`` and clamped at 0 (it is ≥ 0 for
plug-in entropies; the clamp only removes rounding), so ``0 ≤ I(T;Y) ≤ H(Y)`` holds by
construction. Not differentiable (binning has zero gradient almost everywhere): use it for
analysis, not in a penalty. Inputs holding NaN or Inf are refused
(:class:`~infoshape.errors.NonFiniteError`).

Saturation: when ``H(T) ≥ (1 − SATURATION_RTOL)·log N`` (nearly every sample in its own bin),
``I(X;T) = log N`` and ``I(T;Y) = H(Y)`` hold trivially and say nothing about the layer (too
many bins for ``N`` samples); :func:`information_plane` then warns ``saturated``
(:class:`~infoshape.errors.EstimatorAssumptionWarning`).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import attrs
import torch

from infoshape.errors import ConfigError, EstimatorAssumptionWarning
from infoshape.math.linalg import as_samples, nonempty_samples, require_finite
from infoshape.options import positive, satisfies
from infoshape.plugin import EstimatorPlugin
from infoshape.registry import Estimator

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = [
    "SATURATION_RTOL",
    "Binning",
    "discretize",
    "entropy",
    "information_plane",
    "mutual_information",
]

#: ``H(T) ≥ (1 − SATURATION_RTOL)·log N`` counts as saturated (module docstring).
SATURATION_RTOL = 0.01


def _rows(symbols: torch.Tensor | ArrayLike, what: str = "symbols") -> torch.Tensor:
    rows = nonempty_samples(torch.as_tensor(symbols).detach(), "binning", dtype=None)
    return require_finite(rows, "binning", what)


def discretize(
    t: torch.Tensor | ArrayLike, n_bins: int = 30, bounds: tuple[float, float] | None = None
) -> torch.Tensor:
    """Bin indices ``(N, d)`` (int64, in ``[0, n_bins)``) of each unit of ``t``.

    Args:
        t: a representation ``(N, ...)``; trailing dims are flattened.
        n_bins: number of equal-width bins.
        bounds: ``(low, high)`` of the binned range; values outside go to the edge bins.
            ``None``: the min and max of ``t`` (one range for the whole layer).
    """
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ConfigError(
            "binning: n_bins must be a positive int",
            expected="an int >= 1 (default 30)",
            got=repr(n_bins),
            fix="pass n_bins=30",
        )
    z = require_finite(as_samples(torch.as_tensor(t).detach(), torch.float64), "binning", "t")
    if bounds is None:
        low, high = (float(z.min()), float(z.max())) if z.numel() else (0.0, 1.0)
    else:
        low, high = map(float, bounds)
        if not low < high:
            raise ConfigError(
                "binning: empty bounds",
                expected="bounds=(low, high) with low < high",
                got=repr(bounds),
                fix="pass e.g. bounds=(-1.0, 1.0) for tanh units, or None for the data's range",
            )
    if high == low:  # a constant layer: one bin
        return torch.zeros(z.shape, dtype=torch.int64, device=z.device)
    index = torch.floor((z - low) / (high - low) * n_bins)
    return index.clamp(0, n_bins - 1).to(torch.int64)


def entropy(symbols: torch.Tensor | ArrayLike) -> torch.Tensor:
    """Plug-in entropy ``−Σ p·log p`` in nats of the rows of ``symbols``.

    ``symbols`` is ``(N,)`` or ``(N, k)`` (any dtype); equal rows are one symbol.
    """
    rows = _rows(symbols)
    _, counts = torch.unique(rows, dim=0, return_counts=True)
    p = counts.sort().values.to(torch.float64) / rows.shape[0]  # sorted: one summation order
    return -(p * p.log()).sum()


def mutual_information(
    a_symbols: torch.Tensor | ArrayLike, b_symbols: torch.Tensor | ArrayLike
) -> torch.Tensor:
    """Plug-in ``I(A;B) = H(A) + H(B) − H(A,B)`` in nats of paired symbol rows."""
    a, b = _rows(a_symbols, "the first variable"), _rows(b_symbols, "the second variable")
    if a.shape[0] != b.shape[0]:
        raise ConfigError(
            "binning: the two variables differ in number of samples",
            expected="paired rows, one per sample in each",
            got=f"{a.shape[0]} and {b.shape[0]} rows",
            fix="pass symbols of the same samples",
        )
    dtype = torch.promote_types(a.dtype, b.dtype)
    joint = torch.cat([a.to(dtype), b.to(dtype).to(a.device)], dim=1)
    return (entropy(a) + entropy(b) - entropy(joint)).clamp_min(0.0)


def _warn_saturated(h_t: torch.Tensor, n: int, n_bins: int) -> None:
    if n < 2 or float(h_t) < (1 - SATURATION_RTOL) * math.log(n):
        return
    warnings.warn(
        EstimatorAssumptionWarning(
            "binning",
            "saturated",
            "every sample falls in a bin of its own: I(X;T) = log N and I(T;Y) = H(Y) trivially",
            expected=f"H(T) well below log N = {math.log(n):.4g} nats (bins shared by samples)",
            got=f"H(T) = {float(h_t):.4g} nats with n_bins={n_bins} for {n} samples",
            fix="use fewer bins (n_bins=10 or less for wide layers) or more samples",
        ),
        stacklevel=3,
    )


def information_plane(
    x: torch.Tensor | ArrayLike,
    t: torch.Tensor | ArrayLike,
    labels: torch.Tensor | ArrayLike,
    n_bins: int = 30,
    bounds: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(I(X;T), I(T;Y))`` in nats, ``T`` binned, ``X`` the exact input rows.

    Warns ``saturated`` when ``H(T)`` reaches ``log N`` (module docstring).
    """
    _rows(x, "x"), _rows(labels, "labels")
    symbols = discretize(t, n_bins, bounds)
    _warn_saturated(entropy(symbols), symbols.shape[0], n_bins)
    return mutual_information(x, symbols), mutual_information(symbols, labels)


class Binning(EstimatorPlugin):
    """Binning as an estimator, and per-layer I(X;T), I(T;Y) at epoch end."""

    name = "binning"
    estimator = Estimator(
        name="binning",
        function=mutual_information,
        unit="nats",
        differentiable=False,
        cost="O(N d log N)",
        description="equal-width binning, plug-in entropies (Shwartz-Ziv & Tishby)",
        information_plane=information_plane,
    )

    @attrs.frozen(kw_only=True)
    class Config:
        """Options of the ``binning`` plugin.

        Attributes:
            n_bins: equal-width bins per unit.
            bounds: fixed ``(low, high)`` range, or ``None`` for each layer's min and max.
            layers: module globs to tap (outputs); each gets ``binning.<capture>.I_TX``
                (``= H(T)``: the network is deterministic on the probe set) and ``.I_TY``.
        """

        n_bins: int = attrs.field(default=30, validator=positive())
        bounds: tuple[float, float] | None = attrs.field(
            default=None,
            validator=satisfies(
                lambda value: value[0] < value[1],
                "(low, high) with low < high",
                problem="is not an interval",
                example=(0.0, 4.0),
                optional=True,
            ),
        )
        layers: tuple[str, ...] = ()

    def layer_metrics(self, t: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``I_TX = H(T)`` (deterministic network) and ``I_TY`` of one layer's probe codes."""
        symbols = discretize(t, self.config.n_bins, self.config.bounds)
        h_t = entropy(symbols)
        _warn_saturated(h_t, symbols.shape[0], self.config.n_bins)
        return {"I_TX": h_t, "I_TY": mutual_information(symbols, labels)}
