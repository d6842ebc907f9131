"""Per-unit activation statistics of one captured tensor (pure functions, no state)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["unit_statistics"]


def _by_unit(activations: torch.Tensor) -> torch.Tensor:
    """Rearrange ``(n, units, *space)`` into ``(units, n * prod(space))``.

    A unit is an entry of dimension 1: a neuron of a dense layer, a channel of a
    convolutional map (its spatial positions count as more observations of it).
    A 1-d tensor ``(n,)`` is one unit.
    """
    x = activations.detach().to(torch.float64)
    if x.ndim == 1:
        x = x[:, None]
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def unit_statistics(activations: torch.Tensor, threshold: float = 0.0) -> dict[str, object]:
    """Activity statistics of the units of one layer over a set of samples.

    Args:
        activations: ``(n, units)`` or ``(n, channels, *space)``, samples first, ``n >= 1``.
        threshold: a unit is active on an entry when its value is ``> threshold``.

    Returns:
        ``active_fraction``: fraction of (sample, unit[, position]) entries that are active;
        ``dead_units``: fraction of units active on no entry;
        ``mean``: mean of all entries;
        ``unit_mean``: per-unit mean, a float64 array of length ``units``.

    Raises:
        ValueError: for an empty set of samples.
    """
    if activations.ndim == 0 or activations.shape[0] == 0:
        raise ValueError(
            "unit_statistics needs at least one sample\n"
            "  expected: a tensor of shape (n, units, ...) with n >= 1\n"
            f"  got: shape {tuple(activations.shape)}\n"
            "  fix: skip empty captures before calling it"
        )
    units = _by_unit(activations)
    active = units > threshold
    return {
        "active_fraction": float(active.to(torch.float64).mean()),
        "dead_units": float((~active.any(dim=1)).to(torch.float64).mean()),
        "mean": float(units.mean()),
        "unit_mean": units.mean(dim=1).numpy().astype(np.float64),
    }
