"""Writing an analysis into a run store: ``analysis/<name>``, checked first, then consolidated.

:func:`~infoshape.apps.analysis.analyze` checks the store (:func:`check_writable`) before
it computes anything and writes its result with :func:`write_analysis`; only a group that
an analysis wrote is ever replaced.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from infoshape.errors import StoreError
from infoshape.store import location
from infoshape.store.layout import GROUPS
from infoshape.syntax import by_syntax

__all__ = ["check_writable", "jsonable", "write_analysis"]


def jsonable(value: Any) -> Any:
    """``value`` with mappings, lists and scalars kept and anything else as its ``repr``."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value if value is None or isinstance(value, bool | int | float | str) else repr(value)


def _written_by_analysis(node: Any) -> bool:
    """Whether a zarr node is an ``analysis/<name>`` group that :func:`analyze` wrote."""
    return isinstance(node, zarr.Group) and {"estimator", "infoshape_version"} <= set(node.attrs)


def _refuse_foreign(store: Any, name: str, node: Any) -> None:
    if not _written_by_analysis(node):
        kind = "a group" if isinstance(node, zarr.Group) else "an array"
        raise StoreError(
            f"{store}/analysis/{name} was not written by infoshape analyze; it is left as it is",
            expected="a new name, or a group an analysis wrote (attrs estimator, "
            "infoshape_version)",
            got=f"{kind} with attrs {sorted(node.attrs)}",
            fix="choose another name (" + by_syntax("name=...", "--name NAME") + ")",
        )


def check_writable(store: Any, name: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Refuse a store that cannot be written, or whose ``analysis/<name>`` is not ours.

    A store at a URL is not probed for writability (its permissions show at the write).
    """
    try:
        if isinstance(store, Path):
            folder = store / "analysis" if (store / "analysis").is_dir() else store
            handle, probe = tempfile.mkstemp(dir=folder, prefix=".infoshape-")
            os.close(handle)
            os.unlink(probe)
    except OSError as err:
        raise StoreError(
            f"cannot write the analysis into {store}",
            expected="a store that can be written to (analysis/NAME is added to it)",
            got=f"{type(err).__name__}: {err}",
            fix="copy the store to a writable place and analyze the copy, or make it "
            "writable; nothing was computed",
        ) from err
    root = zarr.open_group(
        location.zarr_store(store, storage_options, read_only=True),
        mode="r",
        use_consolidated=False,
    )
    parent = root.get("analysis")
    if isinstance(parent, zarr.Group) and name in parent:
        _refuse_foreign(store, name, parent[name])


def write_analysis(
    store: str | Path,
    name: str,
    result: xr.Dataset,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write ``result`` as the group ``analysis/<name>`` (replacing it) and re-consolidate.

    Every variable becomes a zarr v3 array with ``dimension_names``; the Dataset's attrs
    become the group's attrs.

    Raises:
        StoreError: ``analysis/<name>`` exists but no analysis wrote it (it is kept).
    """
    path = location.normalize(store)
    root = zarr.open_group(
        location.zarr_store(path, storage_options), mode="r+", use_consolidated=False
    )
    if "analysis" not in root:
        root.create_group("analysis", attributes={"description": GROUPS["analysis"]})
    parent = root["analysis"]
    assert isinstance(parent, zarr.Group)
    if name in parent:
        _refuse_foreign(path, name, parent[name])
        del parent[name]
    group = parent.create_group(name, attributes=jsonable(dict(result.attrs)))
    for key, variable in result.variables.items():
        values = np.asarray(variable.values)
        kind = values.dtype.kind
        array = group.create_array(
            str(key),
            shape=values.shape,
            dtype=str if kind in "OTU" else values.dtype,
            fill_value=np.nan if kind == "f" else None,
            dimension_names=tuple(map(str, variable.dims)),
            attributes=jsonable(dict(variable.attrs)),
        )
        array[...] = values.astype(object) if kind in "OTU" else values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)  # not in the v3 spec yet
        zarr.consolidate_metadata(root.store)
