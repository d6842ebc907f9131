"""Offline analysis of a run store: the information plane per epoch and tap.

:func:`analyze` reads the probe group lazily, one ``(epoch, tap)`` slab at a
time, applies a registered estimator's ``information_plane(x, t, labels)``
to the probe inputs ``X`` and each stored representation ``T``, and writes
the results back into the store (``infoshape analyze`` on the command line)::

    run.zarr/analysis/<name>/    attrs: estimator, unit, options, infoshape_version,
                                        created, n_samples, max_samples, seed,
                                        H_Y, assumption_flags
      I_XT    (epoch, tap)  float64   I(X;T) in the estimator's unit
      I_TY    (epoch, tap)  float64   I(T;Y)
      flags   (epoch, tap)  str       the estimator's assumption conditions at that
                                      point, comma-separated ("" where none)
      epoch   (epoch,)      int64     the analysed epochs
      tap     (tap,)        str       the analysed taps
      sample  (sample,)     int64     the probe samples used (all, or a seeded subset)

``H_Y`` is the plug-in entropy of the analysed labels in the estimator's unit:
the ceiling of ``I_TY``. ``assumption_flags`` maps each condition an estimator
warned of (:class:`~infoshape.errors.EstimatorAssumptionWarning`: e.g.
``"ridge_dominated"``, ``"exceeds_h_y"``, ``"saturated"``) to the
``[epoch, tap]`` points it concerns; ``{}`` when every estimate held its
assumptions. Each condition is also warned once, for the whole analysis.
``<name>`` is the estimator's name unless given; running again replaces the
group, but only a group an analysis wrote (its attrs hold ``estimator`` and
``infoshape_version``): any other node there is refused and left as it is. The
store must be writable; that is checked before anything is computed. Metadata is
re-consolidated, so ``xarray.open_datatree(path, engine="zarr")`` and
:func:`infoshape.open_store` show the new group.
"""

from __future__ import annotations

import datetime as dt
import inspect
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
import zarr

from infoshape.errors import (
    ConfigError,
    EstimatorAssumptionWarning,
    InfoshapeError,
    PluginError,
    StoreError,
)
from infoshape.math.linalg import as_samples, label_entropy
from infoshape.registry import Estimator, get_estimator, list_estimators, unknown_name
from infoshape.store import location
from infoshape.store.layout import GROUPS, INPUT
from infoshape.store.read import open_store
from infoshape.syntax import by_syntax

__all__ = ["analyze", "format_results", "parse_epochs", "resolve_estimator", "write_analysis"]


def resolve_estimator(estimator: str | Estimator) -> Estimator:
    """The :class:`~infoshape.Estimator` named ``estimator`` (or ``estimator`` itself).

    Raises:
        UnknownNameError: no installed estimator has that name.
        ConfigError: the estimator has no ``information_plane``.
    """
    if isinstance(estimator, str):
        estimator = get_estimator(estimator)
    elif not isinstance(estimator, Estimator):
        raise ConfigError(
            "analyze needs an estimator",
            expected="an estimator name or an infoshape.Estimator record",
            got=repr(estimator),
            fix="pass a name such as 'kl_pairwise' (`infoshape plugins` lists the plugins)",
        )
    if estimator.information_plane is None:
        usable = [e.name for e in list_estimators() if e.information_plane is not None]
        raise ConfigError(
            f"estimator {estimator.name!r} cannot place a layer on the information plane",
            expected="an estimator with information_plane(x, t, labels)",
            got=f"{estimator.name!r} with information_plane=None",
            fix=f"choose one of: {', '.join(usable) or '(none installed)'}",
        )
    return estimator


