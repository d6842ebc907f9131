"""The summary of a sweep: per group, mean ± std over seeds, read back from the cells' stores.

:func:`summarize` reads ``OUT/sweep.json`` (written by :func:`infoshape.apps.sweep.run_sweep`) and
every complete cell's store; :class:`Summary` writes ``summary.md`` and ``summary.csv`` and
lists the cells that are not complete (failed, interrupted, missing) with their errors.

The columns: ``test_error`` (%, from ``test.accuracy``), then every epoch metric of the
sweep's measured plugins (``[sweep] measure``, kept in ``sweep.json``): the metrics named
``<plugin>.*``, at the last epoch. With one measured plugin the names lose its prefix
(``relu5.sparsity``), and the layer too when every store measured one layer
(``sparsity``); with several they stay whole (``characteristics.relu5.sparsity``). A sweep
that measures nothing summarizes the test error alone.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from infoshape.errors import ConfigError
from infoshape.store import location

__all__ = ["Summary", "summarize"]


@attrs.frozen(kw_only=True)
class Summary:
    """Per group, mean and sample std over seeds of the test error and the measured metrics.

    Attributes:
        columns: metric names; ``"test_error"`` (%) first, then the measured plugins'
            epoch metrics (module docstring: ``amplitude``, or ``relu5.amplitude`` when
            several layers are measured, or ``characteristics.relu5.amplitude`` when
            several plugins are).
        rows: ``(group, n_seeds, {column: (mean, std)})``; std is NaN for one seed.
        values: ``{cell name: {column: value}}`` as read from each store.
        failed: ``(cell name, group, status, error)`` of every cell not complete:
            ``status`` is ``"failed"`` (with the error of its last run) or the store's state
            (``"missing"``, ``"running"`` for an interrupted run).
    """

    columns: tuple[str, ...]
    rows: tuple[tuple[str, int, dict[str, tuple[float, float]]], ...]
    values: dict[str, dict[str, float]]
    failed: tuple[tuple[str, str, str, str], ...] = ()

    def to_markdown(self, digits: int = 4) -> str:
        """A markdown table, ``mean ± std`` per cell."""

        def cell(mean: float, std: float) -> str:
            text = f"{mean:.{digits}g}"
            return text if math.isnan(std) else f"{text} ± {std:.2g}"

        head = ["configuration", "seeds", *self.columns]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for group, n, stats in self.rows:
            values = [cell(*stats[c]) if c in stats else "" for c in self.columns]
            lines.append("| " + " | ".join([group, str(n), *values]) + " |")
        if self.failed:
            lines += ["", "failed cells (not in the table above):", ""]
            lines += ["| cell | configuration | status | error |", "|---|---|---|---|"]
            for name, group, status, error in self.failed:
                error = error.replace("|", "\\|").replace("\n", " ")
                lines.append(f"| {name} | {group} | {status} | {error} |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """``configuration, seeds, <column>_mean, <column>_std, ...`` one row per group."""
        file = io.StringIO(newline="")
        writer = csv.writer(file)
        writer.writerow(
            [
                "configuration",
                "seeds",
                *(f"{c}_{s}" for c in self.columns for s in ("mean", "std")),
            ]
        )
        for group, n, stats in self.rows:
            numbers = [v for c in self.columns for v in stats.get(c, (math.nan, math.nan))]
            writer.writerow([group, n, *(f"{v:.10g}" for v in numbers)])
        return file.getvalue()

    def write_csv(self, path: str | Path) -> None:
        """Write :meth:`to_csv` to the file ``path``."""
        with Path(path).open("w", newline="", encoding="utf-8") as file:
            file.write(self.to_csv())


def _last_epoch_metrics(
    store: location.StorePath,
    measure: tuple[str, ...],
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """``test_error`` (%) and every epoch metric of the ``measure`` plugins, last epoch.

    With one measured plugin its prefix is dropped (``characteristics.relu5.sparsity`` ->
    ``relu5.sparsity``).
    """
    import numpy as np

    from infoshape.store.read import open_store

    metrics = open_store(store, storage_options=storage_options)["metrics"].to_dataset()
    if "epoch" not in metrics.dims or metrics.sizes["epoch"] == 0:
        return {}
    epochs = np.asarray(metrics["epoch"].values)
    last = metrics.isel(epoch=np.flatnonzero(epochs == epochs.max()))  # an epoch may log twice

    def value(name: str) -> float | None:
        data = np.asarray(last[name].values, dtype=np.float64)
        data = data[~np.isnan(data)]
        return float(data[-1]) if data.size else None

    out = {}
    if "test.accuracy" in last and (accuracy := value("test.accuracy")) is not None:
        out["test_error"] = 100.0 * (1.0 - accuracy)
    prefixes = tuple(f"{plugin}." for plugin in measure)
    for name in map(str, last.data_vars):
        measured = name.startswith(prefixes) and last[name].dims == ("epoch",)
        if measured and (found := value(name)) is not None:
            out[name.removeprefix(prefixes[0]) if len(prefixes) == 1 else name] = found
    return out


def _measured(manifest: Mapping[str, Any]) -> tuple[str, ...]:
    """The measured plugins recorded in ``sweep.json`` (``characteristics: true``: an old one)."""
    config = manifest.get("config", {})
    if "measure" in config:
        return tuple(config["measure"])
    return ("characteristics",) if config.get("characteristics", False) else ()


def _short_names(values: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Drop the layer from ``<layer>.<characteristic>`` when every store measured one layer."""
    layers = {k.rsplit(".", 1)[0] for v in values.values() for k in v if "." in k}
    if len(layers) != 1:
        return values
    return {cell: {k.rsplit(".", 1)[-1]: x for k, x in v.items()} for cell, v in values.items()}


