"""Shared numerics for estimators and penalties: flattening, pairwise distances, one-hot.

One implementation each, so every plugin computes distances the same way
(STYLE.md §12). All functions are differentiable torch code.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from infoshape.errors import ConfigError, NonFiniteError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = [
    "as_samples",
    "class_conditional",
    "full_precision",
    "label_entropy",
    "nonempty_samples",
    "one_hot",
    "paired_labels",
    "pairwise_sq_distances",
    "require_class_labels",
    "require_finite",
]


F = TypeVar("F", bound=Callable[..., Any])
_HALF = (torch.float16, torch.bfloat16)


def full_precision(function: F) -> F:
    """Run ``function`` outside ``torch.autocast``, its half-precision tensors as float32.

    Under autocast, matrix products run in float16/bfloat16 whatever their inputs: Gram
    matrices, covariances and exponentials then lose most of their digits (bfloat16 keeps
    8 bits) or overflow (float16 ends at 65504), and a product of a float32 and a
    half-precision operand made by a custom backward fails. Penalties and estimators wrap
    their math in this: autocast is switched off on the devices of the tensor arguments,
    and float16/bfloat16 tensor arguments are upcast to float32 (float32 and float64 are
    kept). Gradients flow back through the upcast to the half-precision activations.
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
        devices = {t.device.type for t in tensors}
        with contextlib.ExitStack() as stack:
            for device in devices:
                if torch.is_autocast_enabled(device):
                    stack.enter_context(torch.autocast(device, enabled=False))
            args = tuple(_widened(v) for v in args)
            kwargs = {k: _widened(v) for k, v in kwargs.items()}
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _widened(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype in _HALF:
        return value.float()
    return value


def as_samples(x: torch.Tensor | ArrayLike, dtype: torch.dtype | None = None) -> torch.Tensor:
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


def nonempty_samples(
    x: torch.Tensor | ArrayLike, who: str, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
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


def require_class_labels(labels: torch.Tensor, n_classes: int, who: str, fix: str) -> None:
    """Refuse labels outside ``[0, n_classes)`` without reading them back in the step.

    The check is ``torch._assert_async`` on the labels' min and max: on the CPU it fails at
    once and the message names the range found; on an accelerator it is queued with the
    step's kernels (no host sync) and a bad label fails the device's next sync (a
    device-side assert, whose message is the device's own).

    Raises:
        ConfigError: (on the CPU) a label is out of range, with the range found.
    """
    if labels.numel() == 0:
        return
    low, high = torch.aminmax(labels)
    try:
        torch._assert_async((low >= 0) & (high < n_classes), f"{who}: a label is out of range")
    except RuntimeError:
        raise ConfigError(
            f"{who}: a label is out of range (labels are class indices in [0, n_classes))",
            expected=f"labels in [0, {n_classes - 1}]",
            got=f"labels in [{int(low)}, {int(high)}]",
            fix=fix,
        ) from None


def paired_labels(z: torch.Tensor, labels: torch.Tensor | ArrayLike, who: str) -> torch.Tensor:
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


def label_entropy(labels: torch.Tensor | ArrayLike) -> torch.Tensor:
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
    labels: torch.Tensor | ArrayLike,
    n_classes: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """One-hot rows ``(N, C)`` of integer ``labels`` (``C`` inferred when not given)."""
    labels = torch.as_tensor(labels).long().reshape(-1)
    n = int(labels.max()) + 1 if n_classes is None else n_classes
    return torch.nn.functional.one_hot(labels, n).to(dtype)
