"""Many runs as one dataset: :func:`open_runs` stacks run stores along a ``run`` dimension.

Each run's store is opened lazily (:func:`infoshape.open_store`, dask), one of its groups
is taken (``metrics`` by default) and the runs are concatenated along ``run``, with the
run's configuration, read from its manifest (the root attrs), as indexed coordinates::

    runs = infoshape.open_runs("sweeps/choi_rhee")          # a sweep's folder
    runs.sel(plugin="cr").groupby("coefficient").mean("run")

Coordinates along ``run``:

- ``plugin``: the run's penalty plugins (those declaring a ``weight_option``, e.g.
  ``cr``), joined with ``+``, or ``"none"``;
- ``coefficient``: the value of the first penalty plugin's weight option (its
  ``weight_option``: ``cr``'s ``coefficient``, ``shade``'s ``beta``), NaN without one;
- ``seed`` (``-1`` when the run recorded none), ``model``, ``dataset`` (``""`` when the
  run did not record one; ``model`` falls back to the model's class name), ``status``
  (``complete``, ``running`` for an interrupted run, ``failed``...);
- ``name`` (the store's name without ``.zarr``: the cell's name in a sweep) and ``store``.

Runs that logged different variables (taps, metrics) or different epochs/steps are
aligned with NaN (an outer join) and a warning says what differs; runs whose variables
cannot be aligned (one variable with other dims, or another length along a dim without
coordinate, e.g. a tap of 8 units in one run and 16 in another) are refused with a
:class:`~infoshape.errors.ConfigError` naming the runs and the variable.
"""

from __future__ import annotations

import glob
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from infoshape.errors import ConfigError, InfoshapeWarning
from infoshape.store import location
from infoshape.store.read import open_store

__all__ = ["RUN_COORDS", "find_runs", "open_runs"]

RUN_COORDS = ("plugin", "coefficient", "seed", "model", "dataset", "status", "name", "store")
"""The coordinates along ``run`` that :func:`open_runs` sets from each run's manifest."""

_GLOB = set("*?[")


