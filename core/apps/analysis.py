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

:func:`analyze_runs` analyses several stores with the same settings. With
``scheduler=`` (``--scheduler local:N | tcp://HOST:PORT``, :mod:`infoshape.apps.scheduler`)
each ``(run, epoch, tap)`` slab is a task of a dask cluster, read and estimated on a
worker (:func:`~infoshape.apps.analysis_slabs.slab_task`); the results are gathered and
written here exactly as serially.
"""

from __future__ import annotations

import datetime as dt
import inspect
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from infoshape.apps.analysis_slabs import (
    Run,
    Slab,
    prepare,
    remade,
    resolve_estimator,
    slab,
    slab_task,
)
from infoshape.apps.analysis_store import jsonable, write_analysis
from infoshape.errors import ConfigError, EstimatorAssumptionWarning
from infoshape.math.linalg import label_entropy
from infoshape.registry import Estimator
from infoshape.syntax import by_syntax

__all__ = [
    "analyze",
    "analyze_runs",
    "format_results",
    "parse_epochs",
    "resolve_estimator",
    "slab_task",
    "write_analysis",
]


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
            stacklevel=5,  # analyze -> analyze_runs -> _finish -> here
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
    scheduler: Any = None,
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
        scheduler: ``None`` (default: every slab here, one after the other), ``"local:N"``,
            ``"tcp://HOST:PORT"`` or a ``distributed.Client``: each ``(epoch, tap)`` slab a
            task of that dask cluster (:mod:`infoshape.apps.scheduler`), read and estimated
            on a worker; the values are the same. An :class:`~infoshape.Estimator` passed
            as a record must be importable there.
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
        ConfigError: an estimator without ``information_plane``, an unknown option or epoch,
            an unreadable ``scheduler``.
        PluginError: the estimator failed or returned something else than two scalars.
    """
    return analyze_runs(
        [store],
        estimator,
        taps=taps,
        epochs=epochs,
        max_samples=max_samples,
        seed=seed,
        name=name,
        progress=progress,
        storage_options=storage_options,
        scheduler=scheduler,
        **estimator_options,
    )[0]


def analyze_runs(
    stores: Sequence[str | Path],
    estimator: str | Estimator,
    taps: Sequence[str] | None = None,
    epochs: Sequence[int] | slice | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    name: str | None = None,
    progress: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    scheduler: Any = None,
    **estimator_options: Any,
) -> list[xr.Dataset]:
    """:func:`analyze` each of ``stores`` (the same settings); the Datasets in that order.

    Every store is checked (probe data, taps, epochs, writable) before any slab is
    computed. With a ``scheduler``, the ``(run, epoch, tap)`` slabs of every store go to
    the cluster at once; each store's result is written here, as :func:`analyze` writes it.

    Raises:
        As :func:`analyze`.
    """
    from tqdm.auto import tqdm

    from infoshape.apps.scheduler import local_reads, parse_scheduler

    spec = parse_scheduler(scheduler)
    with local_reads():  # the slabs are read here (or on a worker), never via a Client
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
        runs = [prepare(s, group, taps, epochs, max_samples, seed, storage_options) for s in stores]
        total = sum(len(run.epochs) * len(run.taps) for run in runs)
        bar = tqdm(
            total=total, desc=f"analyze {record.name}", unit="slab", disable=not progress,
            dynamic_ncols=True,
        )  # fmt: skip
        results: list[xr.Dataset] = []
        with bar:
            if spec is None:
                for run in runs:
                    slabs = {}
                    for epoch in run.epochs:
                        for tap in run.taps:
                            slabs[epoch, tap] = slab(run, record, estimator_options, epoch, tap)
                            bar.update()
                    results.append(
                        _finish(run, record, group, slabs, estimator_options, max_samples, seed)
                    )
                return results
            # the record itself: a worker looks no estimator up by name (entry points, per task)
            computed = _on_cluster(spec, runs, record, estimator_options, storage_options, bar)
        for run, slabs in zip(runs, computed, strict=True):
            results.append(_finish(run, record, group, slabs, estimator_options, max_samples, seed))
        return results


def _on_cluster(
    spec: Any,
    runs: list[Run],
    estimator: str | Estimator,
    options: Mapping[str, Any],
    storage_options: Mapping[str, Any] | None,
    bar: Any,
) -> list[dict[tuple[int, str], Slab]]:
    """Every ``(run, epoch, tap)`` slab as a task of the cluster; per run, slab -> values."""
    import distributed

    from infoshape.apps.scheduler import connect

    computed: list[dict[tuple[int, str], Slab]] = [{} for _ in runs]
    token = uuid.uuid4().hex  # each worker opens each store once for this analysis
    with connect(spec) as client:
        where, futures = {}, []
        for k, run in enumerate(runs):
            for epoch in run.epochs:
                for tap in run.taps:
                    args = (run.path, storage_options, estimator, dict(options), run.samples)
                    future = client.submit(slab_task, *args, epoch, tap, token, pure=False)
                    where[future.key] = (k, epoch, tap)
                    futures.append(future)
        try:
            for future in distributed.as_completed(futures):
                k, epoch, tap = where[future.key]
                i_xt, i_ty, made = future.result()  # a slab's error is raised here, as serially
                computed[k][epoch, tap] = (i_xt, i_ty, [remade(a) for a in made])
                bar.update()
        except BaseException:
            client.cancel(futures)  # nothing is written; the other slabs stop
            raise
    return computed


def _finish(
    run: Run,
    record: Estimator,
    group: str,
    slabs: Mapping[tuple[int, str], Slab],
    options: Mapping[str, Any],
    max_samples: int | None,
    seed: int,
) -> xr.Dataset:
    """The Dataset of one run's slabs (in ``(epoch, tap)`` order), written to its store."""
    from infoshape import __version__

    found = np.full((2, len(run.epochs), len(run.taps)), np.nan)
    codes = np.full((len(run.epochs), len(run.taps)), "", dtype=object)
    flags: dict[str, list[list[Any]]] = {}
    first: dict[str, EstimatorAssumptionWarning] = {}
    for i, epoch in enumerate(run.epochs):
        for j, tap in enumerate(run.taps):
            i_xt, i_ty, raised = slabs[epoch, tap]
            found[:, i, j] = [i_xt, i_ty]
            conditions = list(dict.fromkeys(w.condition for w in raised))
            codes[i, j] = ",".join(conditions)
            for w in raised:
                first.setdefault(w.condition, w)
            for condition in conditions:
                flags.setdefault(condition, []).append([epoch, tap])
    _summarize(record.name, flags, first, found[0].size)
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
        coords={
            "epoch": run.epochs,
            "tap": run.taps,
            "sample": np.asarray(run.probe["sample"].values)[run.samples],
        },
        attrs={
            "estimator": record.name,
            "unit": unit,
            "options": jsonable(options),
            "infoshape_version": __version__,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "n_samples": int(run.samples.size),
            "max_samples": max_samples,
            "seed": seed,
            "H_Y": float(label_entropy(run.labels)) / (np.log(2.0) if unit == "bits" else 1.0),
            "assumption_flags": flags,
        },
    )
    write_analysis(run.path, group, result, run.storage_options)
    return result


# the command line's parts, importable from here as before
from infoshape.apps.analysis_table import format_results, parse_epochs  # noqa: E402
