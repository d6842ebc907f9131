"""Appending rows to a group's variables along ``epoch`` or ``step``, and reopening them.

The commit protocol (DESIGN.md, "The activation store"): arrays grow along the append
dim first, the data are written next, and the coordinate value last. A row whose
coordinate still holds :data:`~infoshape.store.layout.NOT_COMMITTED` is not committed,
and readers drop it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from infoshape.errors import StoreError
from infoshape.store.chunks import (
    chunk_path,
    is_whole_chunk,
    resize,
    shrink,
    write_chunk_file,
    writes_directly,
)
from infoshape.store.layout import (
    ARRAY_OPTIONS,
    CODECS,
    DEFAULT_CODEC,
    INITIAL_CAPACITY,
    NOT_COMMITTED,
    check_codec,
)
from infoshape.store.read import committed_length

__all__ = ["Appender", "reopen_appender"]


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
                **ARRAY_OPTIONS,
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
            **ARRAY_OPTIONS,
        )
        self.variables[name] = array
        return array

    def _grow(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        capacity = max(needed, 2 * self.capacity, INITIAL_CAPACITY[self.dim])
        resize(self.variables.values(), capacity)  # data first, the coordinate last
        resize([self._ensure_coord()], capacity)
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
            if len(values) == len(rows) and is_whole_chunk(array, start, len(rows)):
                # new rows filling one chunk: its file, written from the rows themselves
                self._check_shapes(name, array, values)
                coords = (start // array.chunks[0],) + (0,) * (array.ndim - 1)
                write_chunk_file(array, coords, [np.asarray(v)[None] for v in values], atomic=False)
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
        if not writes_directly(coord):
            coord[start : start + len(indices)] = indices
            return
        size, done = coord.chunks[0], 0
        while done < len(indices):
            chunk, offset = divmod(start + done, size)
            n = min(len(indices) - done, size - offset)
            values = indices[done : done + n]
            path = chunk_path(coord, (chunk,))
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
                write_chunk_file(coord, (chunk,), [buffer], atomic=True)
            done += n

    def _block(
        self,
        name: str,
        array: zarr.Array,
        rows: Sequence[tuple[int, Mapping[str, Any]]],
        values: Sequence[Any],
    ) -> np.ndarray:
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
        resize(self.variables.values(), self.length)
        resize([self.coord], self.length)
        self.capacity = self.length


def reopen_appender(group: zarr.Group, dim: str, below: int) -> Appender:
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