def _check_options(estimator: Estimator, options: Mapping[str, Any]) -> None:
    try:
        params = list(inspect.signature(estimator.information_plane).parameters.values())  # type: ignore[arg-type]
    except (TypeError, ValueError):  # no signature to check against: the call will tell
        return
    if not options or any(p.kind is p.VAR_KEYWORD for p in params):
        return
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = [p.name for p in params[3:] if p.kind in keyword]
    for key in options:
        if key not in accepted:
            raise ConfigError(
                f"estimator {estimator.name!r} has no option {key!r}",
                expected=f"one of {', '.join(accepted) or '(no options)'}",
                got=repr(key),
                fix="correct the option name ("
                + by_syntax("a keyword argument", "--option KEY=VALUE")
                + ")",
            )


def _probe(path: Any, storage_options: Mapping[str, Any] | None = None) -> xr.Dataset:
    tree = open_store(path, storage_options=storage_options)
    probe = tree["probe"].to_dataset() if "probe" in tree.children else xr.Dataset()
    taps = [n for n in probe.data_vars if n != INPUT and "epoch" in probe[n].dims]
    if not taps or probe.sizes.get("epoch", 0) == 0 or INPUT not in probe.data_vars:
        raise StoreError(
            f"the store {path} holds no probe data to analyse",
            expected=f"probe/ taps stored at one or more epoch ends, and probe/{INPUT} (X)",
            got=f"probe variables {sorted(map(str, probe.data_vars))} over "
            f"{probe.sizes.get('epoch', 0)} epochs",
            fix="train with a probe set and a stored tap (infoshape train without --no-probe; "
            "Session(taps=[Tap(..., store=True)]) and epoch_end(probe=(x, y)))",
        )
    return probe


def _select_taps(probe: xr.Dataset, taps: Sequence[str] | None) -> list[str]:
    available = [str(n) for n in probe.data_vars if n != INPUT and "epoch" in probe[n].dims]
    if taps is None:
        return available
    for tap in taps:
        if tap not in available:
            raise unknown_name("tap", tap, available, "choose a tap stored in probe/")
    return list(dict.fromkeys(taps))


def _select_epochs(probe: xr.Dataset, epochs: Sequence[int] | slice | None) -> list[int]:
    stored = [int(e) for e in probe["epoch"].values]
    if epochs is None:
        return stored
    if isinstance(epochs, slice):
        chosen = stored[epochs]
    else:
        chosen = [int(e) for e in epochs]
        missing = [e for e in chosen if e not in stored]
        if missing:
            raise ConfigError(
                f"epoch {missing[0]} is not in the store",
                expected=f"epochs among {stored[0]}..{stored[-1]} ({len(stored)} stored)",
                got=str(missing),
                fix="pick stored epochs, or a slice of them: --epochs ::2 or --epochs=-1:",
            )
    if not chosen:
        raise ConfigError("no epoch selected", expected="one or more epochs", got=repr(epochs))
    return list(dict.fromkeys(chosen))


def _select_samples(n: int, max_samples: int | None, seed: int) -> np.ndarray:
    if max_samples is None or max_samples >= n:
        return np.arange(n)
    if max_samples < 2:
        raise ConfigError(
            "max_samples is too small",
            expected="an integer of at least 2",
            got=repr(max_samples),
            fix="pass --max-samples N with N >= 2, or leave it out to use every sample",
        )
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_samples, replace=False))


def _tensor(values: xr.DataArray) -> torch.Tensor:
    """One slab, read now (the lazy array's chunks of it only), as ``(N, features)`` float64."""
    return as_samples(torch.from_numpy(np.asarray(values.values, dtype=np.float64)))


def _scalar(value: Any, estimator: str) -> float:
    value = torch.as_tensor(value).detach().cpu()
    if value.numel() != 1:
        raise PluginError(
            f"estimator {estimator!r} returned a non-scalar from information_plane",
            expected="(I(X;T), I(T;Y)), two scalar tensors",
            got=f"a value of shape {tuple(value.shape)}",
            fix="return scalar tensors (fix the estimator plugin)",
        )
    return float(value.reshape(()))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value if value is None or isinstance(value, bool | int | float | str) else repr(value)


