"""The hook specifications: the whole contract between the runtime and plugins.

A plugin is a module, a class or an instance whose functions carry
``@infoshape.hookimpl`` and are named after the specifications below. A
plugin may implement any subset and may accept any subset of a hook's
arguments. Hooks are called once per batch or epoch, never per module.
Every hook returns data; none mutates another plugin's state. A session
calls the plugins in the order they were enabled (``tryfirst=True`` and
``trylast=True`` on a hookimpl move it to the front or the back), each implementation
itself (:mod:`infoshape.hooks`): pluggy's hook wrappers are refused at load, and every
result is checked against the return annotation below.

A plugin class (the usual form) is instantiated once per :class:`~infoshape.Session`,
so its state (moving averages, kernel widths) lives on the session. A plugin
declares its options as an ``attrs`` class in its ``Config`` attribute; the
session validates the user's options against it and passes the instance to
``infoshape_configure``. A plugin whose penalty has a loss weight names that option in its
``weight_option`` class attribute (``weight_option = "beta"``; ``None`` or absent: no
weight); ``infoshape sweep --coefficient`` sets that option, whatever its name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import pluggy

if TYPE_CHECKING:
    import torch
    from torch import nn

    from infoshape.capture import Tap
    from infoshape.objective import Penalty
    from infoshape.registry import DatasetSpec, Estimator
    from infoshape.session import Session

PROJECT = "infoshape"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# The hook specifications are listed too, so that ``help(infoshape.hookspecs)`` (pydoc shows
# only the names in ``__all__``) documents every hook.
__all__ = [
    "PROJECT",
    "MetricSink",
    "hookimpl",
    "hookspec",
    "infoshape_configure",
    "infoshape_datasets",
    "infoshape_epoch_end",
    "infoshape_estimators",
    "infoshape_load_state_dict",
    "infoshape_metrics",
    "infoshape_objective",
    "infoshape_penalty",
    "infoshape_session_end",
    "infoshape_sinks",
    "infoshape_state_dict",
    "infoshape_step_end",
    "infoshape_taps",
    "infoshape_wrap_model",
]


@runtime_checkable
class MetricSink(Protocol):
    """What the session needs of a metric sink (what ``infoshape_sinks`` returns).

    The session sends every metric of a step (``stage="step"``, ``index`` the global step)
    or of an epoch (``stage="epoch"``, ``index`` the epoch) to every sink, and closes each
    sink with the session. The run store is one; the ``csv`` and ``tensorboard`` plugins
    offer others.
    """

    def write(self, stage: str, index: int, metrics: Mapping[str, Any]) -> None:
        """Record ``metrics`` (name to float or numpy array) of step or epoch ``index``."""

    def close(self) -> None:
        """Flush and release the sink."""


@hookspec
def infoshape_configure(session: Session, config: Any) -> None:
    """Receive the plugin's validated options at session start.

    Called once, first of all hooks, before the model is wrapped or tapped.

    Args:
        session: the session starting.
        config: an instance of the plugin's ``Config`` attrs class built from the user's
            options (``None`` when the plugin declares no ``Config``).
    """


@hookspec
def infoshape_wrap_model(session: Session, model: nn.Module) -> nn.Module | None:
    """Return a model that replaces ``model`` (e.g. with noise layers inserted).

    Called once at session start, after ``infoshape_configure``. Plugins are
    applied in turn, each receiving the previous plugin's result. Return
    ``None`` to leave the model unchanged. The session exposes the final model
    as ``session.model``.
    """


@hookspec
def infoshape_taps(session: Session) -> Sequence[Tap]:
    """Return the taps the plugin needs.

    Called once at session start, after the model is wrapped. The capture
    names each tap resolves to are then ``session.capture_names(tap)``.
    """


@hookspec(firstresult=True)
def infoshape_objective(
    session: Session, outputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor | None:
    """Return the base loss of this batch, replacing cross-entropy, or ``None``.

    Called each batch by ``Session.loss``; the first plugin that returns a
    tensor wins (at most one plugin should supply an objective).
    """


@hookspec
def infoshape_penalty(
    session: Session,
    captures: Mapping[str, torch.Tensor],
    outputs: torch.Tensor,
    targets: torch.Tensor,
) -> Sequence[Penalty]:
    """Return the penalties this batch adds to the loss.

    Called each batch by ``Session.loss``. ``captures`` maps capture names to
    the tensors of this batch's forward pass, graph attached. The runtime sums
    ``weight * value`` over all plugins' penalties and emits each value as the
    metric ``penalty.<name>``.
    """


@hookspec
def infoshape_metrics(
    session: Session,
    captures: Mapping[str, torch.Tensor],
    outputs: torch.Tensor | None,
    targets: torch.Tensor | None,
    stage: Literal["step", "epoch"],
) -> Mapping[str, Any]:
    """Return metrics: a mapping from name to a scalar, an array or an ``xarray.DataArray``.

    Called with ``stage="step"`` at each ``Session.step_end`` (captures of the
    last training batch, detached) and with ``stage="epoch"`` at each
    ``Session.epoch_end``: then ``captures``, ``outputs`` and ``targets`` are
    those of the probe set, or empty and ``None`` when no probe set was given.
    """


@hookspec
def infoshape_estimators() -> Sequence[Estimator]:
    """Return the information estimators the plugin offers (registry, at load)."""


@hookspec
def infoshape_datasets() -> Sequence[DatasetSpec]:
    """Return the data sets the plugin offers (registry, at load)."""


@hookspec
def infoshape_sinks(session: Session) -> Sequence[MetricSink]:
    """Return metric sinks (CSV, TensorBoard ...) that receive every emitted metric.

    Called once at session start; each sink is closed with the session.
    """


@hookspec
def infoshape_step_end(session: Session, step: int) -> None:
    """Observe the end of training step ``step`` (0-based): update moving averages, schedules.

    Called by ``Session.step_end`` after the step's metrics are emitted.
    """


@hookspec
def infoshape_epoch_end(session: Session, epoch: int) -> None:
    """Observe the end of epoch ``epoch`` (0-based).

    Called by ``Session.epoch_end`` after the epoch's metrics are emitted.
    """


@hookspec
def infoshape_session_end(session: Session) -> None:
    """Release what the plugin holds (restore a wrapped model, close files).

    Called once by ``Session.close``, also when the session ends by an
    exception, before hooks are removed and the store is closed.
    """


@hookspec
def infoshape_state_dict(session: Session) -> Mapping[str, Any] | None:
    """Return the plugin's resumable state (moving averages, kernel widths, counters).

    Called by ``Session.state_dict`` (e.g. when a checkpoint is written). Return
    tensors, numbers, strings and nested dicts/lists of them (what ``torch.save``
    keeps), or ``None`` when the plugin has no state. Parameters a plugin adds to
    the model through ``infoshape_wrap_model`` are saved with the model, not here.
    """


@hookspec
def infoshape_load_state_dict(session: Session, state: Mapping[str, Any]) -> None:
    """Restore what this plugin returned from ``infoshape_state_dict``.

    Called by ``Session.load_state_dict`` after the session has started (taps
    registered, model wrapped), only for plugins whose state was saved.
    """
