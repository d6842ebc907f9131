"""The base objective and the :class:`Penalty` record plugins return.

The session's loss is ``objective + Σ weight · penalty``. The objective is
cross-entropy unless a plugin supplies one through ``infoshape_objective``.
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F

from infoshape.errors import ConfigError
from infoshape.math.linalg import require_class_labels

__all__ = ["Penalty", "cross_entropy"]


def _finite_number(_instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(
            f"Penalty.{attribute.name} must be a finite number",
            expected="a float such as 0.1",
            got=repr(value),
            fix="pass the coefficient as a Python float",
        )


@attrs.frozen
class Penalty:
    """A term a plugin adds to the loss.

    Attributes:
        name: metric name of the term (``"shade"``, ``"cr.fc2"``); emitted as ``penalty.<name>``.
        value: a scalar tensor that keeps its autograd graph.
        weight: the coefficient the runtime multiplies ``value`` by (β, λ, α₂ ...).
    """

    name: str
    value: torch.Tensor
    weight: float = attrs.field(default=1.0, validator=_finite_number)


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits ``outputs`` (N, C) against class indices ``targets`` (N,).

    Raises:
        ConfigError: when the shapes or the label range do not fit, saying which.
    """
    if outputs.ndim != 2:
        raise ConfigError(
            "the default objective (cross-entropy) needs logits of shape (batch, classes)",
            expected="outputs.ndim == 2",
            got=f"outputs of shape {tuple(outputs.shape)}",
            fix="return logits from the model, or enable a plugin that supplies the objective",
        )
    if targets.ndim != 1 or targets.shape[0] != outputs.shape[0]:
        raise ConfigError(
            "targets do not match the batch",
            expected=f"class indices of shape ({outputs.shape[0]},)",
            got=f"targets of shape {tuple(targets.shape)}",
            fix="pass one integer label per sample",
        )
    require_class_labels(
        targets,
        outputs.shape[1],
        "the default objective (cross-entropy)",
        fix="check the data set's number of classes against the model's output size",
    )
    return F.cross_entropy(outputs, targets)
