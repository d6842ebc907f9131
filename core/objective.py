"""The base objective and the :class:`Penalty` record plugins return.

The session's loss is ``objective + Σ weight · penalty``. The objective is
cross-entropy unless a plugin supplies one through ``infoshape_objective``; the
penalties' terms are built, summed and (``on_nonfinite``) checked here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import attrs
import torch
import torch.nn.functional as F

from infoshape.errors import ConfigError, PluginHookError, report_nonfinite
from infoshape.math.linalg import require_class_labels

__all__ = ["Penalty", "Term", "cross_entropy", "nonfinite_loss", "penalty_terms", "total_loss"]


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


@attrs.frozen(eq=False)  # compared by identity (its tensors have no truth value)
class Term:
    """One penalty of a batch's loss, as the session adds it.

    Attributes:
        plugin: the plugin that returned it.
        metric: its metric name, ``penalty.<name>``.
        value: the penalty (a scalar tensor, graph attached).
        weighted: ``weight · value``, the summand of the loss.
    """

    plugin: str
    metric: str
    value: torch.Tensor
    weighted: torch.Tensor


def penalty_terms(plugin: str, penalties: Sequence[Penalty]) -> list[Term]:
    """The loss terms of ``plugin``'s penalties.

    Raises:
        PluginHookError: a penalty's value is not a one-element tensor.
    """
    terms = []
    for penalty in penalties:
        value = penalty.value
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise PluginHookError(
                plugin,
                "infoshape_penalty",
                f"penalty {penalty.name!r} is not a scalar",
                expected="a tensor with one element",
                got=repr(getattr(value, "shape", type(value).__name__)),
            )
        value = value.reshape(())
        terms.append(Term(plugin, f"penalty.{penalty.name}", value, penalty.weight * value))
    return terms


def total_loss(base: torch.Tensor, terms: Sequence[Term]) -> torch.Tensor:
    """``objective + Σ weight · penalty``."""
    return base + sum(t.weighted for t in terms) if terms else base


def nonfinite_loss(
    base: torch.Tensor, terms: Sequence[Term], policy: str, step: int
) -> tuple[torch.Tensor, int]:
    """The loss when ``total_loss`` is not finite, after naming its non-finite parts.

    ``policy`` (``on_nonfinite``) ``"raise"``/``"warn"``: raise or warn naming the
    objective and each non-finite penalty with its plugin. ``"skip"``: warn and leave the
    non-finite penalties out (a non-finite objective still raises).

    Returns:
        the loss and the number of penalties left out.
    """
    bad = [t for t in terms if not bool(torch.isfinite(t.weighted))]
    parts = [f"{t.metric} of plugin {t.plugin!r}" for t in bad]
    values = [f"{t.metric}={float(t.value.detach())}" for t in bad]
    if not bool(torch.isfinite(base)):
        parts.insert(0, "the objective")
        values.insert(0, f"loss.objective={float(base.detach())}")
    if parts[0] == "the objective" or policy != "skip":
        report_nonfinite(
            "raise" if policy == "skip" else policy,
            f"the loss is not finite at step {step} ({'; '.join(parts)})",
            expected="a finite objective and finite penalties",
            got=", ".join(values),
            fix="lower the learning rate or the penalty weight; on_nonfinite='skip' leaves "
            "non-finite penalties out of the loss, 'warn' continues",
        )
        return total_loss(base, terms), 0
    warnings.warn(
        f"step {step}: left {', '.join(parts)} out of the loss ({', '.join(values)}); "
        "on_nonfinite='skip'",
        RuntimeWarning,
        stacklevel=3,
    )
    return total_loss(base, [t for t in terms if t not in bad]), len(bad)
