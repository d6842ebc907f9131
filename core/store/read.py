"""Reading a run store lazily as an ``xarray.DataTree``.

:func:`open_store` builds the tree from the zarr arrays directly (with dask,
so nothing is read until asked for) and keeps only committed rows: it opens
finished runs and runs that were killed mid-write alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from zarr.core.metadata import ArrayV3Metadata

from infoshape.errors import StoreError
from infoshape.store import location
from infoshape.store.layout import APPEND_DIMS, NOT_COMMITTED

__all__ = ["committed_length", "open_store"]


def committed_length(coord: np.ndarray) -> int:
    """Number of leading committed rows of an ``epoch``/``step`` coordinate."""
    bad = np.flatnonzero(np.asarray(coord) == NOT_COMMITTED)
    return int(bad[0]) if bad.size else int(np.asarray(coord).shape[0])


def _dataset(group: zarr.Group) -> xr.Dataset:
    arrays = dict(group.arrays())
    lengths = {
        dim: committed_length(np.asarray(arrays[dim][:])) for dim in APPEND_DIMS if dim in arrays
    }
    variables: dict[str, xr.Variable] = {}
    coord_names: set[str] = set()
    for name, array in arrays.items():
        metadata = array.metadata
        if not isinstance(metadata, ArrayV3Metadata):
            raise StoreError(
                f"array {group.name}/{name} is zarr v2",
                expected="a zarr v3 store written by infoshape",
                got=f"zarr format {metadata.zarr_format}",
                fix="open it with xarray.open_zarr directly",
            )
        dims = tuple(metadata.dimension_names or ())
        if len(dims) != array.ndim:
            raise StoreError(
                f"array {group.name}/{name} has no dimension_names",
                expected="zarr v3 arrays with dimension_names",
                got=str(metadata.dimension_names),
                fix="open the store with zarr directly; it was not written by infoshape",
            )
        if metadata.data_type.to_native_dtype().kind in "OTU":
            data: Any = np.asarray(array[:])
        else:
            import dask.array as da  # lazily: dask costs a second at import

            data = da.from_zarr(array)
        index = tuple(
            slice(0, min(lengths[d], array.shape[i])) if d in lengths else slice(None)
            for i, d in enumerate(dims)
        )
        attrs = dict(array.attrs)
        coord_names.update(str(attrs.pop("coordinates", "")).split())
        variables[name] = xr.Variable(dims, data[index], attrs=attrs)
    coord_names |= {n for n, v in variables.items() if v.dims == (n,)}
    coords = {n: variables.pop(n) for n in list(variables) if n in coord_names}
    return xr.Dataset(variables, coords=coords, attrs=dict(group.attrs))


def open_store(path: str | Path, storage_options: Mapping[str, Any] | None = None) -> xr.DataTree:
    """Open a run store as a lazy ``xarray.DataTree``.

    Groups ``probe``, ``stream``, ``metrics`` and ``analysis`` (and any group below
    them) become tree nodes; the root carries the run manifest in its attrs.
    Only committed rows are shown, so a store of a killed run opens too.

    Args:
        path: the store folder, or an fsspec URL (``s3://bucket/runs/a.zarr``).
        storage_options: options of the URL's fsspec filesystem (credentials,
            ``client_kwargs={"endpoint_url": ...}``).

    Raises:
        StoreError: when ``path`` is no zarr v3 store.
    """
    path = location.normalize(path)
    try:
        with location.storage_errors(path, storage_options):  # refused credentials, endpoint
            store = location.zarr_store(path, storage_options, read_only=True)
            root = zarr.open_group(store, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
        there = location.exists(path, storage_options)
        raise StoreError(
            f"no infoshape store at {path}",
            expected="a folder written by infoshape.Session(store=...)",
            got="a folder that is no zarr group" if there else "nothing there",
            fix="check the path (runs/<name>.zarr)",
        ) from err
    nodes: dict[str, xr.Dataset] = {"/": xr.Dataset(attrs=dict(root.attrs))}

    def walk(group: zarr.Group, prefix: str) -> None:
        for name, child in sorted(group.groups()):
            nodes[f"{prefix}/{name}"] = _dataset(child)
            walk(child, f"{prefix}/{name}")

    walk(root, "")
    ranks = dict(root.attrs).get("distributed")
    if isinstance(ranks, dict) and int(ranks.get("world_size", 1)) > 1 and ranks.get("rank") == 0:
        _merge_ranks(path, ranks, nodes, storage_options)
    return xr.DataTree.from_dict(nodes)


def _merge_ranks(
    path: location.StorePath,
    info: dict[str, Any],
    nodes: dict[str, xr.Dataset],
    storage_options: Mapping[str, Any] | None,
) -> None:
    """Put the probe and stream rows of the other ranks' stores beside rank 0's (lazily).

    A DDP run writes one store per rank (:mod:`infoshape.distributed`); rank 0's holds
    the manifest and the metrics. Probe variables are concatenated over ``sample`` and
    put back in the probe set's order (the ranks hold strided shards); streamed rows
    are concatenated over ``sample`` with a ``rank`` coordinate. Only epochs/steps
    committed by every rank are kept.
    """
    from infoshape.distributed import strided_positions

    parts = [nodes]
    for name in info["rank_stores"][1:]:
        other = location.with_name(path, name)
        try:
            group = zarr.open_group(
                location.zarr_store(other, storage_options, read_only=True), mode="r"
            )
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
            raise StoreError(
                f"the store of a rank is missing: {other}",
                expected=f"one store per rank beside {location.name_of(path)}: "
                f"{info['rank_stores']}",
                got="nothing there",
                fix="copy the rank stores along with the main store",
            ) from err
        parts.append({f"/{k}": _dataset(v) for k, v in group.groups() if k in ("probe", "stream")})
    probe = [p["/probe"] for p in parts if p.get("/probe") is not None and p["/probe"].sizes]
    if len(probe) == len(parts):
        merged = xr.concat(probe, dim="sample", data_vars="minimal", coords="minimal",
                           compat="override", join="inner")  # fmt: skip
        order = np.argsort(strided_positions(merged.sizes["sample"], len(parts)))
        nodes["/probe"] = merged.isel(sample=order)
    stream = [p["/stream"] for p in parts if p.get("/stream") is not None and p["/stream"].sizes]
    if len(stream) == len(parts):
        tagged = [
            s.drop_vars("sample").assign_coords(rank=("sample", np.full(s.sizes["sample"], r)))
            for r, s in enumerate(stream)
        ]
        merged = xr.concat(tagged, dim="sample", data_vars="minimal", coords="minimal",
                           compat="override", join="inner")  # fmt: skip
        nodes["/stream"] = merged.assign_coords(sample=np.arange(merged.sizes["sample"]))
