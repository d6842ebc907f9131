"""Compare groups of runs: a mean ± std table over seeds, and one figure of their curves.

:func:`compare` (``infoshape compare`` on the command line) opens runs with
:func:`infoshape.open_runs` (store paths, globs, a sweep's folder), groups them by
configuration coordinates (``by``: ``plugin``, ``coefficient``, ``model`` ... of
:data:`~infoshape.apps.runs.RUN_COORDS`; the runs of a group differ in ``seed``) and, for
each metric, takes every run's value at its last epoch and reports the mean and the
sample standard deviation (``ddof=1``; NaN for one run) over the runs of the group::

    comparison, figures = compare("sweeps/a", ["test.accuracy"], by=("plugin", "coefficient"))
    print(comparison.to_text())

A metric is an epoch (or step) metric of the ``metrics`` group (``test.accuracy``,
``characteristics.fc1.sparsity``; ``test_accuracy`` finds ``test.accuracy``), or
``I_XT``/``I_TY`` of an analysis group (``analysis="kl_pairwise"``; one column per
tap). The figure draws, one colour per group, each metric over its epochs (the
group's mean line and a ±std band) and, with an analysis, the information-plane
trajectories (mean ``I(X;T)`` against mean ``I(T;Y)`` over the epochs, one panel per
tap).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import xarray as xr

from infoshape.apps.report import _check_out, _figure, _save
from infoshape.apps.runs import RUN_COORDS, find_runs, open_runs
from infoshape.errors import ConfigError
from infoshape.store import location

__all__ = ["Comparison", "compare", "default_compare_dir", "report_sweep"]

_PLANE = ("I_XT", "I_TY")
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


@attrs.frozen(kw_only=True)
class Comparison:
    """The table of :func:`compare`: per group, mean ± sample std over its runs.

    Attributes:
        by: the run coordinates that define a group.
        columns: one per metric (``I_TY[relu1]``: one per tap of an analysis metric).
        rows: ``(key, runs, {column: (mean, std, n)})``: ``key`` the group's values of
            ``by``, ``runs`` the names of its runs, ``n`` the runs with a finite value.
    """

    by: tuple[str, ...]
    columns: tuple[str, ...]
    rows: tuple[tuple[tuple[Any, ...], tuple[str, ...], dict[str, tuple[float, float, int]]], ...]

    def label(self, key: Sequence[Any]) -> str:
        """A group's name: ``plugin=cr coefficient=0.01``."""
        return " ".join(f"{b}={_show(v)}" for b, v in zip(self.by, key, strict=True))

    def to_text(self, digits: int = 4) -> str:
        """An aligned table: the ``by`` columns, ``n``, and ``mean ± std`` per metric."""
        head = [*self.by, "n", *self.columns]
        lines = [head]
        for key, runs, stats in self.rows:
            cells = [_cell(*stats[c][:2], digits) if c in stats else "" for c in self.columns]
            lines.append([*map(_show, key), str(len(runs)), *cells])
        widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
        text = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in lines]
        return "\n".join(line.rstrip() for line in text)

    def to_markdown(self, digits: int = 4) -> str:
        """The table in markdown."""
        head = [*self.by, "n", *self.columns]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for key, runs, stats in self.rows:
            cells = [_cell(*stats[c][:2], digits) if c in stats else "" for c in self.columns]
            lines.append("| " + " | ".join([*map(_show, key), str(len(runs)), *cells]) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """One line per group and metric: the ``by`` values, metric, n, mean, std."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([*self.by, "metric", "n", "mean", "std"])
        for key, _, stats in self.rows:
            for column in self.columns:
                if column in stats:
                    mean, std, n = stats[column]
                    writer.writerow([*map(_show, key), column, n, repr(mean), repr(std)])
        return buffer.getvalue()

    def to_json(self) -> str:
        """The groups as JSON (NaN written as ``null``)."""
        groups = [
            {
                **{b: _plain(v) for b, v in zip(self.by, key, strict=True)},
                "runs": list(runs),
                "metrics": {
                    c: {"mean": _plain(m), "std": _plain(s), "n": n}
                    for c, (m, s, n) in stats.items()
                },
            }
            for key, runs, stats in self.rows
        ]
        return json.dumps({"by": list(self.by), "groups": groups}, indent=2) + "\n"


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return value.item() if isinstance(value, np.generic) else value


def _cell(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "nan"
    return f"{mean:.{digits}g}" + ("" if math.isnan(std) else f" ± {std:.2g}")


# ------------------------------------------------------------------ reading
def default_compare_dir(runs: str | Path | Sequence[str | Path]) -> Path:
    """Where the figure goes by default: ``SWEEP/compare`` for a sweep's folder.

    Else ``compare/`` beside the first store (in the current folder for stores at URLs
    or a glob).
    """
    items = [runs] if isinstance(runs, (str, Path)) else list(runs)
    first = str(items[0]) if items else "."
    if not location.is_url(first) and (Path(first) / "sweep.json").is_file():
        return Path(first) / "compare"
    if location.is_url(first):
        return Path("compare")
    return Path(first).parent / "compare"


def _metrics_names(dataset: xr.Dataset) -> list[str]:
    return sorted(
        str(n)
        for n, v in dataset.data_vars.items()
        if v.dims[1:] in (("epoch",), ("step",)) and v.dtype.kind in "fiub"
    )


def _resolve_metric(name: str, available: Sequence[str], analyses: Sequence[str]) -> str:
    """``name`` among ``available`` (``test_accuracy`` finds ``test.accuracy``)."""
    if name in available or name in _PLANE:
        return name
    dotted = [a for a in available if a.replace(".", "_") == name]
    if len(dotted) == 1:
        return dotted[0]
    plane = f"; with --analysis NAME ({', '.join(analyses)}): I_XT, I_TY" if analyses else ""
    raise ConfigError(
        f"no metric {name!r} in the runs",
        expected=f"an epoch or step metric: {', '.join(available)}{plane}",
        got=repr(name),
        fix="pick one of those (--metric test.accuracy)",
    )


def _last_values(data: xr.DataArray, dim: str) -> xr.DataArray:
    """Each run's last finite value along ``dim`` (NaN where it has none)."""
    data = data.transpose("run", dim, ...)
    values = np.asarray(data.values, dtype=np.float64)
    finite = np.isfinite(values)
    last = values.shape[1] - 1 - np.argmax(finite[:, ::-1], axis=1)
    picked = np.take_along_axis(values, last[:, None], axis=1)[:, 0]
    picked[~finite.any(axis=1)] = np.nan
    return xr.DataArray(picked, dims=("run", *data.dims[2:]), coords=data.isel({dim: 0}).coords)


def _columns(name: str, data: xr.DataArray) -> dict[str, np.ndarray]:
    """``{column: values over run}``: one column, or one per value of an extra dim (tap)."""
    if data.ndim == 1:
        return {name: np.asarray(data.values)}
    flat = data.stack(_column=[d for d in data.dims if d != "run"])
    labels = [
        ",".join(map(str, v if isinstance(v, tuple) else (v,))) for v in flat["_column"].values
    ]
    return {f"{name}[{label}]": np.asarray(flat.values[:, i]) for i, label in enumerate(labels)}


def _groups(runs: xr.Dataset, by: Sequence[str]) -> list[tuple[tuple[Any, ...], list[int]]]:
    """The groups of runs (positions along ``run``) by their ``by`` values, sorted."""
    unknown = [b for b in by if b not in RUN_COORDS]
    if unknown or not by:
        raise ConfigError(
            f"cannot group runs by {', '.join(unknown) or 'nothing'}",
            expected=f"run coordinates among: {', '.join(RUN_COORDS)}",
            got=", ".join(by) or "(none)",
            fix="pass --by plugin,coefficient",
        )
    found: dict[tuple[Any, ...], list[int]] = {}
    for i in range(runs.sizes["run"]):
        key = tuple(_plain(runs[b].values[i]) for b in by)
        found.setdefault(tuple("nan" if v is None else v for v in key), []).append(i)

    def order(key: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in key)

    return [(key, found[key]) for key in sorted(found, key=order)]


def _stats(values: np.ndarray) -> tuple[float, float, int]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan, 0
    std = float(np.std(finite, ddof=1)) if finite.size > 1 else math.nan
    return float(np.mean(finite)), std, int(finite.size)


# ------------------------------------------------------------------ the comparison
def compare(
    runs: str | Path | Iterable[str | Path],
    metrics: str | Sequence[str] = "test.accuracy",
    by: Sequence[str] = ("plugin", "coefficient"),
    analysis: str | None = None,
    out: str | Path | None = None,
    storage_options: Mapping[str, Any] | None = None,
    figure: bool = True,
) -> tuple[Comparison, list[Path]]:
    """Group runs by ``by`` and compare ``metrics``: the table and the figure.

    Args:
        runs: store paths or URLs, globs, or a sweep's folder (:func:`infoshape.open_runs`).
        metrics: one or more metric names (see the module docstring).
        by: the run coordinates that make a group (the runs of a group are its seeds).
        analysis: an ``analysis/<name>`` group: ``I_XT``/``I_TY`` come from it, and the
            figure draws its information-plane trajectories.
        out: the PNG file (default ``<default_compare_dir>/<metrics>.png``).
        storage_options: options of the filesystem of stores at fsspec URLs.
        figure: draw the figure (``False``: the table only).

    Returns:
        The :class:`Comparison` and the paths written (the figure).

    Raises:
        ConfigError: no runs, an unknown metric (the available ones listed), an unknown
            ``by`` coordinate, an analysis the runs lack, or an ``out`` that cannot be
            written.
    """
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    paths = find_runs(runs, storage_options)
    data = open_runs(paths, "metrics", storage_options)
    available = _metrics_names(data)
    analyses = _analysis_names(paths, storage_options)
    names = [_resolve_metric(n, available, analyses) for n in names]
    plane = None
    if analysis is not None or any(n in _PLANE for n in names):
        plane = _open_analysis(paths, analysis, analyses, storage_options)
    curves: dict[str, xr.DataArray] = {}
    for name in names:
        source = plane if name in _PLANE else data
        assert source is not None
        curves[name] = source[name]
    columns: dict[str, np.ndarray] = {}
    for name, curve in curves.items():
        dim = "epoch" if "epoch" in curve.dims else "step"
        columns.update(_columns(name, _last_values(curve, dim)))
    groups = _groups(data, by)
    rows = tuple(
        (
            key,
            tuple(str(data["name"].values[i]) for i in members),
            {c: _stats(v[members]) for c, v in columns.items()},
        )
        for key, members in groups
    )
    comparison = Comparison(by=tuple(by), columns=tuple(columns), rows=rows)
    if not figure:
        return comparison, []
    default = default_compare_dir(runs if isinstance(runs, (str, Path)) else paths)
    path = Path(out) if out is not None else default / f"{_safe('+'.join(names))}.png"
    _check_out(path.parent, [path.name])
    return comparison, [_draw(comparison, groups, curves, plane, path)]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)


