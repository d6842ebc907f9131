"""Metric rows on their way out: held on the device, checked, reduced, written (:class:`Emitter`).

On a GPU, reading a value back (``float(loss)``, ``.item()``) makes the host wait until
the device has finished every queued kernel. A session therefore never reads a step's
values in the step: :class:`StepMetrics` keeps each step's scalar tensors (the loss, its
objective, every penalty, plugins' step metrics, and the sum of every capture for the
finite check) stacked in one small tensor on their device; every ``flush_every`` steps,
at epoch end and at close, :meth:`StepMetrics.drain` concatenates the blocks and copies
them to the host in one transfer (pinned, ``non_blocking``, one wait), and returns one
row per step, exactly the values a per-step ``float()`` would have given (scalars are
stacked in float32, or float64 when one of them is float64: no value is rounded).

Finite checks ride along (:func:`first_nonfinite`): the loss, its objective and each
penalty are checked as they are; a capture is checked by its sum, kept as a hidden value
named ``FINITE + capture`` (a NaN or Inf makes the sum non-finite; a finite sum settles
it; a sum past the float range of its accumulation dtype, float32 at least, would be
reported too).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import torch

from infoshape import distributed
from infoshape.errors import ConfigError, PluginHookError, raised_at, report_nonfinite

if TYPE_CHECKING:
    from infoshape.capture import Capture
    from infoshape.hookspecs import MetricSink
    from infoshape.store import RunStore

__all__ = [
    "FINITE",
    "Emitter",
    "StepMetrics",
    "capture_sums",
    "check_settings",
    "first_nonfinite",
    "plain_value",
    "visible",
]

FINITE = "\x00finite:"
"""Prefix of the hidden per-capture sums: checked for NaN/Inf, never written to a sink."""

CHECKED_PREFIXES = ("loss", "penalty.", FINITE)
"""Step values whose NaN/Inf the session reports (the loss, its parts, the captures)."""


def capture_sums(captures: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``FINITE + name`` to the sum of each floating-point capture, on its device.

    One reduction per capture, accumulated in float32 at least (float16/bfloat16 sums
    would overflow where the values do not).
    """
    sums = {}
    for name, tensor in captures.items():
        if tensor.is_floating_point():
            wide = torch.float32 if tensor.element_size() < 4 else tensor.dtype
            sums[FINITE + name] = tensor.detach().sum(dtype=wide)
    return sums


@attrs.define
class _Block:
    """One step's values: scalar tensors stacked on their device, the rest as given."""

    index: int
    names: tuple[str, ...]
    stacked: torch.Tensor | None
    other: dict[str, Any]


class StepMetrics:
    """A buffer of step rows, read back to the host once per :meth:`drain`.

    Args:
        flush_every: rows held before :attr:`full` says to drain (the session's
            ``log_every``).
    """

    def __init__(self, flush_every: int) -> None:
        self.flush_every = flush_every
        self._blocks: list[_Block] = []

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def full(self) -> bool:
        """Whether ``flush_every`` rows are waiting."""
        return len(self._blocks) >= self.flush_every

    def add(self, index: int, values: Mapping[str, Any]) -> None:
        """Keep the row of step ``index``: scalar tensors stay on the device (no sync)."""
        scalars = {
            name: value
            for name, value in values.items()
            if isinstance(value, torch.Tensor)
            and value.numel() == 1
            and (value.is_floating_point() or value.dtype in _EXACT_IN_FLOAT32)
        }
        other = {name: value for name, value in values.items() if name not in scalars}
        stacked = None
        if scalars:
            tensors = [v.detach().reshape(()) for v in scalars.values()]
            wide = any(t.dtype == torch.float64 for t in tensors)
            dtype = torch.float64 if wide else torch.float32
            devices = {t.device for t in tensors}
            if len(devices) > 1:  # rare (a plugin's value on another device): one device
                device = tensors[0].device
                tensors = [t.to(device, non_blocking=True) for t in tensors]
            stacked = torch.stack([t.to(dtype) for t in tensors])
        self._blocks.append(_Block(index, tuple(scalars), stacked, other))

    def drain(self) -> list[tuple[int, dict[str, Any]]]:
        """Every held row as ``(index, {name: value})``, scalars as Python floats.

        The stacked scalars of all rows travel to the host in one copy per device and
        dtype (one wait for the device); the rest (numbers, arrays) is returned as given.
        """
        blocks, self._blocks = self._blocks, []
        host: dict[int, list[float]] = {}
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, block in enumerate(blocks):
            if block.stacked is not None:
                key = (block.stacked.device, block.stacked.dtype)
                groups.setdefault(key, []).append(i)
        for members in groups.values():
            flat = torch.cat([blocks[i].stacked for i in members])  # type: ignore[misc]
            values = _to_host(flat).tolist()
            start = 0
            for i in members:
                size = len(blocks[i].names)
                host[i] = values[start : start + size]
                start += size
        rows = []
        for i, block in enumerate(blocks):
            row = dict(zip(block.names, host.get(i, ()), strict=True))
            row.update(block.other)
            rows.append((block.index, row))
        return rows


