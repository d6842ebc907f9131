"""Records that plugins register (estimators, data sets) and look-ups by name.

Estimators come from the ``infoshape_estimators`` hook and data sets from
``infoshape_datasets``; both are collected from every installed plugin, so a
third-party package adds to them by declaring an entry point.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any, Literal

import attrs

from infoshape.errors import UnknownNameError

__all__ = [
    "DatasetSpec",
    "Estimator",
    "get_dataset",
    "get_estimator",
    "list_datasets",
    "list_estimators",
    "unknown_name",
]


@attrs.frozen(kw_only=True)
class Estimator:
    """An information estimator a plugin offers.

    Attributes:
        name: registry name (``"renyi"``).
        function: the callable computing the estimate.
        unit: ``"nats"`` or ``"bits"``.
        differentiable: whether ``function`` keeps the autograd graph (usable in a penalty).
        cost: a short cost class, e.g. ``"O(N^3)"``.
        description: one line for listings.
        information_plane: ``information_plane(x, t, labels) -> (I(X;T), I(T;Y))`` used by
            offline analysis (``infoshape analyze``): ``x`` the probe inputs and ``t`` a
            layer's representation, both ``(N, features)`` float64 tensors (samples
            flattened), ``labels`` ``(N,)`` int64; returns two scalar tensors in ``unit``.
            It refuses NaN/Inf (``linalg.require_finite``) and keeps ``I(T;Y)`` in
            ``[0, H(Y)]`` up to its bias; where an assumption fails it warns
            :class:`~infoshape.errors.EstimatorAssumptionWarning` (analysis records them).
            ``None`` when the estimator cannot place a layer on the information plane.
    """

    name: str
    function: Callable[..., Any]
    unit: Literal["nats", "bits"] = "nats"
    differentiable: bool = False
    cost: str = ""
    description: str = ""
    information_plane: Callable[..., tuple[Any, Any]] | None = None


@attrs.frozen(kw_only=True)
class DatasetSpec:
    """A data set a plugin offers.

    Attributes:
        name: registry name (``"digits"``).
        load: ``load(split, root) -> torch.utils.data.Dataset`` of ``(x, y)`` pairs, ``split``
            ``"train"`` or ``"test"``, ``root`` a local folder (``None`` when ``needs_root`` is
            false). The returned data set has a ``targets`` attribute (labels, one per sample).
        n_classes: number of classes of ``y``.
        input_shape: shape of one ``x``, e.g. ``(1, 28, 28)``.
        needs_root: whether the files must be found under a user-given ``root``.
        description: one line for listings (source, size).
    """

    name: str
    load: Callable[..., Any]
    n_classes: int
    input_shape: tuple[int, ...]
    needs_root: bool = False
    description: str = ""


def unknown_name(kind: str, name: str, known: Sequence[str], fix: str) -> UnknownNameError:
    """Build the error for a name not in a registry, with the close and the known names."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    return UnknownNameError(
        f"unknown {kind} {name!r}{hint}",
        expected=f"one of {', '.join(sorted(known)) or '(none installed)'}",
        got=repr(name),
        fix=fix,
    )


def _collect(hook: str) -> dict[str, Any]:
    from infoshape.plugin_manager import build_plugin_manager

    manager = build_plugin_manager()
    found: dict[str, Any] = {}
    for items in getattr(manager.hook, hook)():
        for item in items:
            found.setdefault(item.name, item)
    return found


def list_estimators() -> list[Estimator]:
    """Every estimator registered by an installed plugin, sorted by name."""
    return [v for _, v in sorted(_collect("infoshape_estimators").items())]


def get_estimator(name: str) -> Estimator:
    """The installed estimator called ``name``.

    Raises:
        UnknownNameError: listing the installed estimators.
    """
    found = _collect("infoshape_estimators")
    if name not in found:
        raise unknown_name("estimator", name, list(found), "install the plugin that provides it")
    return found[name]


def list_datasets() -> list[DatasetSpec]:
    """Every data set registered by an installed plugin, sorted by name."""
    return [v for _, v in sorted(_collect("infoshape_datasets").items())]


def get_dataset(name: str) -> DatasetSpec:
    """The installed data set called ``name``.

    Raises:
        UnknownNameError: listing the installed data sets.
    """
    found = _collect("infoshape_datasets")
    if name not in found:
        raise unknown_name("data set", name, list(found), "see `infoshape datasets`")
    return found[name]
