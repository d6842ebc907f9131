"""The run store: one zarr v3 store per run, written in the background, read with xarray.

Layout (DESIGN.md, "The activation store")::

    run.zarr/            root attrs: the run manifest and ``status``
      probe/             (epoch, sample, <tap dims>) per stored tap; coords sample, label, split
      stream/            (step, sample, <tap dims>) per streamed tap; coords label, sample_index
      metrics/           one variable per metric over ``step`` or ``epoch``
      analysis/          written by offline analyses

Every array carries ``dimension_names``; a tap's own dims are prefixed with
its name (``fc1_unit``; ``conv1_channel, conv1_y, conv1_x``).

Crash safety: arrays grow along ``epoch``/``step`` first, data are written
next, and the coordinate value (``epoch`` or ``step``) is written last. A row
whose coordinate still holds the fill value ``-1`` is not committed; readers
(:func:`open_store`) drop it. zarr's local store writes each chunk and each
metadata file atomically, so a killed run leaves every committed row
readable. At close, arrays are trimmed to their committed length and the
metadata is consolidated, so ``xarray.open_datatree(path, engine="zarr")``
opens a finished run without infoshape.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from infoshape.errors import StoreError, StoreWriteError
from infoshape.probe import Probe
from infoshape.store_layout import (
    GROUPS,
    INPUT,
    Appender,
    chunk_rows,
    metric_dims,
    tap_dims,
)
from infoshape.store_read import open_store

__all__ = ["RunStore", "open_store"]

log = logging.getLogger(__name__)
_STOP = object()


def _to_numpy(tensor: Any, dtype: str = "float32") -> np.ndarray:
    """A detached host copy of ``tensor`` in ``dtype``."""
    if isinstance(tensor, torch.Tensor):
        return tensor.detach().to("cpu", getattr(torch, dtype), copy=True).numpy()
    return np.array(tensor, dtype=dtype)


class RunStore:
    """The writer of one run's store (a :class:`~infoshape.sinks.MetricSink` too).

    Every write is queued to one background thread; the queue is bounded, so a
    slow disk applies back-pressure to training instead of growing memory.

    Args:
        path: the store folder (``runs/a.zarr``).
        manifest: the run manifest, written to the root attrs.
        overwrite: replace an existing store.
        queue_size: the writer queue's capacity (pending writes).
        flush_steps: step metrics are written in blocks of this many steps.
        store_probe_inputs: keep the probe inputs once as ``probe/input`` (for I(X;T)).

    Raises:
        StoreError: ``path`` exists and ``overwrite`` is false.
    """

    def __init__(
        self,
        path: str | Path,
        manifest: Mapping[str, Any],
        overwrite: bool = False,
        queue_size: int = 32,
        flush_steps: int = 100,
        store_probe_inputs: bool = True,
    ) -> None:
        self.path = Path(path)
        self.flush_steps = flush_steps
        self.store_probe_inputs = store_probe_inputs
        if self.path.exists():
            if not overwrite:
                raise StoreError(
                    f"a store already exists at {self.path}",
                    expected="a new path",
                    got=str(self.path),
                    fix="choose another path, or pass overwrite=True (CLI: --overwrite)",
                )
            shutil.rmtree(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.root = zarr.open_group(str(self.path), mode="w-", zarr_format=3)
            self.root.attrs.update({**dict(manifest), "status": "running"})
            for name, description in GROUPS.items():
                self.root.create_group(name, attributes={"description": description})
        except OSError as err:
            raise StoreError(
                f"cannot create a store at {self.path}: {err}",
                fix="check the folder exists and is writable, and the disk has space",
            ) from err
        self._probe: Appender | None = None
        self._probe_labels: np.ndarray | None = None
        self._stream: Appender | None = None
        self._step_metrics = Appender(self._group("metrics"), "step")
        self._epoch_metrics = Appender(self._group("metrics"), "epoch")
        self._metric_rows: list[tuple[int, dict[str, Any]]] = []  # main thread only
        self._stream_rows: list[tuple[int, dict[str, np.ndarray]]] = []  # writer thread only
        self._stream_block = 1
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._error: BaseException | None = None
        self._warned_full = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="infoshape-store", daemon=True)
        self._thread.start()

    def _group(self, name: str) -> zarr.Group:
        group = self.root[name]
        assert isinstance(group, zarr.Group)
        return group

    # ------------------------------------------------------------ thread
    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is _STOP:
                    return
                if self._error is None:
                    job()
            except BaseException as err:
                self._error = err
                log.error("infoshape store writer failed: %r", err)
            finally:
                self._queue.task_done()

    def _submit(self, job: Callable[[], None]) -> None:
        self._raise_if_failed()
        if self._closed:
            raise StoreError(f"the store {self.path} is closed", fix="open a new Session")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            if not self._warned_full:
                self._warned_full = True
                log.warning(
                    "infoshape store writer queue is full (%d pending writes): training waits "
                    "for the disk; raise RunStore(queue_size=...) if this repeats",
                    self._queue.maxsize,
                )
            self._queue.put(job)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            err = self._error
            raise StoreWriteError(
                f"writing the store {self.path} failed: {type(err).__name__}: {err}",
                expected="a writable store with free space",
                got=repr(err),
                fix="free disk space or fix permissions; every epoch/step written before the "
                "failure is committed and readable with infoshape.open_store",
            ) from err

    # ------------------------------------------------------------ probe
    def write_probe(
        self,
        epoch: int,
        captures: Mapping[str, Any],
        probe: Probe,
        taps: Mapping[str, tuple[str, str]],
    ) -> None:
        """Queue the probe set's captures of ``epoch`` (one row of the ``epoch`` dim).

        Args:
            epoch: the epoch index (the ``epoch`` coordinate value).
            captures: capture name to tensor of shape (n_probe, ...).
            probe: the probe set (its labels and sample indices become coordinates).
            taps: capture name to (module name, point), recorded in the variable's attrs.

        Raises:
            StoreError: when the probe set differs from the one stored at earlier epochs.
        """
        first = self._probe_labels is None
        labels = _to_numpy(probe.y, "int64")
        self._check_probe(labels)
        arrays = {name: _to_numpy(value) for name, value in captures.items()}
        inputs = _to_numpy(probe.x) if first and self.store_probe_inputs else None
        sample = probe.sample_index
        split = probe.split

        def job() -> None:
            if self._probe is None:
                self._probe = self._create_probe(arrays, labels, sample, split, taps, inputs)
            self._probe.append(epoch, arrays)

        self._submit(job)

    def _check_probe(self, labels: np.ndarray) -> None:
        if self._probe_labels is None:
            self._probe_labels = labels
            return
        if labels.shape != self._probe_labels.shape or not np.array_equal(
            labels, self._probe_labels
        ):
            raise StoreError(
                "the probe set changed between epochs",
                expected=f"the same {self._probe_labels.shape[0]} probe samples every epoch",
                got=f"{labels.shape[0]} samples"
                + (" with other labels" if labels.shape == self._probe_labels.shape else ""),
                fix="pass the same probe=(x, y) to every epoch_end",
            )

    def _create_probe(self, arrays, labels, sample, split, taps, inputs) -> Appender:
        group = self._group("probe")
        n = labels.shape[0]
        group.create_array("sample", data=sample, dimension_names=("sample",))
        group.create_array("label", data=labels, dimension_names=("sample",))
        if inputs is not None and INPUT not in arrays:
            group.create_array(
                INPUT,
                data=inputs,
                dimension_names=("sample", *tap_dims(INPUT, inputs.shape[1:])),
                attributes={"description": "the probe set's inputs X (stored once)"},
            )
        split_array = group.create_array(
            "split", shape=(n,), dtype=str, dimension_names=("sample",)
        )
        split_array[:] = np.full(n, split, dtype=object)
        appender = Appender(group, "epoch")
        for name, array in arrays.items():
            module, point = taps[name]
            feature = array.shape[1:]
            rows = chunk_rows(int(np.prod(feature, dtype=np.int64)) * array.itemsize, n)
            appender.add_variable(
                name,
                dims=("sample", *tap_dims(name, feature)),
                shape=(n, *feature),
                chunks=(rows, *feature),
                dtype=array.dtype,
                attrs={
                    "tap_module": module,
                    "tap_point": point,
                    "dtype": str(array.dtype),
                    "coordinates": "label split",
                },
            )
        return appender

    # ------------------------------------------------------------ stream
    def write_stream(
        self,
        step: int,
        captures: Mapping[str, Any],
        labels: Any,
        index: Any,
        taps: Mapping[str, tuple[str, str, str]],
    ) -> None:
        """Queue one training batch's captures at ``step`` (one row of the ``step`` dim).

        The ``sample`` dim has the size of the first streamed batch; larger batches are
        cut to it and smaller ones padded (NaN data, label and sample_index ``-1``).
        """
        arrays = {name: _to_numpy(captures[name], taps[name][2]) for name in captures}
        label_array = _to_numpy(labels, "int64") if labels is not None else None
        index_array = _to_numpy(index, "int64") if index is not None else None

        def job() -> None:
            if self._stream is None:
                self._stream = self._create_stream(arrays, taps)
            width = self._stream.variables["label"].shape[1]
            batch = next(iter(arrays.values())).shape[0] if arrays else 0
            fitted = {k: _fit(v, width, np.nan) for k, v in arrays.items()}
            fill = np.full(batch, -1, dtype=np.int64)
            fitted["label"] = _fit(label_array if label_array is not None else fill, width, -1)
            fitted["sample_index"] = _fit(
                index_array if index_array is not None else fill, width, -1
            )
            self._stream_rows.append((step, fitted))
            if len(self._stream_rows) >= self._stream_block:
                self._flush_stream()

        self._submit(job)

    def _create_stream(self, arrays, taps) -> Appender:
        group = self._group("stream")
        width = next(iter(arrays.values())).shape[0]
        group.create_array("sample", data=np.arange(width), dimension_names=("sample",))
        appender = Appender(group, "step")
        steps = chunk_rows(width * 8, 1024)
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
            module, point, dtype = taps[name]
            feature = array.shape[1:]
            row_bytes = width * int(np.prod(feature, dtype=np.int64)) * array.itemsize
            appender.add_variable(
                name,
                dims=("sample", *tap_dims(name, feature)),
                shape=(width, *feature),
                chunks=(width, *feature),
                dtype=array.dtype,
                attrs={
                    "tap_module": module,
                    "tap_point": point,
                    "dtype": dtype,
                    "coordinates": "label sample_index",
                },
                row_chunk=chunk_rows(row_bytes, 256),
            )
        # buffer one chunk of rows: writes stay chunk-aligned and memory stays bounded
        self._stream_block = min(a.chunks[0] for a in appender.variables.values())
        return appender

    def _flush_stream(self) -> None:
        if self._stream is not None and self._stream_rows:
            self._stream.append_block(self._stream_rows)
        self._stream_rows = []

    # ------------------------------------------------------------ metrics
    def write(self, stage: str, index: int, metrics: Mapping[str, Any]) -> None:
        """Queue the metrics of step or epoch ``index`` (the :class:`MetricSink` method).

        Step metrics are gathered here and queued as one block every ``flush_steps``
        steps, so a fast training loop does not fill the queue with tiny writes.
        """
        if stage not in ("step", "epoch"):
            raise StoreError("unknown metric stage", expected='"step" or "epoch"', got=stage)
        if stage == "step":
            self._metric_rows.append((index, dict(metrics)))
            if len(self._metric_rows) >= self.flush_steps:
                self._submit_step_metrics()
            return
        self._submit_step_metrics()
        row = [(index, dict(metrics))]
        self._submit(lambda: self._append_metrics(self._epoch_metrics, row))

    def _submit_step_metrics(self) -> None:
        rows, self._metric_rows = self._metric_rows, []
        if rows:
            self._submit(lambda: self._append_metrics(self._step_metrics, rows))

    def _append_metrics(self, appender: Appender, rows: list[tuple[int, dict[str, Any]]]) -> None:
        for _, values in rows:
            for name, value in values.items():
                var = appender.dim_name_for(name)
                if var not in appender.variables:
                    dims, shape = metric_dims(var, value)
                    dtype = np.float64 if not shape else np.asarray(value).dtype
                    if np.dtype(dtype).kind not in "fiub":
                        dtype = np.float64
                    appender.add_variable(
                        var,
                        dims=dims,
                        shape=shape,
                        chunks=shape or (),
                        dtype=dtype,
                        attrs={"stage": appender.dim},
                        row_chunk=1 if shape else 1024,
                    )
        appender.append_block(
            [
                (i, {appender.dim_name_for(k): np.asarray(v) for k, v in vals.items()})
                for i, vals in rows
            ]
        )

    # ------------------------------------------------------------ control
    def flush(self) -> None:
        """Write all buffered rows and block until the queue is empty.

        Raises:
            StoreWriteError: when the writer failed (the committed part stays readable).
        """
        self._submit_step_metrics()
        self._submit(self._flush_stream)
        self._queue.join()
        self._raise_if_failed()

    def close(self, status: str = "complete") -> None:
        """Flush, trim arrays to their committed length, mark ``status`` and consolidate."""
        if self._closed:
            return
        try:
            self.flush()

            def finish() -> None:
                for appender in (
                    self._probe,
                    self._stream,
                    self._step_metrics,
                    self._epoch_metrics,
                ):
                    if appender is not None:
                        appender.trim()
                self.root.attrs["status"] = status
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # consolidated metadata is not in the v3 spec
                    zarr.consolidate_metadata(str(self.path))

            self._submit(finish)
            self._queue.join()
            self._raise_if_failed()
        finally:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()


def _fit(array: np.ndarray, width: int, fill: float) -> np.ndarray:
    """Cut or pad the first axis of ``array`` to ``width``."""
    if array.shape[0] == width:
        return array
    if array.shape[0] > width:
        return array[:width]
    pad = np.full((width - array.shape[0], *array.shape[1:]), fill, dtype=array.dtype)
    return np.concatenate([array, pad])
