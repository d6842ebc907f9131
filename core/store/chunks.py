"""The zarr chunk-file writes of the store, and resizing arrays along their first dim.

For uncompressed zarr v3 arrays in a local store the writer writes whole chunk files
itself (:func:`write_chunk_file`): the same bytes as zarr's ``bytes`` codec, without
zarr's per-write trip through its event loop. Everything else goes through zarr.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BytesCodec
from zarr.core.sync import sync
from zarr.storage import LocalStore

__all__ = [
    "chunk_path",
    "is_whole_chunk",
    "resize",
    "shrink",
    "write_chunk_file",
    "writes_directly",
]

_BIG_ENDIAN = sys.byteorder == "big"


def writes_directly(array: zarr.Array) -> bool:
    """Whether :func:`write_chunk_file` may write ``array``'s chunk files itself.

    True for uncompressed zarr v3 arrays (the ``bytes`` codec alone) in a local store.
    """
    codecs = array.metadata.codecs if array.metadata.zarr_format == 3 else ()
    return (
        isinstance(array.store, LocalStore)
        and len(codecs) == 1
        and isinstance(codecs[0], BytesCodec)
    )


def chunk_path(array: zarr.Array, coords: tuple[int, ...]) -> Path:
    """The file of chunk ``coords`` of an array in a local store."""
    store = array.store
    assert isinstance(store, LocalStore)
    return Path(store.root) / array.path / array.metadata.encode_chunk_key(coords)


def write_chunk_file(
    array: zarr.Array, coords: tuple[int, ...], parts: Sequence[np.ndarray], atomic: bool
) -> None:
    """Write one whole chunk of a :func:`writes_directly` array as its chunk file.

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
    path = chunk_path(array, coords)

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


def is_whole_chunk(array: zarr.Array, start: int, n: int) -> bool:
    """Whether rows ``start .. start + n`` are one whole chunk of a directly written array."""
    chunks = tuple(array.chunks)
    shape = tuple(array.shape)
    return (
        start % chunks[0] == 0
        and n == chunks[0]
        and start + n <= shape[0]
        and chunks[1:] == shape[1:]
        and writes_directly(array)
    )


def resize(arrays: Iterable[zarr.Array], length: int) -> None:
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
    :data:`~infoshape.store.layout.INITIAL_CAPACITY` rows long). The chunk holding row
    ``length`` stays.
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
    resize(arrays, length)