_EXACT_IN_FLOAT32 = (torch.bool, torch.uint8, torch.int8, torch.int16)


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A host copy of ``tensor``: pinned and ``non_blocking`` from an accelerator, one wait."""
    if tensor.device.type == "cpu":
        return tensor
    staging = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    staging.copy_(tensor, non_blocking=True)
    event = torch.Event(device=tensor.device) if hasattr(torch, "Event") else None
    if event is not None:
        event.record()
        event.synchronize()
    else:  # pragma: no cover - older torch
        torch.cuda.synchronize(tensor.device)
    return staging


def first_nonfinite(
    rows: Iterable[tuple[int, Mapping[str, Any]]],
) -> tuple[int, list[str], dict[str, float]] | None:
    """The first row holding a non-finite checked value: ``(index, names, values)``.

    Checked values are those named by :data:`CHECKED_PREFIXES` (the loss, its parts and
    the hidden capture sums); None when every row is finite.
    """
    for index, row in rows:
        bad = {
            name: value
            for name, value in row.items()
            if name.startswith(CHECKED_PREFIXES)
            and isinstance(value, float)
            and not math.isfinite(value)
        }
        if bad:
            return index, list(bad), bad
    return None


def visible(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` without the hidden capture sums."""
    return {name: value for name, value in row.items() if not name.startswith(FINITE)}