def _place(
    record: Estimator, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, options: Any
) -> tuple[Any, list[EstimatorAssumptionWarning]]:
    """``information_plane(x, t, labels)`` and the assumption warnings it raised.

    Other warnings pass through unchanged.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EstimatorAssumptionWarning)
        pair = record.information_plane(x, t, labels, **options)  # type: ignore[misc]
    flagged = []
    for w in caught:
        if isinstance(w.message, EstimatorAssumptionWarning):
            flagged.append(w.message)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return pair, flagged


def _summarize(
    estimator: str,
    flags: dict[str, list[list[Any]]],
    first: dict[str, EstimatorAssumptionWarning],
    total: int,
) -> None:
    """One warning per condition, naming how many points and which, for the whole analysis."""
    for condition, points in flags.items():
        w = first[condition]
        shown = ", ".join(f"(epoch {e}, {t})" for e, t in points[:4])
        shown += f" and {len(points) - 4} more" if len(points) > 4 else ""
        warnings.warn(
            EstimatorAssumptionWarning(
                estimator,
                condition,
                f"{len(points)} of {total} (epoch, tap) points: {w.problem}",
                expected=w.expected,
                got=f"at {shown}; the first: {w.got}",
                fix=w.fix,
            ),
            stacklevel=3,
        )


def analyze(
    store: str | Path,
    estimator: str | Estimator,
    taps: Sequence[str] | None = None,
    epochs: Sequence[int] | slice | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    name: str | None = None,
    progress: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    **estimator_options: Any,
) -> xr.Dataset:
    """Place every probe tap of every epoch on the information plane; write ``analysis/<name>``.

    Args:
        store: a run store with probe data (``infoshape train`` writes one).
        estimator: an estimator name (``"kl_pairwise"``) or an :class:`~infoshape.Estimator`.
        taps: the probe taps to analyse (default: every stored tap).
        epochs: epoch values (``[0, 5, 9]``), or a slice of the stored epochs by position
            (``slice(None, None, 2)`` every other, ``slice(-1, None)`` the last).
        max_samples: analyse a random subset of this many probe samples (seeded by ``seed``,
            the same subset for every epoch and tap; recorded as the ``sample`` coordinate).
        seed: seed of the subset.
        name: the group under ``analysis/`` (default: the estimator's name).
        progress: show a progress bar over the ``(epoch, tap)`` slabs.
        storage_options: options of the filesystem of a store at an fsspec URL
            (``s3://bucket/runs/a.zarr``).
        **estimator_options: keyword options passed to ``information_plane``.

    Returns:
        The Dataset written: ``I_XT``, ``I_TY`` and ``flags`` over ``(epoch, tap)``, attrs as
        in the module docstring.

    Warns:
        EstimatorAssumptionWarning: once per condition the estimator warned of (which points,
            how many); the points are in ``flags`` and the ``assumption_flags`` attr.

    Raises:
        UnknownNameError: an unknown estimator or tap.
        StoreError: the store has no probe data (or no probe inputs), cannot be written,
            or holds an ``analysis/<name>`` that no analysis wrote.
        ConfigError: an estimator without ``information_plane``, an unknown option or epoch.
        PluginError: the estimator failed or returned something else than two scalars.
    """
    from tqdm.auto import tqdm

    from infoshape import __version__

    path = location.normalize(store)
    record = resolve_estimator(estimator)
    _check_options(record, estimator_options)
    group = name or record.name
    if "/" in group or group.strip(".") == "":
        raise ConfigError(
            "cannot name the analysis group",
            expected="a name without '/' (analysis/NAME)",
            got=repr(group),
            fix="pass another name (" + by_syntax("name=...", "--name NAME") + ")",
        )
    probe = _probe(path, storage_options)
    _check_writable(path, group, storage_options)  # before the work, not after it
    tap_names = _select_taps(probe, taps)
    epoch_values = _select_epochs(probe, epochs)
    samples = _select_samples(probe.sizes["sample"], max_samples, seed)
    x = _tensor(probe[INPUT].isel(sample=samples))
    labels = torch.as_tensor(np.asarray(probe["label"].values)[samples], dtype=torch.int64)
    found = np.full((2, len(epoch_values), len(tap_names)), np.nan)
    codes = np.full((len(epoch_values), len(tap_names)), "", dtype=object)
    flags: dict[str, list[list[Any]]] = {}
    first: dict[str, EstimatorAssumptionWarning] = {}
    total, desc = found[0].size, f"analyze {record.name}"
    with tqdm(total=total, desc=desc, unit="slab", disable=not progress, dynamic_ncols=True) as bar:
        for i, epoch in enumerate(epoch_values):
            for j, tap in enumerate(tap_names):
                t = _tensor(probe[tap].sel(epoch=epoch).isel(sample=samples))
                try:
                    pair, raised = _place(record, x, t, labels, estimator_options)
                except InfoshapeError:
                    raise
                except Exception as err:
                    raise PluginError(
                        f"estimator {record.name!r} failed on tap {tap!r} at epoch {epoch}: "
                        f"{type(err).__name__}: {err}",
                        expected=f"information_plane(x {tuple(x.shape)}, t {tuple(t.shape)}, "
                        f"labels {tuple(labels.shape)}) -> two scalars",
                        fix="check the estimator's options; --max-samples N makes it cheaper",
                    ) from err
                found[:, i, j] = [_scalar(v, record.name) for v in pair]
                conditions = list(dict.fromkeys(w.condition for w in raised))
                codes[i, j] = ",".join(conditions)
                for w in raised:
                    first.setdefault(w.condition, w)
                for condition in conditions:
                    flags.setdefault(condition, []).append([epoch, tap])
                bar.update()
    _summarize(record.name, flags, first, total)
    sample_coord = np.asarray(probe["sample"].values)[samples]
    unit = record.unit
    variables = {
        "I_XT": ("I(X;T)", "probe inputs X and the tap's representation T"),
        "I_TY": ("I(T;Y)", "the tap's representation T and the labels Y"),
    }
    result = xr.Dataset(
        {
            key: (
                ("epoch", "tap"),
                found[k],
                {"long_name": label, "units": unit, "description": f"mutual information of {d}"},
            )
            for k, (key, (label, d)) in enumerate(variables.items())
        }
        | {
            "flags": (
                ("epoch", "tap"),
                codes.astype(str),
                {"description": "assumption conditions the estimator warned of, comma-separated"},
            )
        },
        coords={"epoch": epoch_values, "tap": tap_names, "sample": sample_coord},
        attrs={
            "estimator": record.name,
            "unit": unit,
            "options": _jsonable(estimator_options),
            "infoshape_version": __version__,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "n_samples": int(samples.size),
            "max_samples": max_samples,
            "seed": seed,
            "H_Y": float(label_entropy(labels)) / (np.log(2.0) if unit == "bits" else 1.0),
            "assumption_flags": flags,
        },
    )
    write_analysis(path, group, result, storage_options)
    return result


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


def _check_writable(
    store: Any, name: str, storage_options: Mapping[str, Any] | None = None
) -> None:
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
    group = parent.create_group(name, attributes=_jsonable(dict(result.attrs)))
    for key, variable in result.variables.items():
        values = np.asarray(variable.values)
        kind = values.dtype.kind
        array = group.create_array(
            str(key),
            shape=values.shape,
            dtype=str if kind in "OTU" else values.dtype,
            fill_value=np.nan if kind == "f" else None,
            dimension_names=tuple(map(str, variable.dims)),
            attributes=_jsonable(dict(variable.attrs)),
        )
        array[...] = values.astype(object) if kind in "OTU" else values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)  # not in the v3 spec yet
        zarr.consolidate_metadata(root.store)


# the command line's parts, importable from here as before
from infoshape.apps.analysis_table import format_results, parse_epochs  # noqa: E402