def open_runs(
    runs: str | Path | Iterable[str | Path],
    group: str = "metrics",
    storage_options: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Open many run stores as one lazy ``xarray.Dataset`` with a ``run`` dimension.

    Args:
        runs: a list of store paths or fsspec URLs; a glob (``"runs/*.zarr"``,
            ``"s3://bucket/runs/*.zarr"``); a sweep's folder (holding ``sweep.json``: its
            cells' stores, in the sweep's order); or one store.
        group: the store group to stack: ``"metrics"`` (default: the metrics and
            penalties over ``step`` and ``epoch``), ``"probe"`` (the probe set's stored
            taps over ``epoch``), ``"stream"`` or ``"analysis"`` (or a group below it,
            ``"analysis/renyi"``).
        storage_options: options of the fsspec filesystem of URL stores.

    Returns:
        The runs' ``group`` concatenated along ``run`` (dask-backed: nothing is read until
        asked for), with the coordinates :data:`RUN_COORDS` along ``run``, each indexed so
        that ``runs.sel(plugin="cr")`` works. The attrs list each run's manifest under
        ``runs``.

    Raises:
        ConfigError: no run found, a store without ``group``, or runs that cannot be
            aligned (the reason named).
        StoreError: a path that is no infoshape store.
    """
    paths = _resolve(runs, storage_options)
    if not paths:
        raise ConfigError(
            "no runs to open",
            expected="store paths or URLs, a glob matching stores, or a sweep's folder",
            got=repr(runs),
            fix="check the paths (runs/<name>.zarr) or the sweep's --out folder",
        )
    datasets, manifests = [], []
    for path in paths:
        tree = open_store(path, storage_options=storage_options)
        if group not in tree:
            raise ConfigError(
                f"the run {path} has no group {group!r}",
                expected=f"a group of the store: {', '.join(sorted(tree.children))}",
                got=repr(group),
                fix='pick another group (open_runs(..., group="metrics"))',
            )
        datasets.append(_plain_strings(tree[group].to_dataset()))
        manifests.append(dict(tree.attrs))
    _check_alignable(datasets, paths)
    _warn_differences(datasets, paths)
    stacked = xr.concat(
        datasets,
        dim="run",
        data_vars="all",
        coords="minimal",
        compat="override",
        join="outer",
        combine_attrs="drop",
    )
    coords = _run_coords(paths, manifests)
    stacked = stacked.assign_coords({name: ("run", values) for name, values in coords.items()})
    for name in RUN_COORDS:
        stacked = stacked.set_xindex(name)
    stacked.attrs["runs"] = json.dumps(manifests, default=str)
    stacked.attrs["group"] = group
    return stacked


# ------------------------------------------------------------------ finding the runs
def find_runs(
    runs: str | Path | Iterable[str | Path], storage_options: Mapping[str, Any] | None = None
) -> list[location.StorePath]:
    """The store paths that :func:`open_runs` reads for ``runs`` (same arguments), in order."""
    return _resolve(runs, storage_options)


def _resolve(runs: Any, storage_options: Mapping[str, Any] | None) -> list[location.StorePath]:
    """The store paths named by ``runs`` (a list, a glob, a sweep folder or one store)."""
    if isinstance(runs, (str, Path)):
        text = str(runs)
        if _GLOB & set(text):
            return _glob(text, storage_options)
        sweep = _sweep_stores(text, storage_options)
        return sweep if sweep is not None else [location.normalize(runs)]
    return [location.normalize(r) for r in runs]


def _glob(pattern: str, storage_options: Mapping[str, Any] | None) -> list[location.StorePath]:
    if not location.is_url(pattern):
        return [Path(p) for p in sorted(glob.glob(pattern))]
    fs, inner = location.filesystem(pattern, storage_options)
    protocol = pattern.split("://", 1)[0]
    return [f"{protocol}://{p}" for p in sorted(fs.glob(inner))]


def _sweep_stores(
    folder: str, storage_options: Mapping[str, Any] | None
) -> list[location.StorePath] | None:
    """The cells' stores of the sweep in ``folder``, or None when it holds no ``sweep.json``."""
    if location.is_url(folder):
        fs, inner = location.filesystem(folder.rstrip("/"), storage_options)
        if not fs.isfile(f"{inner}/sweep.json"):
            return None
        manifest = json.loads(fs.cat_file(f"{inner}/sweep.json"))
        return [
            f"{folder.rstrip('/')}/cells/{location.name_of(c['store'])}" for c in manifest["cells"]
        ]
    path = Path(folder) / "sweep.json"
    if not path.is_file():
        return None
    stores = []
    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        store = Path(cell["store"])
        if not store.exists():  # the sweep ran elsewhere: its cells sit under OUT/cells
            store = Path(folder) / "cells" / store.name
        if store.exists():
            stores.append(store)
        else:
            warnings.warn(
                f"sweep cell {cell['name']!r} has no store ({store}); it is left out",
                InfoshapeWarning,
                stacklevel=4,
            )
    return stores