def _analysis_names(paths: Sequence[Any], storage_options: Mapping[str, Any] | None) -> list[str]:
    """The analysis groups of the first run."""
    from infoshape.store.read import open_store

    tree = open_store(paths[0], storage_options=storage_options) if paths else None
    if tree is None or "analysis" not in tree.children:
        return []
    return sorted(map(str, tree["analysis"].children))


def _open_analysis(
    paths: Sequence[Any],
    name: str | None,
    analyses: Sequence[str],
    storage_options: Mapping[str, Any] | None,
) -> xr.Dataset:
    if name is None and len(analyses) == 1:
        name = analyses[0]
    if name is None or name not in analyses:
        raise ConfigError(
            "I_XT and I_TY need an analysis of the runs"
            if name is None
            else f"the runs have no analysis {name!r}",
            expected="an analysis group: " + (", ".join(analyses) or "(none in the runs)"),
            got=repr(name),
            fix="pass --analysis NAME, after `infoshape analyze STORE --estimator NAME` "
            "on every run",
        )
    from infoshape.store.read import open_store

    plane = open_runs(paths, f"analysis/{name}", storage_options)
    first = open_store(paths[0], storage_options=storage_options)[f"analysis/{name}"]
    plane.attrs["unit"] = str(first.attrs.get("unit", ""))
    return plane


