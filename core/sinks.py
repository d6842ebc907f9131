"""Metric sinks: where emitted metrics go besides the store.

A sink is any object with ``write(stage, index, metrics)`` and ``close()``.
The session sends every metric of a step (``stage="step"``, ``index`` the
global step) or of an epoch (``stage="epoch"``, ``index`` the epoch) to every
sink. First-party sinks are offered by the ``csv`` and ``tensorboard``
plugins through ``infoshape_sinks``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from infoshape.errors import ConfigError

__all__ = ["CSVSink", "MetricSink", "TensorBoardSink"]


@runtime_checkable
class MetricSink(Protocol):
    """What the session needs of a metric sink."""

    def write(self, stage: str, index: int, metrics: Mapping[str, Any]) -> None:
        """Record ``metrics`` (name to float or numpy array) of step or epoch ``index``."""

    def close(self) -> None:
        """Flush and release the sink."""


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