# ------------------------------------------------------------------ coordinates
@cache
def _weight_option(plugin: str) -> str | None:
    """The weight option a plugin declares (``weight_option``), None if none or not installed."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="infoshape.plugins", name=plugin):
        try:
            option = getattr(entry.load(), "weight_option", None)
        except Exception:  # a broken plugin: its runs still open
            return None
        return option if isinstance(option, str) and option else None
    return None


def _run_coords(
    paths: Sequence[location.StorePath], manifests: Sequence[Mapping[str, Any]]
) -> dict[str, list[Any]]:
    coords: dict[str, list[Any]] = {name: [] for name in RUN_COORDS}
    for path, manifest in zip(paths, manifests, strict=True):
        config = manifest.get("config") or {}
        penalties, coefficient = [], math.nan
        for plugin in manifest.get("plugins") or []:
            option = _weight_option(str(plugin.get("name")))
            if option is None:
                continue
            penalties.append(str(plugin["name"]))
            value = (plugin.get("options") or {}).get(option)
            if len(penalties) == 1 and isinstance(value, (int, float)):
                coefficient = float(value)
        seed = manifest.get("seed", config.get("seed"))
        name = location.name_of(path)
        coords["plugin"].append("+".join(penalties) or "none")
        coords["coefficient"].append(coefficient)
        coords["seed"].append(int(seed) if seed is not None else -1)
        coords["model"].append(str(config.get("model") or manifest.get("model") or ""))
        coords["dataset"].append(str(config.get("dataset") or ""))
        coords["status"].append(str(manifest.get("status", "")))
        coords["name"].append(name.removesuffix(".zarr"))
        coords["store"].append(str(path))
    return coords


# ------------------------------------------------------------------ alignment
def _plain_strings(ds: xr.Dataset) -> xr.Dataset:
    """Text variables as ``object`` arrays, which an outer join can fill (NaN) where missing."""
    text = {n: v.astype(object) for n, v in ds.variables.items() if v.dtype.kind in "TU"}
    return ds.assign_coords({n: v for n, v in text.items() if n in ds.coords}).assign(
        {n: v for n, v in text.items() if n not in ds.coords}
    )


def _check_alignable(datasets: Sequence[xr.Dataset], paths: Sequence[Any]) -> None:
    """Refuse runs whose variables or unindexed dims cannot be put side by side."""
    first_dims: dict[str, tuple[tuple[Any, ...], Any]] = {}
    first_size: dict[str, tuple[int, Any]] = {}
    for ds, path in zip(datasets, paths, strict=True):
        for name, var in ds.variables.items():
            seen = first_dims.setdefault(str(name), (var.dims, path))
            if seen[0] != var.dims:
                raise ConfigError(
                    f"the runs cannot be stacked: {name!r} has other dims in two runs",
                    expected=f"dims {seen[0]} (as in {seen[1]})",
                    got=f"dims {var.dims} in {path}",
                    fix="open these runs separately, or pick another group",
                )
        for dim, size in ds.sizes.items():
            if dim in ds.indexes:
                continue  # aligned by its coordinate (epoch, step, sample)
            seen_size = first_size.setdefault(str(dim), (size, path))
            if seen_size[0] != size:
                raise ConfigError(
                    f"the runs cannot be stacked: dim {dim!r} has another length in two runs",
                    expected=f"{seen_size[0]} (as in {seen_size[1]})",
                    got=f"{size} in {path}",
                    fix="stack runs of the same model widths (open the others separately)",
                )


def _warn_differences(datasets: Sequence[xr.Dataset], paths: Sequence[Any]) -> None:
    """Warn, naming them, about variables and epochs/steps not present in every run."""
    holders: dict[str, list[str]] = {}
    for ds, path in zip(datasets, paths, strict=True):
        for name in map(str, ds.data_vars):
            holders.setdefault(name, []).append(location.name_of(path))
    notes = [
        f"{name} only in {len(names)} of {len(datasets)} runs ({', '.join(names[:3])}"
        f"{', ...' if len(names) > 3 else ''})"
        for name, names in holders.items()
        if len(names) < len(datasets)
    ]
    for dim in ("epoch", "step"):
        values = [np.asarray(ds[dim].values) if dim in ds.indexes else None for ds in datasets]
        shown = [v for v in values if v is not None]
        if shown and any(len(v) != len(shown[0]) or (v != shown[0]).any() for v in shown):
            lengths = sorted({len(v) for v in shown})
            notes.append(f"the runs hold different {dim}s (lengths {', '.join(map(str, lengths))})")
    if notes:
        warnings.warn(
            "the runs differ; missing values are NaN: " + "; ".join(notes),
            InfoshapeWarning,
            stacklevel=3,
        )
