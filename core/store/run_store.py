"""The writer of one run's store: manifest, probe set, metrics, resume and close.

The stream group is written by :class:`~infoshape.store.streams.StreamWriter`, every
write runs on the :class:`~infoshape.store.writer.WriterThread`; the layout and the
commit protocol are described in :mod:`infoshape.store`.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import logging
import uuid
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from infoshape.errors import ConfigError, StoreError, StoreWriteError
from infoshape.probe import Probe
from infoshape.store import location
from infoshape.store.appender import Appender, reopen_appender
from infoshape.store.guard import prepare_store_path
from infoshape.store.layout import (
    DEFAULT_CODEC,
    GROUPS,
    INPUT,
    check_codec,
    chunk_rows,
    metric_dims,
    tap_dims,
)
from infoshape.store.streams import StreamWriter, to_numpy
from infoshape.store.writer import WriterThread
from infoshape.syntax import by_syntax

__all__ = ["STORE_OPTIONS", "RunStore"]

#: The keys of ``Session(store_options=...)``: the writer's options of :class:`RunStore`.
STORE_OPTIONS = ("codec", "copy_streams", "flush_steps", "queue_size", "store_probe_inputs")


def _refuse_store_options(unknown: Mapping[str, Any]) -> None:
    """Raise a :class:`ConfigError` for keys RunStore does not take, listing the valid ones."""
    names = ", ".join(map(repr, sorted(unknown)))
    close = {k: difflib.get_close_matches(k, STORE_OPTIONS, n=1) for k in sorted(unknown)}
    hint = "; ".join(f"{k!r} -> {m[0]!r}" for k, m in close.items() if m)
    raise ConfigError(
        f"unknown store option {names}",
        expected=f"store options among: {', '.join(STORE_OPTIONS)}",
        got=", ".join(f"{k}={v!r}" for k, v in sorted(unknown.items())),
        fix="correct the key's spelling in Session(store_options=...)"
        + (f" ({hint})" if hint else ""),
    )


log = logging.getLogger("infoshape.store")


class RunStore:
    """The writer of one run's store: metric rows from the session's emitter, tapped captures.

    The session reaches it in this one role: :class:`~infoshape.metrics.Emitter` writes the
    metric rows (:meth:`write`), :class:`~infoshape.store.taps.TapWriter` the probe and
    stream captures; it is not among the session's metric sinks.

    Every write is queued to one background thread; the queue is bounded, so a
    slow disk applies back-pressure to training instead of growing memory: training
    waits only while ``queue_size`` writes are pending (logged once, naming the option).
    The training thread only reduces (stream budgets) and copies captures to host
    memory; the writer thread gathers streamed rows into whole chunks (one row chunk
    for every variable of the group, one block of rows per write) and writes each
    chunk once.

    Args:
        path: the store folder (``runs/a.zarr``) or an fsspec URL (``s3://bucket/a.zarr``,
            :mod:`~infoshape.store.location`).
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
        storage_options: options of the fsspec filesystem of a URL ``path`` (credentials,
            ``client_kwargs={"endpoint_url": ...}``); never written to the store.

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
        storage_options: Mapping[str, Any] | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:  # a misspelled key of Session(store_options=...)
            _refuse_store_options(unknown)
        self.codec = check_codec(codec)
        self.copy_streams = copy_streams
        self.path: location.StorePath = location.normalize(path)
        self.storage_options = dict(storage_options or {})
        self.flush_steps = flush_steps
        self.store_probe_inputs = store_probe_inputs
        self.run_id = str(manifest.get("run_id") or uuid.uuid4().hex)
        with location.storage_errors(self.path, self.storage_options):  # refused credentials
            self.root = (
                self._create(manifest, overwrite) if resume is None else self._reopen_root(resume)
            )
        self._probe: Appender | None = None
        self._probe_labels: np.ndarray | None = None
        self._step_metrics = Appender(self._group("metrics"), "step")
        self._epoch_metrics = Appender(self._group("metrics"), "epoch")
        self._metric_rows: list[tuple[int, dict[str, Any]]] = []  # main thread only
        self._writer = WriterThread(self.path, queue_size)
        self._queue = self._writer.queue
        # the epoch whose reservoir samples are being gathered (a resumed run goes on there)
        epoch = 0 if resume is None else int(resume["epoch"])
        self._streams = StreamWriter(
            lambda: self._group("stream"), self._submit, self.codec, copy_streams, epoch
        )
        self.write_stream = self._streams.write
        """Queue one training batch's captures at a step (:meth:`StreamWriter.write`)."""
        if resume is not None:
            self._reopen_appenders(int(resume["epoch"]), int(resume["step"]))

    def _create(self, manifest: Mapping[str, Any], overwrite: bool) -> zarr.Group:
        """Create the store's root group with the manifest and the empty groups."""
        prepare_store_path(self.path, overwrite, self.storage_options)
        if isinstance(self.path, Path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            root = zarr.open_group(self._zarr_store(), mode="w-", zarr_format=3)
            root.attrs.update({**dict(manifest), "run_id": self.run_id, "status": "running"})
            for name, description in GROUPS.items():
                root.create_group(name, attributes={"description": description})
        except OSError as err:
            if location.is_url(self.path) and isinstance(err, PermissionError):
                raise  # storage_errors names the refused credentials
            raise StoreError(
                f"cannot create a store at {self.path}: {err}",
                fix="check the folder exists and is writable, and the disk has space",
            ) from err
        return root

    def _zarr_store(self) -> Any:
        """The path for ``zarr.open_group`` (local) or the URL's ``FsspecStore``."""
        return location.zarr_store(self.path, self.storage_options)

    # ------------------------------------------------------------ resume
    def _reopen_root(self, resume: Mapping[str, Any]) -> zarr.Group:
        """Open the existing store for appending after checking it is the run's own."""
        try:
            # not the consolidated metadata: it is stale once arrays grow again
            root = zarr.open_group(self._zarr_store(), mode="r+", use_consolidated=False)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
            there = location.exists(self.path, self.storage_options)
            raise StoreError(
                f"no store to resume at {self.path}",
                expected="the store of the run being resumed",
                got="a folder that is no store" if there else "nothing there",
                fix="check the path; start a new run without resume",
            ) from err
        found = root.attrs.get("run_id")
        if found != resume.get("run_id"):
            raise StoreError(
                f"the store at {self.path} belongs to another run",
                expected=f"run_id {resume.get('run_id')!r} (the checkpoint's run)",
                got=f"run_id {found!r}",
                fix="resume with the checkpoint written beside this store, or start a new "
                f"run ({by_syntax('overwrite=True', '--overwrite')} replaces the store)",
            )
        previous: list[Any] = list(root.attrs.get("resumed") or [])  # type: ignore[arg-type]
        resumes = [*previous, {**_resume_record(resume)}]
        root.attrs.update({"status": "running", "resumed": resumes})
        self.run_id = str(found)
        return root

    def _reopen_appenders(self, epoch: int, step: int) -> None:
        """Rebuild the appenders from the arrays, keeping rows of epochs < epoch, steps < step."""
        probe = self._group("probe")
        self._step_metrics = reopen_appender(self._group("metrics"), "step", step)
        self._epoch_metrics = reopen_appender(self._group("metrics"), "epoch", epoch)
        if "epoch" in probe:
            self._probe = reopen_appender(probe, "epoch", epoch)
            labels = probe["label"]
            assert isinstance(labels, zarr.Array)
            self._probe_labels = np.asarray(labels[:])
        self._streams.reopen(step)

    def _group(self, name: str) -> zarr.Group:
        group = self.root[name]
        assert isinstance(group, zarr.Group)
        return group

    def _submit(self, job: Callable[[], object]) -> None:
        """Queue ``job`` on the writer thread (:meth:`WriterThread.submit`)."""
        self._writer.submit(job)

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
        labels = to_numpy(probe.y, "int64")
        self._check_probe(labels)
        arrays = {name: to_numpy(value) for name, value in captures.items()}
        inputs = to_numpy(probe.x) if first and self.store_probe_inputs else None
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

    def _create_probe(
        self,
        arrays: Mapping[str, np.ndarray],
        labels: np.ndarray,
        sample: np.ndarray,
        split: str,
        taps: Mapping[str, tuple[str, str]],
        inputs: np.ndarray | None,
    ) -> Appender:
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
    def end_epoch(self, epoch: int) -> None:
        """Queue the epoch's reservoirs (:meth:`StreamWriter.end_epoch`).

        The session calls this at each epoch end; :meth:`close` for an epoch that never ended.
        """
        self._streams.end_epoch(epoch)

    # ------------------------------------------------------------ metrics
    def write(self, stage: str, index: int, metrics: Mapping[str, Any]) -> None:
        """Queue the metrics of step or epoch ``index`` (one row, from the session's emitter).

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
        self._streams.submit_rows()
        self._submit(self._streams.write_rows)
        self._writer.join()

    def close(self, status: str = "complete") -> None:
        """Flush, trim arrays to their committed length, mark ``status`` and consolidate."""
        if self._writer.closed:
            return
        try:
            self.end_epoch(self._streams.epoch)  # the reservoirs of an epoch that never ended
            self.flush()

            def finish() -> None:
                for appender in (
                    self._probe,
                    self._streams.appender,
                    self._streams.reservoir,
                    self._step_metrics,
                    self._epoch_metrics,
                ):
                    if appender is not None:
                        appender.trim()
                self.root.attrs["status"] = status
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # consolidated metadata is not in the v3 spec
                    zarr.consolidate_metadata(self.root.store)

            self._submit(finish)
            self._writer.join()
        except StoreWriteError:
            self._mark_failed()
            raise
        finally:
            self._writer.stop()

    def _mark_failed(self) -> None:
        """Best effort after a writer failure: set ``status`` to ``"failed"`` (may not fit)."""
        try:
            self.root.attrs["status"] = "failed"
        except OSError as err:
            log.warning("could not mark the store %s failed: %r", self.path, err)


def _resume_record(resume: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "epoch": int(resume["epoch"]),
        "step": int(resume["step"]),
        "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
