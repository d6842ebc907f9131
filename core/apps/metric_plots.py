"""The metric curves of a run's report: losses, penalties, flags and each plugin's metrics.

:func:`plot_metrics` draws every scalar metric of a store's ``metrics`` group over ``step``
or ``epoch``, grouped into panels (:func:`_panels`) so that quantities of different units
never share an axis; :func:`infoshape.apps.report.report` calls it for ``metrics.png``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["plot_metrics"]

_LINESTYLES: tuple[Any, ...] = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2)))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">")


def _scalar_series(metrics: xr.Dataset, dim: str) -> dict[str, xr.DataArray]:
    return {
        str(name): var
        for name, var in metrics.data_vars.items()
        if var.dims == (dim,) and var.dtype.kind in "fiub"
    }


def _is_flag(var: Any) -> bool:
    """Whether a metric is a yes/no flag: booleans, or floats that are only ever 0 or 1."""
    values = np.asarray(var.values)
    if values.dtype.kind == "b":
        return True
    finite = values[np.isfinite(values.astype(float))] if values.dtype.kind in "fiu" else values
    return bool(finite.size) and bool(np.isin(finite, (0, 1)).all()) and values.dtype.kind == "f"


def _panels(step: dict[str, Any], epoch: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """Group metric names into panels: (title, dim, names); empty panels left out.

    Losses, penalties and accuracies have their own panels; yes/no flags (``mi_ce.dpi``)
    one of their own (never beside real values on a log axis); the other epoch metrics
    one panel per plugin (the name's first part: ``characteristics.fc1.sparsity`` goes to
    ``characteristics``), so quantities of different units do not share an axis.
    """

    def pick(names: list[str], test: Callable[[str], bool]) -> list[str]:
        chosen = [n for n in names if test(n)]
        for n in chosen:
            names.remove(n)
        return chosen

    s, e = sorted(step), sorted(epoch)
    panels = [
        ("training loss per step", "step", pick(s, lambda n: n.startswith("loss"))),
        ("penalties per step", "step", pick(s, lambda n: n.startswith("penalty."))),
        ("flags per step", "step", pick(s, lambda n: _is_flag(step[n]))),
        ("other step metrics", "step", s),
        ("accuracy per epoch", "epoch", pick(e, lambda n: "accuracy" in n)),
        ("loss per epoch", "epoch", pick(e, lambda n: "loss" in n)),
        ("penalties per epoch", "epoch", pick(e, lambda n: n.startswith("penalty."))),
        ("flags per epoch", "epoch", pick(e, lambda n: _is_flag(epoch[n]))),
    ]

    def prefixed(plugin: str) -> Callable[[str], bool]:
        return lambda n: n.startswith(plugin + ".")

    for plugin in dict.fromkeys(n.split(".")[0] for n in e if "." in n):
        panels.append((f"{plugin} per epoch", "epoch", pick(e, prefixed(plugin))))
    panels.append(("other epoch metrics", "epoch", e))
    return [p for p in panels if p[2]]


_YLABELS = {
    "training loss": "loss (nats)",
    "penalties": "penalty (unweighted)",
    "accuracy": "accuracy",
    "loss per epoch": "cross-entropy (nats)",
    "flags": "flag (0 no, 1 yes)",
}


def _ylabel(title: str) -> str:
    return next((label for key, label in _YLABELS.items() if title.startswith(key)), "value")


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def _draw(ax: Any, x: np.ndarray, y: np.ndarray, dim: str, k: int, name: str) -> str:
    """One series on ``ax``; returns a note for the title (or "").

    Missing values (a metric logged every 30 steps is NaN in between) are dropped, so the
    points that exist are joined; a series with few points gets markers.
    """
    style = _LINESTYLES[k % len(_LINESTYLES)]  # coinciding curves stay visible
    keep = np.isfinite(y)
    sparse = keep.sum() < 0.5 * y.size
    x, y = x[keep], y[keep]
    if dim == "step" and y.size > 100:
        window = max(5, y.size // 25)
        (line,) = ax.plot(x, y, linewidth=0.6, alpha=0.3)
        ax.plot(x, _smooth(y, window), color=line.get_color(), ls=style, label=name)
        return f"\n(thin: each step; thick: mean of {window} steps)"
    marker = _MARKERS[k % len(_MARKERS)] if dim == "epoch" or sparse else None
    ax.plot(x, y, ls=style, marker=marker, markersize=4, label=name)
    return ""


def plot_metrics(metrics: xr.Dataset, path: str | Path) -> Path | None:
    """Draw the scalar metrics over ``step`` and ``epoch`` to a PNG at ``path``.

    Panels (:func:`_panels`): losses, penalties (log scale when all positive and spread
    over more than a decade), flags (0/1, linear), accuracies, epoch losses, and the other
    metrics one panel per plugin; every axis is labelled. Returns ``None`` (writing
    nothing) when there is no scalar metric.
    """
    from matplotlib.ticker import MaxNLocator

    from infoshape.apps.report import _figure, _save

    step, epoch = _scalar_series(metrics, "step"), _scalar_series(metrics, "epoch")
    panels = _panels(step, epoch)
    if not panels:
        return None
    columns = 1 if len(panels) == 1 else 2
    rows = -(-len(panels) // columns)
    figure = _figure(6.0 * columns, 3.4 * rows)
    series = {
        **{("step", k): v for k, v in step.items()},
        **{("epoch", k): v for k, v in epoch.items()},
    }
    for i, (title, dim, names) in enumerate(panels):
        ax = figure.add_subplot(rows, columns, i + 1)
        title_note = ""
        values = []
        for k, name in enumerate(names):
            var = series[(dim, name)]
            x, y = np.asarray(var[dim].values), np.asarray(var.values, dtype=float)
            title_note = _draw(ax, x, y, dim, k, name) or title_note
            values.append(y)
        finite = np.concatenate(values)
        finite = finite[np.isfinite(finite)]
        flags = title.startswith("flags")
        if (
            not flags
            and finite.size
            and bool((finite > 0).all())
            and finite.max() > 10 * finite.min()
            and "accuracy" not in title
        ):
            ax.set_yscale("log")
        if flags:
            ax.set_yticks([0, 1], ["no", "yes"])
            ax.set_ylim(-0.1, 1.1)
        ax.set_title(title + title_note, fontsize="medium")
        ax.set_xlabel(dim)
        ax.set_ylabel(_ylabel(title))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    return _save(figure, Path(path))
