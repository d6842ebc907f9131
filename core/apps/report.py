"""Plots of a run store: the information plane of each analysis, and the metric curves.

:func:`report` (``infoshape report`` on the command line) writes PNG files to
``<store stem>.report/`` beside the store::

    runs/a.zarr  ->  runs/a.report/information_plane_<estimator>.png   one per analysis/<name>
                     runs/a.report/metrics.png                         step and epoch metrics

Figures are drawn with matplotlib's object API on the Agg canvas, so no
global backend is set and no window opens. Nothing here imports torch.

The report writes only those file names, and replaces such a file only when an
earlier report wrote it (its PNG ``Software`` text says ``infoshape ... report``):
a file of the user's in the output folder is never deleted or overwritten.

Points an estimator flagged (``flags`` of the analysis group: an assumption of the
estimator fails there, :class:`~infoshape.errors.EstimatorAssumptionWarning`) get a
cross per condition, named in the legend and in a note under the plot; when every
``I(T;Y)`` sits at the ceiling ``H(Y)``, the note says so.
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from infoshape.apps.metric_plots import plot_metrics
from infoshape.errors import ASSUMPTION_CONDITIONS, ConfigError
from infoshape.store import location
from infoshape.store.read import open_store
from infoshape.syntax import by_syntax

if TYPE_CHECKING:
    from matplotlib.typing import LineStyleType

__all__ = [
    "default_report_dir",
    "information_plane_figure",
    "plot_information_plane",
    "plot_metrics",
    "report",
]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">")
_LINESTYLES: tuple[Any, ...] = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2)))
_DPI = 120
_FLAG_MARKERS = (("x", "#d62728"), ("+", "#ff7f0e"), ("1", "#9467bd"), ("2", "#8c564b"))
#: ``I(T;Y)`` within this of ``H(Y)`` (relative) counts as at the ceiling
_CEILING_RTOL = 1e-6


def default_report_dir(store: str | Path) -> Path:
    """``runs/a.zarr`` -> ``runs/a.report``: the folder :func:`report` writes to by default.

    A store at an fsspec URL (``s3://bucket/runs/a.zarr``) gives ``a.report`` in the
    current folder: the PNG files are written locally.
    """
    if location.is_url(store):
        return Path(f"{Path(location.name_of(store)).stem}.report")
    path = Path(store)
    return path.parent / f"{path.stem}.report"


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: Path) -> Path:
    from infoshape import __version__

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=_DPI, metadata={"Software": f"infoshape {__version__} report"})
    except OSError as err:  # disk full, permissions changed since the check
        raise _unwritable(path.parent, err) from err
    return path


def _written_by_report(path: Path) -> bool:
    """Whether ``path`` is a PNG a report wrote: its ``Software`` text chunk says so."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    position = 8 if data.startswith(b"\x89PNG\r\n\x1a\n") else len(data)
    while position + 8 <= len(data):
        size = struct.unpack(">I", data[position : position + 4])[0]
        kind = data[position + 4 : position + 8]
        if kind == b"tEXt":
            key, _, text = data[position + 8 : position + 8 + size].partition(b"\0")
            if key == b"Software" and text.startswith(b"infoshape ") and text.endswith(b" report"):
                return True
        if kind == b"IDAT":  # text chunks come before the image data
            return False
        position += 12 + size
    return False


def _check_out(out: Path, names: list[str]) -> None:
    """Refuse an ``out`` that is a file, that cannot be written, or holds files of the user's.

    Nothing is written or deleted when it refuses.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"the report folder {out} is a file",
            expected="a folder (made if missing) for the report's PNG files",
            got=f"a file at {out}",
            fix=f"pass another folder ({_out_syntax()}); the file is left as it is",
        )
    theirs = [n for n in names if (out / n).exists() and not _written_by_report(out / n)]
    if theirs:
        raise ConfigError(
            f"the report would overwrite files it did not write in {out}",
            expected=f"no file of these names, or ones an earlier report wrote: {', '.join(names)}",
            got=", ".join(theirs),
            fix=f"pass another folder ({_out_syntax()}) or move those files (left as they are)",
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=out, prefix=".infoshape-")  # can we write?
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise _unwritable(out, err) from err


def _unwritable(out: Path, err: OSError) -> ConfigError:
    return ConfigError(
        f"cannot write the report to {out}",
        expected="a folder that can be made and written to",
        got=f"{type(err).__name__}: {err}",
        fix=f"pass a writable folder ({_out_syntax()})",
    )


def _out_syntax() -> str:
    return by_syntax("out_dir=DIR", "--out DIR")


def plot_information_plane(
    analysis: xr.Dataset, path: str | Path, labels: np.ndarray | None = None
) -> Path:
    """Draw :func:`information_plane_figure` of one analysis group to a PNG at ``path``."""
    return _save(information_plane_figure(analysis, labels), Path(path))


def _flags(analysis: xr.Dataset) -> dict[str, np.ndarray]:
    """Each flagged condition and its ``(epoch, tap)`` boolean mask."""
    if "flags" not in analysis:
        return {}
    codes = analysis["flags"].transpose("epoch", "tap").values.tolist()  # any string dtype
    split = [[set(filter(None, str(c).split(","))) for c in row] for row in codes]
    found = sorted({c for row in split for cell in row for c in cell})
    return {c: np.array([[c in cell for cell in row] for row in split]) for c in found}


def _h_y(analysis: xr.Dataset, labels: np.ndarray | None, unit: str) -> float | None:
    if labels is not None and labels.size:
        p = np.unique(labels, return_counts=True)[1] / labels.size
        return float(-(p * np.log(p)).sum()) / (np.log(2) if unit == "bits" else 1.0)
    value = analysis.attrs.get("H_Y")
    return None if value is None else float(value)


def _mark_flags(ax: Any, analysis: xr.Dataset, xt: np.ndarray, ty: np.ndarray) -> list[Any]:
    """A cross per flagged point and condition; returns the legend handles."""
    from matplotlib.lines import Line2D

    handles = []
    for k, (condition, mask) in enumerate(_flags(analysis).items()):
        marker, color = _FLAG_MARKERS[k % len(_FLAG_MARKERS)]
        ax.scatter(
            xt[mask], ty[mask], marker=marker, s=90, c=color, linewidths=1.6, zorder=4,
            gid=f"flag:{condition}", label=condition,
        )  # fmt: skip
        text = f"{condition} ({int(mask.sum())} of {mask.size})"
        handles.append(
            Line2D([], [], linestyle="none", marker=marker, color=color, markersize=8, label=text)
        )
    return handles


def _notes(analysis: xr.Dataset, ty: np.ndarray, h_y: float | None) -> list[str]:
    """Lines under the plot: what each flag means; all points at the ceiling."""
    notes = []
    for condition in _flags(analysis):
        meaning = ASSUMPTION_CONDITIONS.get(condition, "the estimator's assumption fails")
        notes.append(f"{condition}: {meaning}")
    finite = ty[np.isfinite(ty)]
    if h_y is None or h_y <= 0 or not finite.size:
        return notes
    if np.all(np.abs(finite - h_y) <= _CEILING_RTOL * max(h_y, 1.0)):
        notes.append(
            f"every point sits at the ceiling I(T;Y) = H(Y) = {h_y:.3g}: the estimate "
            "cannot tell the layers or epochs apart"
        )
    return notes


def information_plane_figure(analysis: xr.Dataset, labels: np.ndarray | None = None) -> Any:
    """The information plane of one analysis group: ``I_XT`` (x) against ``I_TY`` (y).

    One curve per tap through its epochs (its own line style and marker), the points
    coloured by epoch (colorbar), axes labelled with the unit, titled with the estimator.
    With the probe ``labels`` of the samples analysed, dotted lines mark ``log N`` and
    ``H(Y)``: what I(X;T) and I(T;Y) reach when every sample is told apart (``H(Y)`` from
    the group's ``H_Y`` attr when no labels are given). Points with assumption ``flags``
    get a cross per condition (scatter ``gid`` ``"flag:<condition>"``), named in the
    legend; a note under the plot (a figure text, ``gid`` ``"assumption_notes"``) says what
    each condition means, and when every ``I(T;Y)`` is at ``H(Y)``.

    Returns:
        a matplotlib ``Figure`` on the Agg canvas.
    """
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    xt = np.asarray(analysis["I_XT"].transpose("epoch", "tap").values, dtype=float)
    ty = np.asarray(analysis["I_TY"].transpose("epoch", "tap").values, dtype=float)
    epochs = np.asarray(analysis["epoch"].values)
    taps = [str(t) for t in analysis["tap"].values]
    unit = analysis.attrs.get("unit") or analysis["I_XT"].attrs.get("units", "")
    estimator = analysis.attrs.get("estimator", "?")
    lo, hi = float(epochs.min()), float(epochs.max())
    norm = Normalize(lo, hi) if hi > lo else Normalize(lo - 0.5, hi + 0.5)
    h_y = _h_y(analysis, labels, unit)
    notes = _notes(analysis, ty, h_y)

    figure = _figure(7.5, 5.6 + 0.25 * sum(len(textwrap.wrap(n, 100)) for n in notes))
    ax = figure.add_subplot()
    handles = []
    points = None
    for j, tap in enumerate(taps):
        marker, style = _MARKERS[j % len(_MARKERS)], _LINESTYLES[j % len(_LINESTYLES)]
        ax.plot(xt[:, j], ty[:, j], linestyle=style, color="0.35", linewidth=1.2, zorder=2)
        points = ax.scatter(
            xt[:, j],
            ty[:, j],
            c=epochs,
            cmap="viridis",
            norm=norm,
            marker=marker,
            s=46,
            edgecolors="black",
            linewidths=0.5,
            zorder=3,
        )
        handles.append(
            Line2D(
                [], [], color="0.35", linestyle=style, marker=marker, markersize=7,
                markerfacecolor="white", markeredgecolor="black", label=tap,
            )
        )  # fmt: skip
    handles += _mark_flags(ax, analysis, xt, ty)
    # the two ceilings, told apart by colour and dash: I(X;T) <= log N, I(T;Y) <= H(Y)
    Ceiling = tuple[float, str, str, Callable[..., Any], str, "LineStyleType"]
    lines: list[Ceiling] = []
    if h_y is not None:
        lines.append((h_y, "H(Y)", "I(T;Y)", ax.axhline, "#1f77b4", "-."))
    if labels is not None and labels.size:
        scale = np.log(2) if unit == "bits" else 1.0
        value = np.log(labels.size) / scale
        lines.insert(0, (value, "log N", "I(X;T)", ax.axvline, "#d62728", "--"))
    for value, text, bounded, line, color, dash in lines:
        line(value, color=color, ls=dash, lw=1.2, zorder=1, alpha=0.8, gid=f"ceiling:{text}")
        label = f"{text} = {value:.2f} (ceiling of {bounded})"
        handles.append(Line2D([], [], color=color, linestyle=dash, label=label))
    bar = figure.colorbar(points, ax=ax, label="epoch")
    if epochs.size <= 12:
        bar.set_ticks(epochs)
    else:
        bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(handles=handles, title="tap", loc="best", fontsize="small", framealpha=0.9)
    _min_span(ax)
    ax.set_xlabel(f"I(X;T) [{unit}]")
    ax.set_ylabel(f"I(T;Y) [{unit}]")
    ax.grid(alpha=0.3)
    n = analysis.attrs.get("n_samples", analysis.sizes.get("sample"))
    details = [f"{n} samples"] if n else []
    details += [f"{k}={v}" for k, v in (analysis.attrs.get("options") or {}).items()]
    details.append(f"epochs {int(lo)}-{int(hi)}" if hi > lo else f"epoch {int(lo)}")
    subtitle = textwrap.fill(", ".join(details), 80)
    ax.set_title(f"Information plane: {estimator}\n{subtitle}", fontsize="medium")
    if notes:
        text = "\n".join(textwrap.fill(n, 100) for n in notes)
        figure.supxlabel(text, fontsize="small", color="#b22222", ha="center").set_gid(
            "assumption_notes"
        )
    return figure


def _min_span(ax: Any, fraction: float = 0.05) -> None:
    """Widen each axis to at least ``fraction`` of its largest value, without offset ticks.

    A saturated run (every epoch at log N) otherwise blows 1e-5 differences up to the
    whole plot.
    """
    for get, set_, axis in (
        (ax.get_xlim, ax.set_xlim, ax.xaxis),
        (ax.get_ylim, ax.set_ylim, ax.yaxis),
    ):
        lo, hi = get()
        span = fraction * max(abs(lo), abs(hi))
        if hi - lo < span:
            set_((lo + hi) / 2 - span / 2, (lo + hi) / 2 + span / 2)
        axis.get_major_formatter().set_useOffset(False)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def report(
    store: str | Path,
    out_dir: str | Path | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Draw a run's plots: one information plane per ``analysis/<name>``, and the metrics.

    Args:
        store: a run store (``infoshape train`` writes one; ``infoshape analyze`` adds
            ``analysis/<name>``), or a sweep's folder: then its groups are compared
            (:func:`infoshape.apps.compare.report_sweep`, in ``FOLDER/report``).
        out_dir: folder for the PNG files (default ``<store stem>.report`` beside the store;
            in the current folder for a store at a URL).
        storage_options: options of the filesystem of a store at an fsspec URL.

    Returns:
        The paths written: ``information_plane_<name>.png`` per analysis, then
        ``metrics.png`` (when the store has scalar metrics).

    Raises:
        StoreError: ``store`` is no infoshape store.
        ConfigError: ``out_dir`` is a file, cannot be written, or holds a file of one of
            those names that no report wrote (nothing is written then).
    """
    if not location.is_url(store) and (Path(store) / "sweep.json").is_file():
        from infoshape.apps.compare import report_sweep

        return report_sweep(store, out_dir)
    tree = open_store(store, storage_options=storage_options)
    out = Path(out_dir) if out_dir is not None else default_report_dir(store)
    written: list[Path] = []
    probe = tree["probe"].to_dataset() if "probe" in tree.children else xr.Dataset()
    analyses = {
        name: analysis
        for name, node in sorted(tree["analysis"].children.items() if "analysis" in tree else [])
        if {"I_XT", "I_TY"} <= set((analysis := node.to_dataset()).data_vars)
        and analysis.sizes.get("epoch")
    }
    names = [f"information_plane_{_safe(name)}.png" for name in analyses]
    _check_out(out, names + (["metrics.png"] if "metrics" in tree.children else []))
    for name, analysis in analyses.items():
        labels = None
        if "label" in probe.coords:
            used = analysis["sample"].values if "sample" in analysis.coords else slice(None)
            labels = np.asarray(probe["label"].sel(sample=used).values)
        path = out / f"information_plane_{_safe(name)}.png"
        written.append(plot_information_plane(analysis, path, labels=labels))
    if "metrics" in tree.children:
        drawn = plot_metrics(tree["metrics"].to_dataset(), out / "metrics.png")
        written += [drawn] if drawn is not None else []
    return written
