"""Kernel width σ of the matrix-based Rényi entropy: kernel-target alignment and averages.

Kernel-target alignment (Cristianini et al. 2001; docs/methods.md §1, MI-CE §3.2) chooses σ on a
grid of candidates from the pairwise distances; :class:`SigmaAverage` keeps a moving average
of the chosen σ across steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import torch

from infoshape.math.linalg import as_samples, pairwise_sq_distances
from infoshape.math.matrix_entropy import Convention, as_tensor, convert_sigma, label_gram

__all__ = ["DECAY", "SigmaAverage", "alignment_curve", "select_sigma"]


#: the validators of a moving-average decay: ``0 ≤ decay < 1``.
DECAY = [attrs.validators.ge(0.0), attrs.validators.lt(1.0)]


@attrs.define(kw_only=True)
class SigmaAverage:
    """Moving average of a kernel width across steps or epochs (docs/methods.md §1).

    Attributes:
        decay: weight of the past average; the first :meth:`update` takes the width as is.
        value: the current average (``None`` before the first update).
    """

    decay: float = attrs.field(default=0.9, validator=DECAY)
    value: float | None = None

    def update(self, sigma: float) -> float:
        """Fold in ``sigma``: ``value ← decay·value + (1 − decay)·sigma``; return ``value``."""
        old = float(sigma) if self.value is None else self.value
        self.value = self.decay * old + (1 - self.decay) * float(sigma)
        return self.value


def alignment_curve(
    x: torch.Tensor,
    labels: torch.Tensor,
    sigmas: Sequence[float],
    convention: Convention = "2sigma2",
    n_classes: int | None = None,
) -> torch.Tensor:
    """Kernel-target alignment ``⟨K_σ, K_y⟩_F / (‖K_σ‖_F ‖K_y‖_F)`` for each width.

    Cristianini et al. 2001 (docs/methods.md §1; MI-CE §3.2); ``K_y`` is :func:`label_gram`.
    Over the pairs ``i < j``, with ``g = exp(−d²/(2σ²))``: ``⟨K, K_y⟩ = tr K_y + 2·Σ g·(K_y)_ij``
    and ``‖K‖_F² = N + 2·Σ g²`` (for class labels, ``(K_y)_ij = 1(y_i = y_j)``). Distances
    in float64, the ``len(sigmas)·N(N−1)/2`` exponentials in float32 (an argmax needs no
    more). ``n_classes`` as for :func:`label_gram` (given: no host sync). Returns float64.
    """
    z = as_samples(torch.as_tensor(x), torch.float64)
    Ky = label_gram(labels, n_classes).to(z.device)
    n = z.shape[0]
    i, j = torch.triu_indices(n, n, 1, device=z.device)
    d = pairwise_sq_distances(z)[i, j].float()
    widths = [convert_sigma(v, convention, "2sigma2") for v in sigmas]
    coef = torch.tensor([-0.5 / w**2 for w in widths], device=z.device)
    g = torch.outer(coef, d).exp_()  # (candidates, pairs), in place: one temporary
    inner = Ky.diagonal().sum() + 2 * (g @ Ky[i, j].float()).double()
    norm = (n + 2 * g.square_().sum(1).double()).sqrt()
    return inner / (norm * torch.linalg.matrix_norm(Ky))


def select_sigma(
    x: Any,
    labels: Any,
    n_candidates: int = 100,
    *,
    quantiles: tuple[float, float] = (0.01, 0.99),
    convention: Convention = "2sigma2",
    average: SigmaAverage | None = None,
) -> float:
    """The width maximizing the alignment ``⟨K_σ, K_y⟩_F / (‖K_σ‖_F ‖K_y‖_F)`` (docs/methods.md §1).

    Grid: ``n_candidates`` widths log-spaced between the ``quantiles`` of the non-zero pairwise
    distances ``‖x_i − x_j‖`` (σ of ``exp(−d²/(2σ²))``); ``K_y`` is :func:`label_gram`.
    Cost ``O(n_candidates·N²)``. With ``average``, its moving average after folding in the best
    candidate is returned. Returns σ in ``convention``; σ = 1 for constant data.
    """
    with torch.no_grad():
        D = pairwise_sq_distances(as_samples(as_tensor(x), torch.float64))
        d = D[tuple(torch.triu_indices(len(D), len(D), 1))].sqrt()
        d = d[d > 0][:: d.numel() // 2**24 + 1]  # torch.quantile takes up to 2^24 values
        if d.numel() == 0:
            return convert_sigma(1.0, "2sigma2", convention)
        lo, hi = torch.quantile(d, torch.tensor(quantiles, dtype=d.dtype)).tolist()
        grid = np.geomspace(lo, hi, n_candidates) if hi > lo else np.array([lo])
        align = alignment_curve(x, labels, grid.tolist())
        best = float(grid[int(torch.argmax(align))])
    return convert_sigma(average.update(best) if average else best, "2sigma2", convention)