# ------------------------------------------------------------------ the figure
def _band(ax: Any, x: np.ndarray, values: np.ndarray, color: str, label: str) -> None:
    """The mean over runs (axis 0) as a line, ±std (ddof=1) as a band."""
    finite = np.isfinite(values)
    count = finite.sum(axis=0)
    total = np.where(finite, values, 0.0).sum(axis=0)
    mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    spread = np.where(finite, (values - mean) ** 2, 0.0).sum(axis=0)
    std = np.where(count > 1, np.sqrt(spread / np.maximum(count - 1, 1)), np.nan)
    ax.plot(x, mean, color=color, marker="o" if x.size <= 30 else None, ms=3, label=label)
    if (count > 1).any():
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)


def _draw(
    comparison: Comparison,
    groups: Sequence[tuple[tuple[Any, ...], list[int]]],
    curves: Mapping[str, xr.DataArray],
    plane: xr.Dataset | None,
    path: Path,
) -> Path:
    panels = [(name, tap) for name, curve in curves.items() for tap in _taps(curve)]
    plane_taps = list(_taps(plane["I_XT"])) if plane is not None else []
    total = len(panels) + len(plane_taps)
    ncols = min(4, total)
    nrows = -(-total // ncols)
    figure = _figure(4.2 * ncols, 3.6 * nrows)
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[total:]:
        ax.set_axis_off()
    for ax, (name, tap) in zip(axes, panels, strict=False):
        curve = curves[name] if tap is None else curves[name].sel(tap=tap)
        dim = "epoch" if "epoch" in curve.dims else "step"
        curve = curve.transpose("run", dim)
        for k, (key, members) in enumerate(groups):
            color = _COLORS[k % len(_COLORS)]
            values = np.asarray(curve.values[members], dtype=np.float64)
            _band(ax, np.asarray(curve[dim].values), values, color, comparison.label(key))
        ax.set(xlabel=dim, title=name if tap is None else f"{name} ({tap})")
    for ax, tap in zip(axes[len(panels) : total], plane_taps, strict=True):
        assert plane is not None
        xt = plane["I_XT"].sel(tap=tap).transpose("run", "epoch").values
        ty = plane["I_TY"].sel(tap=tap).transpose("run", "epoch").values
        for k, (key, members) in enumerate(groups):
            color = _COLORS[k % len(_COLORS)]
            x, y = np.nanmean(xt[members], axis=0), np.nanmean(ty[members], axis=0)
            ax.plot(x, y, color=color, marker="o", ms=3, label=comparison.label(key))
            ax.plot(x[-1:], y[-1:], color=color, marker="*", ms=10)  # the last epoch
        unit = plane.attrs.get("unit", "")
        ax.set(xlabel=f"I(X;T) {unit}".strip(), ylabel=f"I(T;Y) {unit}".strip(),
               title=f"information plane ({tap}), mean over seeds")  # fmt: skip
    axes[0].legend(fontsize="small")
    return _save(figure, path)


def _taps(curve: xr.DataArray) -> list[Any]:
    return [None] if "tap" not in curve.dims else [str(t) for t in curve["tap"].values]


# ------------------------------------------------------------------ a sweep's report
def report_sweep(
    folder: str | Path,
    out_dir: str | Path | None = None,
    by: Sequence[str] = ("plugin", "coefficient"),
) -> list[Path]:
    """The report of a sweep's folder: its groups compared, linked from ``index.md``.

    Writes to ``out_dir`` (default ``FOLDER/report``): ``metrics.png`` (every epoch
    metric over the epochs, one colour per group), ``information_plane_<name>.png`` per
    analysis group of the cells (``I_TY`` per tap and the trajectories),
    ``comparison.md`` (mean ± std over seeds at the last epoch) and ``index.md``
    linking them and the sweep's ``summary.md``.

    Returns:
        The paths written, ``index.md`` last.
    """
    folder = Path(folder)
    out = Path(out_dir) if out_dir is not None else folder / "report"
    data = open_runs(folder, "metrics")
    epoch = [n for n in _metrics_names(data) if data[n].dims == ("run", "epoch")]
    metrics = sorted(epoch, key=lambda n: (not n.startswith("test."), n))
    analyses = _analysis_names(find_runs(folder), None)
    names = ["metrics.png", *(f"information_plane_{_safe(a)}.png" for a in analyses)]
    _check_out(out, names)  # before anything is written
    comparison, written = compare(folder, metrics, by=by, out=out / "metrics.png")
    for name in analyses:
        written += compare(folder, ["I_TY"], by, analysis=name,
                           out=out / f"information_plane_{_safe(name)}.png")[1]  # fmt: skip
    table = out / "comparison.md"
    table.write_text(comparison.to_markdown(), encoding="utf-8")
    lines = [f"# Sweep {folder.name}", ""]
    if (folder / "summary.md").is_file():
        lines += [f"Summary of the sweep: [summary.md]({Path('..') / 'summary.md'})", ""]
    lines += ["## Groups at the last epoch (mean ± std over seeds)", "", table.read_text(), ""]
    lines += [f"![{p.stem}]({p.name})\n" for p in written]
    index = out / "index.md"
    index.write_text("\n".join(lines), encoding="utf-8")
    return [*written, table, index]
