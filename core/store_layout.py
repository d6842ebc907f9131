"""The store's layout rules: group names, dimension names, chunk sizes, appending rows.

Shared by the writer (:mod:`infoshape.store`) and the reader
(:mod:`infoshape.store_read`), so both agree on what a committed row is.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BytesCodec
from zarr.core.sync import sync
from zarr.storage import LocalStore

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
    "Appender",
    "check_codec",
    "chunk_rows",
    "metric_dims",
    "shrink",
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

_BIG_ENDIAN = sys.byteorder == "big"
_ARRAY_OPTIONS: dict[str, Any] = {
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


def _direct(array: zarr.Array) -> bool:
    """Whether :func:`_write_chunk` may write ``array``'s chunk files itself.

    True for uncompressed zarr v3 arrays (the ``bytes`` codec alone) in a local store.
    """
    codecs = array.metadata.codecs if array.metadata.zarr_format == 3 else ()
    return (
        isinstance(array.store, LocalStore)
        and len(codecs) == 1
        and isinstance(codecs[0], BytesCodec)
    )


def _chunk_path(array: zarr.Array, coords: tuple[int, ...]) -> Path:
    """The file of chunk ``coords`` of an array in a local store."""
    store = array.store
    assert isinstance(store, LocalStore)
    return Path(store.root) / array.path / array.metadata.encode_chunk_key(coords)


def _write_chunk(
    array: zarr.Array, coords: tuple[int, ...], parts: Sequence[np.ndarray], atomic: bool
) -> None:
    """Write one whole chunk of a :func:`_direct` array as its chunk file.

    The file is what zarr's ``bytes`` codec writes, the C-order little-endian values of
    the full chunk shape (edge chunks too): the same bytes as zarr, without zarr's
    per-write trip through its event-loop and I/O threads, which costs more than the
    write itself on a busy machine (benchmarks/store.py). With ``atomic`` the file is
    written to a temporary name and renamed, like zarr's local store does: needed
    when the chunk holds committed rows (the coordinate). A chunk of only new,
    uncommitted rows is written in place: if the process dies mid-write, readers never
    look at those rows. ``parts`` are consecutive slabs along the first axis (the rows
    of the chunk, or the whole chunk as one part), written one after the other: no copy.
    """
    assert sum(len(part) for part in parts) == array.chunks[0]
    path = _chunk_path(array, coords)

    def write(f: Any) -> None:
        for part in parts:
            values = np.ascontiguousarray(part, dtype=array.dtype)
            if values.dtype.byteorder == ">" or (values.dtype.byteorder == "=" and _BIG_ENDIAN):
                values = values.byteswap().view(values.dtype.newbyteorder())
            f.write(values.data.cast("B"))

    if not atomic:
        with open(path, "wb") as f:
            write(f)
        return
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _whole_chunk(array: zarr.Array, start: int, n: int) -> bool:
    """Whether rows ``start .. start + n`` are exactly one chunk of a :func:`_direct` array."""
    chunks = tuple(array.chunks)
    shape = tuple(array.shape)
    return (
        start % chunks[0] == 0
        and n == chunks[0]
        and start + n <= shape[0]
        and chunks[1:] == shape[1:]
        and _direct(array)
    )


def _resize(arrays: Iterable[zarr.Array], length: int) -> None:
    """Set the first dim of every array to ``length``, all in one trip through zarr's I/O loop.

    Only the metadata changes: chunks past a shrunk length stay (zarr would list every
    chunk key of the old shape to delete them), so shrink only past rows never written.
    """

    async def resize_all() -> None:
        await asyncio.gather(
            *(
                array.async_array.resize((length, *array.shape[1:]), delete_outside_chunks=False)
                for array in arrays
            )
        )

    sync(resize_all())


def shrink(arrays: Sequence[zarr.Array], length: int) -> None:
    """Cut the first dim of every array to ``length`` and delete the chunks past it.

    In a local store only the chunk files that exist are deleted (zarr's own resize
    would try every chunk key of the old shape: thousands for a store created
    :data:`INITIAL_CAPACITY` rows long). The chunk holding row ``length`` stays.
    """
    for array in arrays:
        first = -(-length // array.chunks[0])  # the first chunk wholly past the new length
        flat = array.metadata.encode_chunk_key((0,) * array.ndim) == ".".join(
            ["c"] + ["0"] * array.ndim
        )
        if not (isinstance(array.store, LocalStore) and flat):  # zarr deletes them
            array.resize((length, *array.shape[1:]))
            continue
        for entry in os.scandir(Path(array.store.root) / array.path):  # "c.<row chunk>.0..."
            parts = entry.name.split(".")
            if parts[0] == "c" and len(parts) > 1 and parts[1].isdigit() and int(parts[1]) >= first:
                os.unlink(entry.path)
    _resize(arrays, length)


def _fill_for(dtype: np.dtype) -> Any:
    kind = np.dtype(dtype).kind
    if kind == "f":
        return np.nan
    if kind == "b":
        return False
    return NOT_COMMITTED


class Appender:
    """Variables of one group that grow along one dim (``epoch`` or ``step``).

    The coordinate array named after the dim is written last in every append:
    rows whose coordinate is still :data:`NOT_COMMITTED` were not finished.
    Arrays are created :data:`INITIAL_CAPACITY` rows long and their capacity
    doubles, so metadata is rewritten rarely.

    Args:
        group: the zarr group holding the variables.
        dim: the growing dim, ``"epoch"`` or ``"step"``.
        codec: a key of :data:`CODECS`, the compressor of variables added with
            ``compress=True`` (tap data; coordinates and metrics stay uncompressed).
    """

    def __init__(self, group: zarr.Group, dim: str, codec: str = DEFAULT_CODEC) -> None:
        self.group = group
        self.dim = dim
        self.codec = check_codec(codec)
        self.variables: dict[str, zarr.Array] = {}
        self.length = 0
        self.capacity = 0
        self.coord: zarr.Array | None = None

    def dim_name_for(self, name: str) -> str:
        """Variable name for ``name``: itself, unless the other dim already uses it."""
        if name in self.variables or name not in self.group:
            return name
        return f"{name}_per_{self.dim}"

    def _ensure_coord(self) -> zarr.Array:
        if self.coord is None:
            self.capacity = max(self.capacity, INITIAL_CAPACITY[self.dim])
            self.coord = self.group.create_array(
                self.dim,
                shape=(self.capacity,),
                chunks=(1024,),
                dtype=np.int64,
                fill_value=NOT_COMMITTED,
                dimension_names=(self.dim,),
                compressors=None,
                **_ARRAY_OPTIONS,
            )
        return self.coord

    def add_variable(
        self,
        name: str,
        *,
        dims: Sequence[str],
        shape: Sequence[int],
        chunks: Sequence[int],
        dtype: Any,
        attrs: Mapping[str, Any],
        row_chunk: int = 1,
        fill_value: Any = None,
        compress: bool = False,
    ) -> zarr.Array:
        """Create a variable of shape ``(capacity, *shape)`` and dims ``(dim, *dims)``.

        ``compress`` applies the appender's codec (for tap data).
        """
        self._ensure_coord()
        dtype = np.dtype(dtype)
        array = self.group.create_array(
            name,
            shape=(self.capacity, *shape),
            chunks=(row_chunk, *chunks),
            dtype=dtype,
            fill_value=_fill_for(dtype) if fill_value is None else fill_value,
            dimension_names=(self.dim, *dims),
            attributes=dict(attrs),
            compressors=CODECS[self.codec] if compress else None,
            **_ARRAY_OPTIONS,
        )
        self.variables[name] = array
        return array

    def _grow(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        capacity = max(needed, 2 * self.capacity, INITIAL_CAPACITY[self.dim])
        _resize(self.variables.values(), capacity)  # data first, the coordinate last
        _resize([self._ensure_coord()], capacity)
        self.capacity = capacity

    def append(self, index: int, values: Mapping[str, np.ndarray]) -> None:
        """Write one row; commit it by writing ``index`` to the coordinate."""
        self.append_block([(index, values)])

    def append_block(self, rows: Sequence[tuple[int, Mapping[str, Any]]]) -> None:
        """Write several rows at once (missing values stay at the fill value), then commit."""
        if not rows:
            return
        start, stop = self.length, self.length + len(rows)
        self._grow(stop)
        for name, array in self.variables.items():
            values = [row[name] for _, row in rows if name in row]
            if not values:
                continue
            if len(values) == len(rows) and _whole_chunk(array, start, len(rows)):
                # new rows filling one chunk: its file, written from the rows themselves
                self._check_shapes(name, array, values)
                coords = (start // array.chunks[0],) + (0,) * (array.ndim - 1)
                _write_chunk(array, coords, [np.asarray(v)[None] for v in values], atomic=False)
            else:
                array[start:stop] = self._block(name, array, rows, values)
        self._commit(start, np.array([index for index, _ in rows], dtype=np.int64))
        self.length = stop

    def _commit(self, start: int, indices: np.ndarray) -> None:
        """Write ``indices`` to the coordinate at ``start``: the rows are committed.

        For an uncompressed local coordinate only the new values' bytes are written
        into the chunk file (``pwrite`` at their offset), so the committed values
        before them are never rewritten and a kill cannot tear them; a chunk file is
        created whole (atomically, under a new name) when its first row is committed.
        Rewriting the chunk by rename instead would make the file system flush every
        pending data write at each commit (ext4 does so on rename-over-existing).
        """
        coord = self.coord
        assert coord is not None
        if not _direct(coord):
            coord[start : start + len(indices)] = indices
            return
        size, done = coord.chunks[0], 0
        while done < len(indices):
            chunk, offset = divmod(start + done, size)
            n = min(len(indices) - done, size - offset)
            values = indices[done : done + n]
            path = _chunk_path(coord, (chunk,))
            if path.exists():
                data = np.ascontiguousarray(values, dtype="<i8").tobytes()
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.pwrite(fd, data, 8 * offset)
                finally:
                    os.close(fd)
            else:
                buffer = np.full(size, NOT_COMMITTED, dtype=np.int64)
                buffer[offset : offset + n] = values
                _write_chunk(coord, (chunk,), [buffer], atomic=True)
            done += n

    def _block(self, name, array, rows, values) -> np.ndarray:
        """The ``(len(rows), *shape)`` block of one variable: one copy at most.

        Rows that do not hold the variable stay at its fill value.
        """
        shape = self._check_shapes(name, array, values)
        if len(values) == len(rows):
            if len(rows) == 1:  # the common stream case: no copy at all
                return np.asarray(values[0], dtype=array.dtype)[None]
            return np.stack(values).astype(array.dtype, copy=False)
        block = np.full((len(rows), *shape), array.fill_value, dtype=array.dtype)
        for i, (_, row) in enumerate(rows):
            if name in row:
                block[i] = row[name]
        return block

    def _check_shapes(self, name: str, array: zarr.Array, values: Sequence[Any]) -> tuple:
        """The variable's row shape, if every value has it; else a :class:`StoreError`."""
        shape = tuple(array.shape[1:])
        for value in values:
            if np.shape(value) != shape:
                raise StoreError(
                    f"{self.group.name}/{name} changed shape",
                    expected=str(shape),
                    got=str(np.shape(value)),
                    fix="emit a metric or tap with the same shape every time",
                )
        return shape

    def trim(self) -> None:
        """Shrink every array to the committed length (at close)."""
        if self.coord is None or self.capacity == self.length:
            return
        # rows past the committed ones were never written (a failed write stops the writer
        # before close trims), so no chunk lies past the new length
        _resize(self.variables.values(), self.length)
        _resize([self.coord], self.length)
        self.capacity = self.length
