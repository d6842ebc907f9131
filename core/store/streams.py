"""The stream group's writer: training batches of streamed taps, within their budgets.

On the training thread each capture is reduced by its tap's budget
(:mod:`infoshape.store.budget`) and staged for the host without waiting for it
(:class:`Staged`): an accelerator's tensor is copied into pinned host memory with
``non_blocking=True`` and an event recorded after the copy, which the writer thread waits
on before it reads the values; a CPU tensor is copied by torch (or, for a float32 capture
that owns its memory, kept as it is and checked unchanged when written). No step reads a
value back on the training thread. Rows are gathered and handed to the writer thread one
chunk of rows at a time, so every write fills whole chunks. Reservoir taps
(``Stream(samples=n)``) write one row per epoch instead (:meth:`StreamWriter.end_epoch`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import zarr

from infoshape.capture import Tap
from infoshape.errors import CaptureError
from infoshape.store.appender import Appender, reopen_appender
from infoshape.store.budget import StreamBudget
from infoshape.store.layout import STREAM_CHUNK_BYTES, chunk_rows, tap_dims

__all__ = ["Staged", "StreamWriter", "stage", "to_numpy"]


def to_numpy(tensor: Any, dtype: str = "float32") -> np.ndarray:
    """A detached host copy of ``tensor`` in ``dtype``.

    CPU tensors are copied (and cast) by numpy, single-threaded: torch's multi-threaded
    copy of a few MiB was 5-10x slower on a busy 2-core machine (its threads wait for
    cores), and a copy is memory-bound anyway.
    """
    if isinstance(tensor, torch.Tensor):
        tensor = tensor.detach()
        if tensor.device.type == "cpu" and tensor.dtype != torch.bfloat16:
            return np.array(tensor.resolve_conj().resolve_neg().numpy(), dtype=dtype)
        return tensor.to("cpu", getattr(torch, dtype), copy=True).numpy()
    return np.array(tensor, dtype=dtype)


class StreamWriter:
    """The ``stream`` group of one run store.

    Args:
        group: returns the ``stream`` zarr group (called on the writer thread).
        submit: queues a job on the store's writer thread.
        codec: compressor of tap variables (a key of :data:`~infoshape.store.layout.CODECS`).
        copy_streams: copy every streamed capture on the training thread.
        epoch: the epoch whose reservoir samples are gathered first (a resumed run's).
    """

    def __init__(
        self,
        group: Callable[[], zarr.Group],
        submit: Callable[[Callable[[], None]], None],
        codec: str,
        copy_streams: bool,
        epoch: int = 0,
    ) -> None:
        self.group = group
        self._submit = submit
        self.codec = codec
        self.copy_streams = copy_streams
        self.epoch = epoch
        self.appender: Appender | None = None  # writer thread only
        self.reservoir: Appender | None = None  # writer thread only
        self.block = 1  # rows gathered per write: one chunk of rows
        self._rows: list[tuple[int, dict[str, np.ndarray]]] = []  # writer thread only
        self._pending: list[tuple] = []  # main thread only: rows not yet queued
        self._batch: int | None = None  # main thread only: rows queued per job
        self._budgets: dict[str, StreamBudget] = {}  # main thread only

    def reopen(self, step: int) -> None:
        """Reopen the stored rows of a resumed run, keeping steps ``< step``."""
        group = self.group()
        if "step" in group:
            self.appender = reopen_appender(group, "step", step)
            self.block = min(a.chunks[0] for a in self.appender.variables.values())

    def write(
        self,
        step: int,
        captures: Mapping[str, Any],
        labels: Any,
        index: Any,
        taps: Mapping[str, tuple[str, str, Tap]],
    ) -> None:
        """Queue one training batch's captures at ``step`` (one row of the ``step`` dim).

        Each capture is reduced by its tap's budget (:mod:`infoshape.store.budget`) here, on the
        training thread and device, and copied to host memory; taps with a reservoir
        (``Stream(samples=n)``) only offer the batch to it (written by :meth:`end_epoch`).
        The ``sample`` dim has the size of the first streamed batch; larger batches are
        cut to it and smaller ones padded (NaN data, label and sample_index ``-1``).

        Args:
            step: the step index (the ``step`` coordinate value).
            captures: capture name to tensor of shape (batch, ...).
            labels: the batch's labels, or None.
            index: the batch's data-set indices, or None.
            taps: capture name to (module name, point, tap); the tap sets the budget.
        """
        arrays = {}
        for name, tensor in captures.items():
            budget = self._budget(name, taps[name])
            reduced = budget.reduce(tensor)
            if budget.reservoir is not None:
                budget.reservoir.offer(reduced, labels, index, step)
            else:
                arrays[name] = self._host(name, reduced, budget.tap.budget.dtype)
        if not arrays:
            return
        label_array = stage("label", labels, "int64") if labels is not None else None
        index_array = stage("sample_index", index, "int64") if index is not None else None
        if self._batch is None:  # rows per chunk, as _create_stream will choose
            self._batch = _stream_chunk_rows(arrays)
        budgets = {name: self._budgets[name] for name in arrays}
        self._pending.append((step, arrays, label_array, index_array, budgets))
        if len(self._pending) >= self._batch:
            self.submit_rows()

    def submit_rows(self) -> None:
        """Queue the streamed rows gathered on the training thread as one job.

        One job per chunk of rows, not per step: the writer thread wakes once a chunk.
        """
        pending, self._pending = self._pending, []
        if pending:
            self._submit(lambda: self._add_stream_rows(pending))

    def _add_stream_rows(self, pending: list[tuple[Any, ...]]) -> None:
        for step, arrays, label_array, index_array, budgets in pending:
            if self.appender is None:
                self.appender = self._create_stream(arrays, budgets)
            width = self.appender.variables["label"].shape[1]
            fitted = {k: _fit(v, width, np.nan) for k, v in arrays.items()}
            # labels or indices not given stay at the fill value -1: nothing is written
            for name, values in (("label", label_array), ("sample_index", index_array)):
                if values is not None:
                    fitted[name] = _fit(_resolved(values), width, -1)
            self._rows.append((step, fitted))
            if len(self._rows) >= self.block:
                self.write_rows()

    def _budget(self, name: str, spec: tuple[str, str, Tap]) -> StreamBudget:
        """The budget of capture ``name`` (kept across steps: projection, reservoir)."""
        module, point, tap = spec
        budget = self._budgets.get(name)
        if budget is None or budget.tap != tap:
            budget = self._budgets[name] = StreamBudget(name, tap, module=module, point=point)
        return budget

    def _create_stream(
        self, arrays: Mapping[str, np.ndarray], budgets: Mapping[str, StreamBudget]
    ) -> Appender:
        group = self.group()
        width = next(iter(arrays.values())).shape[0]
        group.create_array("sample", data=np.arange(width), dimension_names=("sample",))
        appender = Appender(group, "step", self.codec)
        # one row chunk for every variable, so each block of rows fills whole chunks
        steps = _stream_chunk_rows(arrays)
        for name in ("label", "sample_index"):
            appender.add_variable(
                name,
                dims=("sample",),
                shape=(width,),
                chunks=(width,),
                dtype=np.int64,
                attrs={},
                row_chunk=steps,
                fill_value=-1,
            )
        for name, array in arrays.items():
            feature = array.shape[1:]
            appender.add_variable(
                name,
                dims=("sample", *tap_dims(name, feature)),
                shape=(width, *feature),
                chunks=(width, *feature),
                dtype=array.dtype,
                attrs=budgets[name].attrs("label sample_index"),
                row_chunk=steps,
                compress=True,
            )
            _store_projection(group, budgets[name])
        # buffer one chunk of rows: writes stay chunk-aligned and memory stays bounded
        self.block = steps
        return appender

    def write_rows(self) -> None:
        """Write the gathered rows as one block (on the writer thread)."""
        if self.appender is not None and self._rows:
            shared = [
                (row, name, value)
                for _, row in self._rows
                for name, value in row.items()
                if isinstance(value, Staged)
            ]
            for row, name, value in shared:
                row[name] = value.checked()
            self.appender.append_block(self._rows)
            for _, _, value in shared:  # changed while being written: say so
                value.checked()
        self._rows = []

    def _host(self, name: str, tensor: torch.Tensor, dtype: str) -> Staged:
        """A streamed capture staged for the host, or the capture itself when that is safe."""
        if (
            not self.copy_streams
            and tensor.device.type == "cpu"
            and str(tensor.dtype) == f"torch.{dtype}"
            and tensor.is_contiguous()
            and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
        ):
            return Staged(name, tensor.detach(), version=tensor._version)
        return stage(name, tensor, dtype)

    def end_epoch(self, epoch: int) -> None:
        """Queue the reservoirs (taps with ``Stream(samples=n)``) as the row of ``epoch``.

        The session calls this at each epoch end; :meth:`close` does it for an epoch that
        never ended. Each reservoir then starts anew.
        """
        samples = {}
        for name, budget in self._budgets.items():
            taken = budget.reservoir.take() if budget.reservoir is not None else None
            if taken is not None:
                samples[name] = (budget, taken)
        self.epoch = epoch + 1
        if samples:
            self._submit(lambda: self._append_reservoirs(epoch, samples))

    def _append_reservoirs(
        self, epoch: int, samples: Mapping[str, tuple[StreamBudget, Any]]
    ) -> None:
        """Write one epoch's reservoirs: ``stream/<tap>`` over ``(epoch, <tap>_sample, ...)``."""
        group = self.group()
        if self.reservoir is None:  # a resumed run reopens its reservoir rows
            self.reservoir = (
                reopen_appender(group, "epoch", epoch)
                if "epoch" in group
                else Appender(group, "epoch", self.codec)
            )
            self.reservoir.codec = self.codec
        appender, row = self.reservoir, {}
        for name, (budget, (rows, labels, index, steps)) in samples.items():
            sample = f"{name}_sample"
            coords = {"label": labels, "sample_index": index, "step": steps}
            if name not in appender.variables:
                for suffix, values in coords.items():
                    appender.add_variable(
                        f"{name}_{suffix}",
                        dims=(sample,),
                        shape=values.shape,
                        chunks=values.shape,
                        dtype=np.int64,
                        attrs={},
                        fill_value=-1,
                    )
                appender.add_variable(
                    name,
                    dims=(sample, *tap_dims(name, rows.shape[1:])),
                    shape=rows.shape,
                    chunks=rows.shape,
                    dtype=rows.dtype,
                    attrs=budget.attrs(" ".join(f"{name}_{c}" for c in coords)),
                    compress=True,
                )
                _store_projection(group, budget)
            row[name] = rows
            row.update({f"{name}_{suffix}": values for suffix, values in coords.items()})
        appender.append(epoch, row)


def _store_projection(group: zarr.Group, budget: StreamBudget) -> None:
    """Write a budget's projection matrix once, as ``<name>_projection`` (source, unit)."""
    name = f"{budget.name}_projection"
    if budget.projection is None or name in group:
        return
    group.create_array(
        name,
        data=budget.projection.numpy(),
        dimension_names=(f"{budget.name}_source", f"{budget.name}_unit"),
        attributes={
            "description": f"the random projection R of {budget.name}: stored rows = "
            "flatten(pooled capture) @ R, R_ij ~ N(0, 1/m) (Johnson-Lindenstrauss)",
            "seed": budget.tap.budget.seed,
        },
    )


def _stream_chunk_rows(arrays: Mapping[str, Any]) -> int:
    """Steps per chunk of the stream group: about STREAM_CHUNK_BYTES for the widest tap."""
    return min(
        chunk_rows(int(np.prod(a.shape, dtype=np.int64)) * a.itemsize, 256, STREAM_CHUNK_BYTES)
        for a in arrays.values()
    )


class Staged:
    """A streamed value on its way to the host, read by the writer thread.

    Either a host copy (pinned, filled by a ``non_blocking`` copy from an accelerator that
    ``event`` marks the end of; or a CPU copy), or a CPU capture written from its own memory,
    with its ``version`` at capture: it must not change in place before it is written.
    """

    def __init__(
        self, name: str, tensor: torch.Tensor, version: int | None = None, event: Any = None
    ) -> None:
        self.name = name
        self.tensor = tensor
        self.version = version
        self.event = event
        self.shape = tuple(tensor.shape)
        self.dtype = np.dtype(str(tensor.dtype).removeprefix("torch."))
        self.itemsize = self.dtype.itemsize

    def checked(self) -> np.ndarray:
        """The values (after waiting for their copy), if nothing changed them since capture.

        Raises:
            CaptureError: a capture written from its own memory was changed in place
                after its step ended.
        """
        if self.event is not None:
            self.event.synchronize()
            self.event = None
        if self.version is not None and self.tensor._version != self.version:
            raise CaptureError(
                f"the streamed capture {self.name!r} was changed in place after its step ended",
                expected="captures left as they are until the store has written them",
                got=f"tensor version {self.tensor._version}, {self.version} when captured",
                fix="Session(store_options={'copy_streams': True}) copies streamed captures "
                "at each step",
            )
        return self.tensor.numpy()


def stage(name: str, values: Any, dtype: str = "float32") -> Staged:
    """``values`` copied towards the host in ``dtype`` without waiting for the device.

    From an accelerator: into pinned memory with ``non_blocking=True``, an event recorded
    after the copy (the reader waits on it). From the CPU: a torch copy. Numbers and
    arrays: a numpy copy.
    """
    torch_dtype = getattr(torch, dtype)
    if not isinstance(values, torch.Tensor):
        return Staged(name, torch.from_numpy(np.array(values, dtype=dtype)))
    values = values.detach()
    if values.device.type == "cpu":
        return Staged(name, values.to(torch_dtype, copy=True))
    host = torch.empty(values.shape, dtype=torch_dtype, pin_memory=True)
    host.copy_(values.to(torch_dtype), non_blocking=True)
    event = torch.Event(device=values.device)
    event.record()
    return Staged(name, host, event=event)


def _resolved(value: Any) -> Any:
    return value.checked() if isinstance(value, Staged) else value


def _fit(array: Any, width: int, fill: float) -> Any:
    """Cut or pad the first axis of ``array`` to ``width``."""
    if array.shape[0] == width:
        return array
    if isinstance(array, Staged):
        array = array.checked()
    if array.shape[0] > width:
        return array[:width]
    pad = np.full((width - array.shape[0], *array.shape[1:]), fill, dtype=array.dtype)
    return np.concatenate([array, pad])
