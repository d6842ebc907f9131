"""The ``csv`` and ``tensorboard`` plugins: metric sinks beside the store.

A sink is any :class:`~infoshape.hookspecs.MetricSink` (``write(stage, index, metrics)``
and ``close()``); these two plugins offer theirs through ``infoshape_sinks``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from infoshape.errors import ConfigError
from infoshape.hookspecs import hookimpl
from infoshape.plugin import Plugin

__all__ = ["CSVSink", "CSVSinkPlugin", "TensorBoardSink", "TensorBoardSinkPlugin"]


class CSVSink:
    """Scalar metrics as a long-format CSV: ``stage,index,name,value`` a row.

    Long format keeps the file valid when a metric first appears mid-run.
    Array metrics are skipped (they go to the store). The file is flushed at
    each epoch so a killed run keeps its completed epochs.
    """

    header = ("stage", "index", "name", "value")

    def __init__(self, path: str | Path, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not (append and self.path.exists())
        self._file = self.path.open("w" if new else "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(self.header)

    def write(self, stage: str, index: int, metrics: Mapping[str, Any]) -> None:
        """Append one row per scalar metric."""
        for name, value in metrics.items():
            if np.ndim(value) == 0:
                self._writer.writerow((stage, index, name, repr(float(value))))
        if stage == "epoch":
            self._file.flush()

    def close(self) -> None:
        """Close the file."""
        if not self._file.closed:
            self._file.close()


class TensorBoardSink:
    """Metrics as TensorBoard scalars (and histograms for array metrics).

    Needs the ``tensorboard`` package (``pip install infoshape[tensorboard]``).
    Step metrics use the global step as x; epoch metrics go under ``epoch/``.
    """

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ConfigError(
                "the tensorboard sink needs the tensorboard package",
                expected="tensorboard importable",
                got=str(err),
                fix="pip install 'infoshape[tensorboard]', or drop the tensorboard plugin",
            ) from err
        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def write(self, stage: str, index: int, metrics: Mapping[str, Any]) -> None:
        """Write scalars, and histograms of finite array values."""
        prefix = "epoch/" if stage == "epoch" else ""
        for name, value in metrics.items():
            tag = prefix + name.replace(".", "/")
            if np.ndim(value) == 0:
                if math.isfinite(float(value)):
                    self._writer.add_scalar(tag, float(value), index)
            else:
                values = np.asarray(value, dtype=np.float64).ravel()
                values = values[np.isfinite(values)]
                if values.size:
                    self._writer.add_histogram(tag, values, index)
        if stage == "epoch":
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()


def _beside_store(session: Any, suffix: str) -> Path:
    store = session.store
    if store is not None:
        return store.path.with_name(store.path.stem + suffix)
    return Path("runs") / f"infoshape{suffix}"


class CSVSinkPlugin(Plugin):
    """Writes every scalar metric to a long-format CSV file (``stage,index,name,value``)."""

    name = "csv"

    @attrs.frozen(kw_only=True)
    class Config:
        """Options of the ``csv`` plugin.

        Attributes:
            path: the CSV file; default ``<store stem>.metrics.csv`` beside the store.
            append: append to an existing file instead of replacing it.
        """

        path: str | None = None
        append: bool = False

    @hookimpl
    def infoshape_sinks(self, session: Any) -> list[CSVSink]:
        """One CSV sink."""
        config = self.config
        path = Path(config.path) if config.path else _beside_store(session, ".metrics.csv")
        return [CSVSink(path, append=config.append)]


class TensorBoardSinkPlugin(Plugin):
    """Writes every metric to TensorBoard event files (needs the tensorboard package)."""

    name = "tensorboard"

    @attrs.frozen(kw_only=True)
    class Config:
        """Options of the ``tensorboard`` plugin.

        Attributes:
            log_dir: the event-file folder; default ``<store stem>.tb`` beside the store.
        """

        log_dir: str | None = None

    @hookimpl
    def infoshape_sinks(self, session: Any) -> list[TensorBoardSink]:
        """One TensorBoard sink."""
        config = self.config
        log_dir = Path(config.log_dir) if config.log_dir else _beside_store(session, ".tb")
        return [TensorBoardSink(log_dir)]
