"""The store's layout rules: group names, dimension names, chunk sizes, appending rows.

Shared by the writer (:mod:`infoshape.store`) and the reader
(:mod:`infoshape.store_read`), so both agree on what a committed row is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from infoshape.errors import StoreError

__all__ = [
    "APPEND_DIMS",
    "GROUPS",
    "INPUT",
    "NOT_COMMITTED",
    "Appender",
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

CHUNK_BYTES = 4 * 2**20
"""Target uncompressed chunk size."""


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
    Capacity grows geometrically, so metadata is rewritten rarely.
    """

    def __init__(self, group: zarr.Group, dim: str) -> None:
        self.group = group
        self.dim = dim
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
            self.coord = self.group.create_array(
                self.dim,
                shape=(self.capacity,),
                chunks=(1024,),
                dtype=np.int64,
                fill_value=NOT_COMMITTED,
                dimension_names=(self.dim,),
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
    ) -> zarr.Array:
        """Create a variable of shape ``(capacity, *shape)`` and dims ``(dim, *dims)``."""
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
        )
        self.variables[name] = array
        return array

    def _grow(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        capacity = max(needed, 2 * self.capacity, 8)
        for array in self.variables.values():  # data first, the coordinate last
            array.resize((capacity, *array.shape[1:]))
        self._ensure_coord().resize((capacity,))
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
            present = [i for i, (_, values) in enumerate(rows) if name in values]
            if not present:
                continue
            block = np.full((len(rows), *array.shape[1:]), array.fill_value, dtype=array.dtype)
            for i in present:
                value = np.asarray(rows[i][1][name])
                if value.shape != block.shape[1:]:
                    raise StoreError(
                        f"{self.group.name}/{name} changed shape",
                        expected=str(block.shape[1:]),
                        got=str(value.shape),
                        fix="emit a metric or tap with the same shape every time",
                    )
                block[i] = value
            array[start:stop] = block
        assert self.coord is not None
        self.coord[start:stop] = np.array([index for index, _ in rows], dtype=np.int64)
        self.length = stop

    def trim(self) -> None:
        """Shrink every array to the committed length (at close)."""
        if self.coord is None or self.capacity == self.length:
            return
        for array in self.variables.values():
            array.resize((self.length, *array.shape[1:]))
        self.coord.resize((self.length,))
        self.capacity = self.length
