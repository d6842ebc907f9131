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

import datetime as _dt
import errno
import logging
import queue
import shutil
import threading
import uuid
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from infoshape.budget import StreamBudget
from infoshape.capture import Tap
from infoshape.errors import CaptureError, StoreError, StoreWriteError
from infoshape.probe import Probe
from infoshape.store_guard import prepare_store_path
from infoshape.store_layout import (
    DEFAULT_CODEC,
    GROUPS,
    INPUT,
    NOT_COMMITTED,
    STREAM_CHUNK_BYTES,
    Appender,
    check_codec,
    chunk_rows,
    metric_dims,
    shrink,
    tap_dims,
)
from infoshape.store_read import committed_length, open_store

__all__ = ["RunStore", "free_space", "open_store"]

log = logging.getLogger(__name__)
_STOP = object()


def _to_numpy(tensor: Any, dtype: str = "float32") -> np.ndarray:
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


class RunStore:
    """The writer of one run's store (a :class:`~infoshape.sinks.MetricSink` too).

    Every write is queued to one background thread; the queue is bounded, so a
    slow disk applies back-pressure to training instead of growing memory: training
    waits only while ``queue_size`` writes are pending (logged once, naming the option).
    The training thread only reduces (stream budgets) and copies captures to host
    memory; the writer thread gathers streamed rows into whole chunks (one row chunk
    for every variable of the group, one block of rows per write) and writes each
    chunk once.

    Args:
        path: the store folder (``runs/a.zarr``).
        manifest: the run manifest, written to the root attrs.
        overwrite: replace an existing store.
        queue_size: the writer queue's capacity (pending writes; each holds one batch of
            captures, so memory stays below ``queue_size`` batches).
        flush_steps: step metrics are written in blocks of this many steps.
        store_probe_inputs: keep the probe inputs once as ``probe/input`` (for I(X;T)).
        codec: compressor of tap data, ``"none"`` (default, fastest), ``"lz4"`` (Blosc-LZ4
            with byte shuffle) or ``"zstd"`` (smallest); see README "Benchmarks".
        copy_streams: copy every streamed CPU capture on the training thread. By default a
            float32 CPU capture that owns its memory is written from that memory, without a
            copy (captures are fresh activations the runtime lets go of at step end); its
            version counter is checked when it is written, and a capture changed in place
            since (e.g. a reused input buffer tapped with ``point="pre"``) stops the writer
            with an error that names this option.
        resume: reopen the existing store at ``path`` for appending instead of creating
            one: ``{"epoch": E, "step": S, "run_id": ID}`` keeps the committed rows of
            epochs ``< E`` and steps ``< S`` and drops later ones (a killed run's
            partial epoch), after checking the store's ``run_id`` is ``ID``.

    Raises:
        StoreError: ``path`` exists and ``overwrite`` is false; with ``resume``, no store
            at ``path`` or a store of another run.
    """

    def __init__(
        self,
        path: str | Path,
        manifest: Mapping[str, Any],
        overwrite: bool = False,
        queue_size: int = 32,
        flush_steps: int = 100,
        store_probe_inputs: bool = True,
        resume: Mapping[str, Any] | None = None,
        codec: str = DEFAULT_CODEC,
        copy_streams: bool = False,
    ) -> None:
        self.codec = check_codec(codec)
        self.copy_streams = copy_streams
        self.path = Path(path)
        self.flush_steps = flush_steps
        self.store_probe_inputs = store_probe_inputs
        self.run_id = str(manifest.get("run_id") or uuid.uuid4().hex)
        if resume is not None:
            self.root = self._reopen_root(resume)
        else:
            prepare_store_path(self.path, overwrite)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.root = zarr.open_group(str(self.path), mode="w-", zarr_format=3)
                self.root.attrs.update(
                    {**dict(manifest), "run_id": self.run_id, "status": "running"}
                )
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
        self._stream_pending: list[tuple] = []  # main thread only: rows not yet queued
        self._stream_batch: int | None = None  # main thread only: rows queued per job
        self._budgets: dict[str, StreamBudget] = {}  # main thread only
        self._reservoir: Appender | None = None  # writer thread only
        # the epoch whose reservoir samples are being gathered (a resumed run goes on there)
        self._epoch = 0 if resume is None else int(resume["epoch"])
        self._queue: queue.Queue[Any] = _DrainingQueue(maxsize=queue_size)
        self._error: BaseException | None = None
        self._warned_full = False
        self._closed = False
        if resume is not None:
            self._reopen_appenders(int(resume["epoch"]), int(resume["step"]))
        self._thread = threading.Thread(target=self._run, name="infoshape-store", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ resume
    def _reopen_root(self, resume: Mapping[str, Any]) -> zarr.Group:
        """Open the existing store for appending after checking it is the run's own."""
        try:
            # not the consolidated metadata: it is stale once arrays grow again
            root = zarr.open_group(str(self.path), mode="r+", use_consolidated=False)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
            raise StoreError(
                f"no store to resume at {self.path}",
                expected="the store of the run being resumed",
                got="nothing there" if not self.path.exists() else "a folder that is no store",
                fix="check the path; start a new run without resume",
            ) from err
        found = root.attrs.get("run_id")
        if found != resume.get("run_id"):
            raise StoreError(
                f"the store at {self.path} belongs to another run",
                expected=f"run_id {resume.get('run_id')!r} (the checkpoint's run)",
                got=f"run_id {found!r}",
                fix="resume with the checkpoint written beside this store, or start a new "
                "run (overwrite=True, CLI: --overwrite, replaces the store)",
            )
        previous: list[Any] = list(root.attrs.get("resumed") or [])  # type: ignore[arg-type]
        resumes = [*previous, {**_resume_record(resume)}]
        root.attrs.update({"status": "running", "resumed": resumes})
        self.run_id = str(found)
        return root

    def _reopen_appenders(self, epoch: int, step: int) -> None:
        """Rebuild the appenders from the arrays, keeping rows of epochs < epoch, steps < step."""
        probe, stream = self._group("probe"), self._group("stream")
        self._step_metrics = _reopen_appender(self._group("metrics"), "step", step)
        self._epoch_metrics = _reopen_appender(self._group("metrics"), "epoch", epoch)
        if "epoch" in probe:
            self._probe = _reopen_appender(probe, "epoch", epoch)
            labels = probe["label"]
            assert isinstance(labels, zarr.Array)
            self._probe_labels = np.asarray(labels[:])
        if "step" in stream:
            self._stream = _reopen_appender(stream, "step", step)
            self._stream_block = min(a.chunks[0] for a in self._stream.variables.values())

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
                    "for the disk; if this repeats, raise the queue size with "
                    "Session(store_options={'queue_size': %d}) (RunStore(queue_size=...)) or "
                    "cut the stream budget (Tap stream_every, stream_samples, stream_project)",
                    self._queue.maxsize,
                    2 * self._queue.maxsize,
                )
            self._queue.put(job)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            err = self._error
            full = isinstance(err, OSError) and err.errno == errno.ENOSPC
            raise StoreWriteError(
                f"writing the store {self.path} failed: {type(err).__name__}: {err}"
                + (f" ({free_space(self.path)})" if full else ""),
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
        appender = Appender(group, "epoch", self.codec)
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
                compress=True,
            )
        return appender

    # ------------------------------------------------------------ stream
    def write_stream(
        self,
        step: int,
        captures: Mapping[str, Any],
        labels: Any,
        index: Any,
        taps: Mapping[str, tuple[str, str, Tap]],
    ) -> None:
        """Queue one training batch's captures at ``step`` (one row of the ``step`` dim).

        Each capture is reduced by its tap's budget (:mod:`infoshape.budget`) here, on the
        training thread and device, and copied to host memory; taps with a reservoir
        (``stream_samples``) only offer the batch to it (written by :meth:`end_epoch`).
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
                arrays[name] = self._host(name, reduced, budget.tap.stream_dtype)
        if not arrays:
            return
        label_array = _to_numpy(labels, "int64") if labels is not None else None
        index_array = _to_numpy(index, "int64") if index is not None else None
        if self._stream_batch is None:  # rows per chunk, as _create_stream will choose
            self._stream_batch = _stream_chunk_rows(arrays)
        budgets = {name: self._budgets[name] for name in arrays}
        self._stream_pending.append((step, arrays, label_array, index_array, budgets))
        if len(self._stream_pending) >= self._stream_batch:
            self._submit_stream_rows()

    def _submit_stream_rows(self) -> None:
        """Queue the streamed rows gathered on the training thread as one job.

        One job per chunk of rows, not per step: the writer thread wakes once a chunk.
        """
        pending, self._stream_pending = self._stream_pending, []
        if pending:
            self._submit(lambda: self._add_stream_rows(pending))

    def _add_stream_rows(self, pending) -> None:
        for step, arrays, label_array, index_array, budgets in pending:
            if self._stream is None:
                self._stream = self._create_stream(arrays, budgets)
            width = self._stream.variables["label"].shape[1]
            fitted = {k: _fit(v, width, np.nan) for k, v in arrays.items()}
            # labels or indices not given stay at the fill value -1: nothing is written
            for name, values in (("label", label_array), ("sample_index", index_array)):
                if values is not None:
                    fitted[name] = _fit(values, width, -1)
            self._stream_rows.append((step, fitted))
            if len(self._stream_rows) >= self._stream_block:
                self._flush_stream()

    def _budget(self, name: str, spec: tuple[str, str, Tap]) -> StreamBudget:
        """The budget of capture ``name`` (kept across steps: projection, reservoir)."""
        module, point, tap = spec
        budget = self._budgets.get(name)
        if budget is None or budget.tap != tap:
            budget = self._budgets[name] = StreamBudget(name, tap, module=module, point=point)
        return budget

    def _create_stream(self, arrays, budgets) -> Appender:
        group = self._group("stream")
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
        self._stream_block = steps
        return appender

    def _flush_stream(self) -> None:
        if self._stream is not None and self._stream_rows:
            shared = [
                (row, name, value)
                for _, row in self._stream_rows
                for name, value in row.items()
                if isinstance(value, _Shared)
            ]
            for row, name, value in shared:
                row[name] = value.checked()
            self._stream.append_block(self._stream_rows)
            for _, _, value in shared:  # changed while being written: say so
                value.checked()
        self._stream_rows = []

    def _host(self, name: str, tensor: torch.Tensor, dtype: str) -> Any:
        """A host copy of a streamed capture, or the capture itself when that is safe."""
        if (
            not self.copy_streams
            and tensor.device.type == "cpu"
            and str(tensor.dtype) == f"torch.{dtype}"
            and tensor.is_contiguous()
            and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
        ):
            return _Shared(name, tensor.detach())
        return _to_numpy(tensor, dtype)

    def end_epoch(self, epoch: int) -> None:
        """Queue the reservoirs of taps with ``stream_samples`` as the row of ``epoch``.

        The session calls this at each epoch end; :meth:`close` does it for an epoch that
        never ended. Each reservoir then starts anew.
        """
        samples = {}
        for name, budget in self._budgets.items():
            taken = budget.reservoir.take() if budget.reservoir is not None else None
            if taken is not None:
                samples[name] = (budget, taken)
        self._epoch = epoch + 1
        if samples:
            self._submit(lambda: self._append_reservoirs(epoch, samples))

    def _append_reservoirs(self, epoch: int, samples) -> None:
        """Write one epoch's reservoirs: ``stream/<tap>`` over ``(epoch, <tap>_sample, ...)``."""
        group = self._group("stream")
        if self._reservoir is None:  # a resumed run reopens its reservoir rows
            self._reservoir = (
                _reopen_appender(group, "epoch", epoch)
                if "epoch" in group
                else Appender(group, "epoch", self.codec)
            )
            self._reservoir.codec = self.codec
        appender, row = self._reservoir, {}
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
        self._submit_stream_rows()
        self._submit(self._flush_stream)
        self._queue.join()
        self._raise_if_failed()

    def close(self, status: str = "complete") -> None:
        """Flush, trim arrays to their committed length, mark ``status`` and consolidate."""
        if self._closed:
            return
        try:
            self.end_epoch(self._epoch)  # the reservoirs of an epoch that never ended
            self.flush()

            def finish() -> None:
                for appender in (
                    self._probe,
                    self._stream,
                    self._reservoir,
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
        except StoreWriteError:
            self._mark_failed()
            raise
        finally:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()

    def _mark_failed(self) -> None:
        """Best effort after a writer failure: set ``status`` to ``"failed"`` (may not fit)."""
        try:
            self.root.attrs["status"] = "failed"
        except OSError as err:
            log.warning("could not mark the store %s failed: %r", self.path, err)


def free_space(path: str | Path) -> str:
    """How much space is free on the file system holding ``path``, as text."""
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return f"free space on the file system of {where} unknown"
    return f"{free / 2**20:.1f} MiB free on the file system of {where}"


def _resume_record(resume: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "epoch": int(resume["epoch"]),
        "step": int(resume["step"]),
        "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def _reopen_appender(group: zarr.Group, dim: str, below: int) -> Appender:
    """An :class:`Appender` over ``group``'s arrays along ``dim``, cut to rows ``dim < below``.

    Later rows (a killed run's partial epoch, or rows past a checkpoint) are first
    uncommitted (their coordinate set to the fill value), then their data cleared
    in the chunk that stays and the arrays shrunk, so a crash at any point leaves
    a store that opens with exactly the kept rows, and later appends never show
    stale values.
    """
    appender = Appender(group, dim)
    arrays = dict(group.arrays())
    coord = arrays.pop(dim, None)
    if coord is None:
        return appender
    appender.coord = coord
    appender.variables = {
        name: array
        for name, array in arrays.items()
        if tuple(getattr(array.metadata, "dimension_names", None) or ())[:1] == (dim,)
    }
    values = np.asarray(coord[:])
    committed = values[: committed_length(values)]
    keep = (
        int(np.flatnonzero(committed >= below)[0]) if (committed >= below).any() else len(committed)
    )
    if keep < coord.shape[0]:
        coord[keep:] = NOT_COMMITTED
        for array in appender.variables.values():
            rows = array.chunks[0]
            end = min(array.shape[0], -(-keep // rows) * rows)
            if end > keep:
                array[keep:end] = array.fill_value
        shrink(list(appender.variables.values()), keep)
        shrink([coord], keep)
    appender.length = appender.capacity = keep
    return appender


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
            "seed": budget.tap.stream_seed,
        },
    )


def _stream_chunk_rows(arrays: Mapping[str, Any]) -> int:
    """Steps per chunk of the stream group: about STREAM_CHUNK_BYTES for the widest tap."""
    return min(
        chunk_rows(int(np.prod(a.shape, dtype=np.int64)) * a.itemsize, 256, STREAM_CHUNK_BYTES)
        for a in arrays.values()
    )


class _DrainingQueue(queue.Queue):
    """A bounded queue whose waiting producer is woken once half of it has drained.

    ``queue.Queue`` wakes a producer blocked on a full queue at every ``get``, so a
    training thread under back-pressure and the writer thread trade the GIL once per
    write; waking it at half capacity lets the writer write several in a row.
    """

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the next item, waiting for one (``timeout`` is not supported)."""
        with self.not_empty:
            while not self._qsize():
                self.not_empty.wait()
            item = self._get()
            if self._qsize() <= self.maxsize // 2:
                self.not_full.notify_all()
            return item


class _Shared:
    """A streamed CPU capture written from its own memory, with its version at capture."""

    def __init__(self, name: str, tensor: torch.Tensor) -> None:
        self.name = name
        self.tensor = tensor
        self.version = tensor._version
        self.shape = tuple(tensor.shape)
        self.dtype = np.dtype(str(tensor.dtype).removeprefix("torch."))
        self.itemsize = self.dtype.itemsize

    def checked(self) -> np.ndarray:
        """The capture's values, if nothing changed them in place since they were captured.

        Raises:
            CaptureError: the tensor was modified in place after the step ended.
        """
        if self.tensor._version != self.version:
            raise CaptureError(
                f"the streamed capture {self.name!r} was changed in place after its step ended",
                expected="captures left as they are until the store has written them",
                got=f"tensor version {self.tensor._version}, {self.version} when captured",
                fix="Session(store_options={'copy_streams': True}) copies streamed captures "
                "at each step",
            )
        return self.tensor.numpy()


def _fit(array: Any, width: int, fill: float) -> Any:
    """Cut or pad the first axis of ``array`` to ``width``."""
    if array.shape[0] == width:
        return array
    if isinstance(array, _Shared):
        array = array.checked()
    if array.shape[0] > width:
        return array[:width]
    pad = np.full((width - array.shape[0], *array.shape[1:]), fill, dtype=array.dtype)
    return np.concatenate([array, pad])
