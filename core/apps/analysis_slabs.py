"""The slabs of an analysis: one ``(epoch, tap)`` of one run, read and placed on the plane.

:func:`~infoshape.apps.analysis.analyze` prepares each run (:func:`prepare`: the probe
opened lazily, taps, epochs and samples selected) and computes each slab with
:func:`slab`, here; on a dask cluster each slab is a :func:`slab_task`, which opens the
store on the worker and reads that slab only.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import torch
import xarray as xr

from infoshape.apps.analysis_store import check_writable
from infoshape.apps.scheduler import local_reads
from infoshape.errors import (
    ConfigError,
    EstimatorAssumptionWarning,
    InfoshapeError,
    PluginError,
    StoreError,
)
from infoshape.math.linalg import as_samples
from infoshape.registry import Estimator, get_estimator, list_estimators, unknown_name
from infoshape.store import location
from infoshape.store.layout import INPUT
from infoshape.store.read import open_store

__all__ = [
    "Run",
    "Slab",
    "prepare",
    "remade",
    "resolve_estimator",
    "slab",
    "slab_task",
]


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


@attrs.frozen(kw_only=True)
class Run:
    """One store to analyse: what was selected in it, its probe inputs and labels."""

    path: Any
    probe: xr.Dataset = attrs.field(eq=False)
    taps: list[str]
    epochs: list[int]
    samples: np.ndarray = attrs.field(eq=False)
    x: torch.Tensor = attrs.field(eq=False)
    labels: torch.Tensor = attrs.field(eq=False)
    storage_options: Mapping[str, Any] | None = attrs.field(default=None, eq=False)


def prepare(
    store: Any,
    group: str,
    taps: Sequence[str] | None,
    epochs: Sequence[int] | slice | None,
    max_samples: int | None,
    seed: int,
    storage_options: Mapping[str, Any] | None,
) -> Run:
    """Open ``store``, check it can take ``analysis/<group>``, select taps, epochs, samples."""
    path = location.normalize(store)
    probe = _probe(path, storage_options)
    check_writable(path, group, storage_options)  # before the work, not after it
    samples = _select_samples(probe.sizes["sample"], max_samples, seed)
    return Run(
        path=path,
        probe=probe,
        taps=_select_taps(probe, taps),
        epochs=_select_epochs(probe, epochs),
        samples=samples,
        x=_tensor(probe[INPUT].isel(sample=samples)),
        labels=torch.as_tensor(np.asarray(probe["label"].values)[samples], dtype=torch.int64),
        storage_options=storage_options,
    )


Slab = tuple[float, float, list[EstimatorAssumptionWarning]]


def slab(run: Run, record: Estimator, options: Any, epoch: int, tap: str) -> Slab:
    """I(X;T), I(T;Y) and the assumption warnings of one ``(epoch, tap)`` slab of ``run``."""
    x, labels = run.x, run.labels
    t = _tensor(run.probe[tap].sel(epoch=epoch).isel(sample=run.samples))
    try:
        pair, raised = _place(record, x, t, labels, options)
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
    i_xt, i_ty = (_scalar(v, record.name) for v in pair)
    return i_xt, i_ty, raised


_OPENED: dict[tuple[str, str], Run] = {}
"""The runs a worker opened for the analysis under way (:func:`slab_task`'s ``token``)."""
_OPENING = threading.Lock()


def slab_task(
    store: Any,
    storage_options: Mapping[str, Any] | None,
    estimator: str | Estimator,
    options: Mapping[str, Any],
    samples: np.ndarray,
    epoch: int,
    tap: str,
    token: str = "",
) -> tuple[float, float, list[tuple[Any, ...]]]:
    """One ``(run, epoch, tap)`` slab as a task of a dask worker: the store opened there.

    A worker opens each store once per analysis: ``token`` names the analysis (the runs
    opened for another token are dropped, so a store written since is read afresh).

    Returns ``(I_XT, I_TY, warnings)``, each assumption warning as the arguments that make
    it again (:class:`~infoshape.errors.EstimatorAssumptionWarning`).
    """
    with local_reads():
        key = (token, str(store))
        with _OPENING:  # a worker of several threads opens a store once
            if key not in _OPENED:
                if any(k[0] != token for k in _OPENED):
                    _OPENED.clear()
                probe = _probe(store, storage_options)
                labels = np.asarray(probe["label"].values)[samples]
                _OPENED[key] = Run(
                    path=store,
                    probe=probe,
                    taps=[],
                    epochs=[],
                    samples=samples,
                    x=_tensor(probe[INPUT].isel(sample=samples)),
                    labels=torch.as_tensor(labels, dtype=torch.int64),
                )
            run = _OPENED[key]
        i_xt, i_ty, raised = slab(run, resolve_estimator(estimator), dict(options), epoch, tap)
        made = [(w.estimator, w.condition, w.problem, w.expected, w.got, w.fix) for w in raised]
        return i_xt, i_ty, made


def remade(args: tuple[Any, ...]) -> EstimatorAssumptionWarning:
    """The warning that :func:`slab_task` sent back as its arguments."""
    estimator, condition, problem, expected, got, fix = args
    return EstimatorAssumptionWarning(
        estimator, condition, problem, expected=expected, got=got, fix=fix
    )
