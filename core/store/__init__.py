"""The run store: one zarr v3 store per run, written in the background, read with xarray.

Layout (DESIGN.md, "The activation store")::

    run.zarr/            root attrs: the run manifest and ``status``
      probe/             (epoch, sample, <tap dims>) per stored tap; coords sample, label, split
      stream/            (step, sample, <tap dims>) per streamed tap; coords label, sample_index
      metrics/           one variable per metric over ``step`` or ``epoch``
      analysis/          written by offline analyses

The modules, in the order a write goes through them:

- :mod:`~infoshape.store.manifest`: the run manifest written to the root attrs.
- :mod:`~infoshape.store.location`: where a store lives: a local path, or an fsspec URL
  (``s3://...``) with its ``storage_options``, opened through zarr's ``FsspecStore``.
- :mod:`~infoshape.store.guard`: what a new store may replace (only infoshape's own).
- :mod:`~infoshape.store.taps`: which tapped captures go to the store, and when.
- :mod:`~infoshape.store.run_store`: :class:`RunStore`, the writer of one run (probe set,
  metrics, resume, close).
- :mod:`~infoshape.store.streams`: the stream group (training batches) and the
  capture budgets of :mod:`~infoshape.store.budget` applied to them.
- :mod:`~infoshape.store.writer`: the background thread and its bounded queue.
- :mod:`~infoshape.store.appender`: rows appended along ``epoch``/``step`` with the commit
  protocol, and reopening them on resume.
- :mod:`~infoshape.store.chunks`: the zarr chunk-file writes and resizes.
- :mod:`~infoshape.store.layout`: names, dims, chunk sizes and codecs shared with the reader.
- :mod:`~infoshape.store.read`: :func:`open_store`, the lazy ``xarray.DataTree`` reader.
- :mod:`~infoshape.store.checkpoint`: the checkpoint beside a store, to resume a run.

Crash safety: arrays grow along ``epoch``/``step`` first, data are written
next, and the coordinate value (``epoch`` or ``step``) is written last. A row
whose coordinate still holds the fill value ``-1`` is not committed; readers
(:func:`open_store`) drop it. zarr's local store writes each chunk and each
metadata file atomically, so a killed run leaves every committed row
readable; on an object store (a URL) every chunk and metadata object is one PUT, which
is atomic, and the local fast paths (chunk files written directly) are not taken. At
close, arrays are trimmed to their committed length and the
metadata is consolidated, so ``xarray.open_datatree(path, engine="zarr")``
opens a finished run without infoshape.
"""

from infoshape.store.read import committed_length, open_store
from infoshape.store.run_store import RunStore
from infoshape.store.writer import free_space

__all__ = ["RunStore", "committed_length", "free_space", "open_store"]
