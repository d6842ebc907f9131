"""Shared numerics for estimators and penalties: flattening, pairwise distances, one-hot.

One implementation each, so every plugin computes distances the same way
(STYLE.md §12). All functions are differentiable torch code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from infoshape.errors import ConfigError, NonFiniteError

__all__ = [
    "as_samples",
    "class_conditional",
    "label_entropy",
    "nonempty_samples",
    "one_hot",
    "paired_labels",
    "pairwise_sq_distances",
    "require_finite",
]


def as_samples(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x`` as a 2-D ``(N, features)`` tensor: one row per sample, trailing dims flattened.

    Raises:
        ConfigError: when ``x`` is a scalar.
    """
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.ndim == 0:
        raise ConfigError(
            "a representation needs a sample dimension",
            expected="a tensor of shape (N, ...)",
            got="a scalar",
            fix="pass one row per sample",
        )
    x = x.reshape(x.shape[0], -1) if x.ndim != 2 else x
    return x if dtype is None else x.to(dtype)


def nonempty_samples(x, who: str, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``as_samples(x, dtype)``, refusing an empty batch with a message naming ``who``."""
    z = as_samples(x, dtype)
    if z.shape[0] == 0:
        raise ConfigError(
            f"{who}: no samples",
            expected="a tensor of shape (N, ...) with N >= 1",
            got=f"shape {tuple(z.shape)}",
            fix="pass at least one sample",
        )
    return z


def require_finite(x: torch.Tensor, who: str, what: str = "input") -> torch.Tensor:
    """``x`` unchanged when every value is finite, else :class:`NonFiniteError` naming them.

    Offline use (estimators): it reads one flag back to the host, so keep it out of a
    training step's hot path.

    Args:
        x: any tensor.
        who: the function or plugin, for the message (``"ksg"``).
        what: the argument, for the message (``"x"``, ``"labels"``).

    Raises:
        NonFiniteError: with how many values are NaN / ±Inf and the first sample holding one.
    """
    bad = ~torch.isfinite(x)
    if not bool(bad.any()):
        return x
    n_nan = int(torch.isnan(x).sum())
    rows = bad.reshape(x.shape[0], -1).any(1).nonzero() if x.ndim else bad.reshape(1, 1)
    first = int(rows[0, 0]) if x.ndim else 0
    raise NonFiniteError(
        f"{who}: {what} holds non-finite values",
        expected="finite values only (an estimate on NaN or Inf is meaningless)",
        got=(
            f"{n_nan} NaN and {int(bad.sum()) - n_nan} ±Inf of {x.numel()} values "
            f"in {int(rows.shape[0])} of {x.shape[0] if x.ndim else 1} samples "
            f"(first: sample {first})"
        ),
        fix="drop or repair those samples first (a diverged run stores NaN activations)",
    )


def paired_labels(z: torch.Tensor, labels, who: str) -> torch.Tensor:
    """``labels`` as a 1-D tensor on ``z``'s device, one per row of ``z``, else an error."""
    labels = torch.as_tensor(labels).reshape(-1).to(z.device)
    if labels.shape[0] != z.shape[0]:
        raise ConfigError(
            f"{who}: labels and samples differ in number",
            expected=f"{z.shape[0]} labels, one per sample",
            got=f"{labels.shape[0]} labels",
            fix="pass the labels of the same batch",
        )
    return labels


def class_conditional(
    entropy: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """``Σ_c p(c)·H(Z | Y=c)``: ``entropy`` of each class's rows, weighted by frequency.

    Only classes present in ``labels`` enter; ``I(Z;Y) = H(Z) − class_conditional(...)``.
    """
    classes, counts = torch.unique(labels, return_counts=True)
    total = z.new_zeros(())
    for c, k in zip(classes, counts, strict=True):
        total = total + (int(k) / z.shape[0]) * entropy(z[labels == c])
    return total


def label_entropy(labels) -> torch.Tensor:
    """Plug-in entropy ``H(Y) = −Σ_c p(c)·log p(c)`` in nats of the label frequencies (float64).

    The ceiling of every estimate of ``I(T;Y)`` for discrete labels.
    """
    labels = torch.as_tensor(labels).reshape(-1)
    if labels.numel() == 0:
        return torch.zeros((), dtype=torch.float64)
    counts = torch.unique(labels, return_counts=True)[1].sort().values.to(torch.float64)
    p = counts / labels.numel()
    return -(p * p.log()).sum()


def pairwise_sq_distances(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances ``D_ij = ‖x_i − y_j‖²`` of the rows, clamped at 0.

    Uses ``‖x‖² + ‖y‖² − 2 x·y``: one ``addmm`` into a single ``N × M`` buffer that the
    other terms update in place (no further ``N × M`` temporaries: 3-4x faster at
    N = 10,000 than the out-of-place expression); the diagonal of ``D(x, x)`` is set to
    exactly 0. Differentiable (autograd tracks the in-place updates).
    """
    x = as_samples(x)
    same = y is None
    y = x if y is None else as_samples(y)
    sq_x = (x * x).sum(1, keepdim=True)
    sq_y = sq_x if same else (y * y).sum(1, keepdim=True)
    d = torch.addmm(sq_y.T, x, y.T, alpha=-2.0).add_(sq_x).clamp_min_(0.0)
    if same:
        d.fill_diagonal_(0.0)
    return d


def one_hot(
    labels: torch.Tensor, n_classes: int | None = None, dtype=torch.float64
) -> torch.Tensor:
    """One-hot rows ``(N, C)`` of integer ``labels`` (``C`` inferred when not given)."""
    labels = torch.as_tensor(labels).long().reshape(-1)
    n = int(labels.max()) + 1 if n_classes is None else n_classes
    return torch.nn.functional.one_hot(labels, n).to(dtype)