# ------------------------------------------------------------------ emission
class Emitter:
    """Rows of metrics on their way out: held, checked, reduced, written to the store and sinks.

    The last steps of a batch's path (``core/README.md``): the session hands each step's
    values to :meth:`add_step` and each epoch's to :meth:`write`; step rows are held on the
    device (:class:`StepMetrics`) and read back every ``log_every`` steps
    (:meth:`flush_steps`), checked for NaN/Inf, reduced across ranks
    (:func:`infoshape.distributed.reduce_metrics`) and written, one row per step or epoch,
    to the run store's metrics group (:meth:`infoshape.store.RunStore.write`) and to every
    metric sink.

    Args:
        store: the run store written to (``None``: none, or not this rank's to write).
        sinks: the other metric sinks (the user's and the plugins').
        log_every: step rows held before they are read back.
        on_nonfinite: how held rows with NaN/Inf are reported: ``"raise"``, ``"warn"``,
            or ``"ignore"`` (not checked here: e.g. checked in each step already).
        world_size: the ranks whose values are reduced into one row.
        on_error: called before a sink's error is raised (the session closes itself, failed).
    """

    def __init__(
        self,
        store: RunStore | None,
        sinks: Iterable[MetricSink],
        *,
        log_every: int,
        on_nonfinite: str,
        world_size: int = 1,
        on_error: Callable[[], object] | None = None,
    ) -> None:
        self.store = store
        self.sinks = list(sinks)
        self.steps = StepMetrics(log_every)
        self.on_nonfinite = on_nonfinite
        self.world_size = world_size
        self.where: dict[str, str] = {}
        """Checked value name to what it is, for messages (``"tap 'fc1' (fc1, output)"``)."""
        self.owners: dict[int, str] = {}
        """``id(sink)`` to the plugin whose ``infoshape_sinks`` returned it."""
        self.on_error = on_error

    def add_sinks(self, plugin: str, sinks: Iterable[MetricSink]) -> None:
        """Add the sinks ``plugin``'s ``infoshape_sinks`` returned (named in their errors)."""
        for sink in sinks:
            self.owners[id(sink)] = plugin
            self.sinks.append(sink)

    def name_captures(self, capture: Capture) -> None:
        """Name each capture's tap, module and point in the messages about its NaN/Inf."""
        for r in capture.resolved:
            for name in capture.names(r):
                self.where[FINITE + name] = f"tap {name!r} ({r.module}, {r.point})"

    def add_step(self, index: int, values: Mapping[str, Any]) -> None:
        """Hold the row of step ``index`` (no host sync); flush when ``log_every`` are held."""
        self.steps.add(index, values)
        if self.steps.full:
            self.flush_steps()

    def flush_steps(self) -> None:
        """Read the held step rows back (one copy), check them, write them in step order.

        With ``on_nonfinite="raise"`` the rows before the first step holding a non-finite
        loss, penalty or capture are written, then :class:`~infoshape.NonFiniteError`
        names that step and what failed.
        """
        rows = self.steps.drain()
        bad = first_nonfinite(rows) if self.on_nonfinite != "ignore" else None
        stop = len(rows)
        if bad is not None and self.on_nonfinite == "raise":
            stop = next(i for i, (index, _) in enumerate(rows) if index == bad[0])
        for index, row in rows[:stop]:
            self.write("step", index, visible(row))
        if bad is not None:
            self._report(*bad)

    def write(self, stage: str, index: int, metrics: Mapping[str, Any]) -> None:
        """Reduce ``metrics`` across ranks and write them as one row (none when empty)."""
        if not metrics:
            return
        ops = {n: v.op for n, v in metrics.items() if isinstance(v, distributed.Reduced)}
        plain = {
            name: plain_value(value.value if isinstance(value, distributed.Reduced) else value)
            for name, value in metrics.items()
        }
        if self.world_size > 1:
            plain = distributed.reduce_metrics(plain, ops)
        if self.store is not None:
            self.store.write(stage, index, plain)
        for sink in self.sinks:
            try:
                sink.write(stage, index, plain)
            except PluginHookError:
                raise
            except Exception as err:
                if self.on_error is not None:
                    self.on_error()
                raise self._sink_error(sink, stage, index, err) from err

    def _sink_error(self, sink: Any, stage: str, index: int, err: Exception) -> PluginHookError:
        """The error of a sink whose ``write`` raised, naming its plugin (or the user's sink)."""
        kind = type(sink).__name__
        plugin = self.owners.get(id(sink))
        return PluginHookError(
            plugin or kind,
            "infoshape_sinks" if plugin else "Session(sinks=...)",
            f"its metric sink {kind}.write raised {type(err).__name__}: {err}",
            expected="the sink to write the row and return",
            got=f"{type(err).__name__} writing the {stage} row {index}, raised in {raised_at(err)}",
            fix=(f"fix the sink or disable {plugin!r}" if plugin else "fix or remove the sink")
            + "; the run store keeps the rows written before (the session is closed, "
            "its store marked failed)",
        )

    def _report(self, step: int, names: list[str], values: Mapping[str, float]) -> None:
        """Raise or warn (``on_nonfinite``) for the first step with NaN/Inf values."""
        parts, got = [], []
        order = {FINITE: 0, "penalty.": 1, "loss.objective": 2, "loss": 3}
        names = sorted(names, key=lambda n: next(v for k, v in order.items() if n.startswith(k)))
        if len(names) > 1 and names[-1] == "loss":  # the total adds nothing to its parts
            names = names[:-1]
        for name in names:
            if name.startswith(FINITE):
                capture = name.removeprefix(FINITE)
                parts.append(self.where.get(name, f"capture {capture!r}"))
                got.append(f"{capture} holds NaN/Inf")
            else:
                parts.append(self.where.get(name, name))
                got.append(f"{name}={values[name]}")
        report_nonfinite(
            self.on_nonfinite,
            f"non-finite values at step {step}: {'; '.join(parts)}",
            expected="finite activations, a finite objective and finite penalties",
            got=", ".join(got),
            fix="lower the learning rate or the penalty weight; check_every=1 stops in the "
            "step itself, on_nonfinite='warn' continues",
        )


def plain_value(value: Any) -> Any:
    """A metric value as a float or a numpy array (DataArrays kept as they are)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if type(value).__name__ == "DataArray":
        return value
    array = np.asarray(value)
    if array.ndim == 0:
        return float(array) if array.dtype.kind in "fiub" else math.nan
    return array


def check_settings(on_nonfinite: Any, log_every: Any, check_every: Any) -> None:
    """Refuse a session's unknown ``on_nonfinite``, or a bad ``log_every``/``check_every``.

    Raises:
        ConfigError: naming the setting, the value and the values allowed.
    """
    if on_nonfinite not in ("raise", "warn", "ignore", "skip"):
        raise ConfigError(
            "unknown on_nonfinite policy",
            expected='"raise", "warn", "ignore" or "skip"',
            got=repr(on_nonfinite),
            fix='on_nonfinite="skip" leaves non-finite penalties out of the loss',
        )
    if not isinstance(log_every, int) or isinstance(log_every, bool) or log_every < 1:
        raise ConfigError(
            "log_every must be a positive number of steps",
            expected="an int >= 1 (default 50)",
            got=repr(log_every),
            fix="log_every=50 reads step metrics back every 50 steps",
        )
    if check_every not in (None, 1):
        raise ConfigError(
            "check_every is 1 or None",
            expected="1 (check every step, one host sync each) or None (at each flush)",
            got=repr(check_every),
            fix="use log_every to read values back more often",
        )
