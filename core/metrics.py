"""Step metrics kept on the device and sent to the sinks in blocks: no host sync per step.

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
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import torch

__all__ = ["FINITE", "StepMetrics", "capture_sums", "first_nonfinite"]

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
