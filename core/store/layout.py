"""The store's layout rules: group names, dimension names, chunk sizes, codecs.

Shared by the writer (:mod:`infoshape.store.run_store`) and the reader
(:mod:`infoshape.store.read`), so both agree on what a committed row is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from infoshape.errors import StoreError

__all__ = [
    "APPEND_DIMS",
    "CODECS",
    "DEFAULT_CODEC",
    "GROUPS",
    "INITIAL_CAPACITY",
    "INPUT",
    "NOT_COMMITTED",
    "STREAM_CHUNK_BYTES",
    "check_codec",
    "chunk_rows",
    "metric_dims",
    "tap_dims",
]

GROUPS = {
    "probe": "the probe set's stored taps at each epoch end: (epoch, sample, ...)",
    "stream": "training batches of streamed taps: (step, sample, ...)",
    "metrics": "metrics and penalties over step or epoch",
    "analysis": "results of offline analyses (infoshape analyze)",
}
APPEND_DIMS = ("epoch", "step")
INPUT = "input"
"""Name of the probe group's variable holding the probe inputs X, dims ``(sample, input_*)``."""
NOT_COMMITTED = -1
"""Fill value of the ``epoch``/``step`` coordinate: a row holding it is not committed."""

INITIAL_CAPACITY = {"epoch": 8, "step": 1024}
"""Length along ``epoch``/``step`` that an :class:`Appender` creates its arrays with. Rows
past the committed ones cost only metadata (chunks of fill values are never written) and
readers drop them (their coordinate is :data:`NOT_COMMITTED`); :meth:`Appender.trim` cuts
them at close. So the first 1024 steps and 8 epochs resize nothing: each resize rewrites
every array's metadata."""

CHUNK_BYTES = 4 * 2**20
"""Target uncompressed chunk size."""
STREAM_CHUNK_BYTES = 16 * 2**20
"""Target uncompressed chunk size of streamed taps: several steps of a large tap per chunk,
so the per-write costs (label and sample_index files, the commit) are paid once per chunk."""

CODECS: dict[str, Any] = {
    "none": None,
    "lz4": {"name": "blosc", "configuration": {"cname": "lz4", "clevel": 5, "shuffle": "shuffle"}},
    "zstd": {"name": "zstd", "configuration": {"level": 0, "checksum": False}},
}
"""Compressors of the tap variables by name: none, Blosc-LZ4 with byte shuffle, zstd.

``benchmarks/store.py`` measures all three beside ``numpy.save``; see README "Benchmarks"."""
DEFAULT_CODEC = "none"
"""Chosen by ``benchmarks/store.py``: on 2 CPU cores the uncompressed writer is the fastest;
Blosc-LZ4 with byte shuffle writes at about half its rate and zstd at about a seventh, for
ReLU activations they shrink to 87% and 55%. ``codec="lz4"`` or ``"zstd"`` trade speed
for disk (README, "Benchmarks")."""

ARRAY_OPTIONS: dict[str, Any] = {
    # one flat folder of chunk files per array ("c.12.0.0"): no directory per chunk index
    "chunk_key_encoding": {"name": "default", "separator": "."},
    # every chunk is written as given: no scan for all-fill chunks before each write
    "config": {"write_empty_chunks": True},
}


def check_codec(codec: str) -> str:
    """``codec`` if it names one of :data:`CODECS`.

    Raises:
        StoreError: for any other name, listing the valid ones.
    """
    if codec not in CODECS:
        raise StoreError(
            "unknown store codec",
            expected=" or ".join(repr(c) for c in CODECS),
            got=repr(codec),
            fix=f'use codec="{DEFAULT_CODEC}" (fastest) or "zstd" (smallest)',
        )
    return codec


def chunk_rows(row_bytes: int, max_rows: int, target: int = CHUNK_BYTES) -> int:
    """How many rows of ``row_bytes`` make a chunk of about ``target`` bytes (1 to ``max_rows``)."""
    return int(max(1, min(max_rows, target // max(row_bytes, 1))))


def tap_dims(name: str, feature_shape: Sequence[int]) -> tuple[str, ...]:
    """Dimension names of one sample of tap ``name``, prefixed with the tap's name.

    ``(u,)`` gives ``<name>_unit``; ``(C, H, W)`` gives ``<name>_channel, <name>_y,
    <name>_x``; ``(C, L)`` gives ``<name>_channel, <name>_position``; other ranks
    ``<name>_dim<i>``.
    """
    rank = len(feature_shape)
    suffixes = {
        1: ("unit",),
        2: ("channel", "position"),
        3: ("channel", "y", "x"),
    }.get(rank, tuple(f"dim{i}" for i in range(rank)))
    return tuple(f"{name}_{s}" for s in suffixes)


def metric_dims(name: str, value: Any) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Dims and shape of one metric value (without the step/epoch dim).

    An ``xarray.DataArray`` keeps its own dims; a plain array gets ``<name>_dim<i>``.
    """
    if hasattr(value, "dims") and hasattr(value, "values"):
        return tuple(str(d) for d in value.dims), tuple(value.shape)
    shape = tuple(np.shape(value))
    return tuple(f"{name}_dim{i}" for i in range(len(shape))), shape