def _read_manifest(out: str | Path, storage_options: Mapping[str, Any] | None) -> Any:
    """The parsed ``sweep.json`` of the sweep in ``out`` (a folder or a URL)."""
    manifest_path = location.join(out, "sweep.json")
    text = None
    if isinstance(manifest_path, Path):
        if manifest_path.is_file():
            text = manifest_path.read_text(encoding="utf-8")
    else:
        fs, inner = location.filesystem(manifest_path, storage_options)
        if fs.isfile(inner):
            text = fs.cat_file(inner).decode("utf-8")
    if text is None:
        raise ConfigError(
            f"no sweep in {out}",
            expected=f"{manifest_path} (written by infoshape sweep)",
            got="no such file",
            fix="run the sweep first, or pass its --out folder",
        )
    return json.loads(text)


def summarize(out: str | Path, storage_options: Mapping[str, Any] | None = None) -> Summary:
    """The summary of the sweep in ``out``, read from ``sweep.json`` and the complete stores.

    ``out`` may be an fsspec URL, reached with ``storage_options``.

    Raises:
        ConfigError: ``out`` holds no ``sweep.json``.
    """
    import numpy as np

    manifest = _read_manifest(out, storage_options)
    measure = _measured(manifest)
    cells, errors = manifest["cells"], manifest.get("failed", {})
    values: dict[str, dict[str, float]] = {}
    groups: dict[str, list[str]] = {}
    failed = []
    for cell in cells:
        store = location.normalize(cell["store"])
        there = location.exists(store, storage_options)
        status = (_store_status(store, storage_options) or "unreadable") if there else "missing"
        if status != "complete":
            error = errors.get(cell["name"], "")
            failed.append((cell["name"], cell["group"], "failed" if error else status, error))
            continue
        values[cell["name"]] = _last_epoch_metrics(store, measure, storage_options)
        groups.setdefault(cell["group"], []).append(cell["name"])
    values = _short_names(values) if len(measure) == 1 else values
    columns = list(dict.fromkeys(k for v in values.values() for k in v))
    columns = (["test_error"] if "test_error" in columns else []) + sorted(
        c for c in columns if c != "test_error"
    )
    rows = []
    for group, names in groups.items():
        stats = {}
        for column in columns:
            data = np.array([values[n][column] for n in names if column in values[n]])
            if data.size:
                std = float(data.std(ddof=1)) if data.size > 1 else math.nan
                stats[column] = (float(data.mean()), std)
        rows.append((group, len(names), stats))
    return Summary(columns=tuple(columns), rows=tuple(rows), values=values, failed=tuple(failed))


def _store_status(
    store: location.StorePath, storage_options: Mapping[str, Any] | None = None
) -> str | None:
    import zarr

    try:
        group = zarr.open_group(
            location.zarr_store(store, storage_options, read_only=True), mode="r"
        )
        return group.attrs.get("status")  # type: ignore[return-value]
    except Exception:
        return None
