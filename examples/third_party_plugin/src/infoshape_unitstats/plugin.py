"""The ``unit_stats`` plugin: per-unit activation statistics of tapped layers as metrics."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import nn

import infoshape
from infoshape.options import satisfies
from infoshape_unitstats.stats import unit_statistics

__all__ = ["UnitStats", "UnitStatsConfig"]


_finite = satisfies(
    lambda value: not isinstance(value, bool) and math.isfinite(value),
    "a finite number such as 0.0",
    problem="must be a finite number",
    example=0.0,
)


@attrs.frozen(kw_only=True)
class UnitStatsConfig:
    """Options of the ``unit_stats`` plugin.

    Attributes:
        modules: glob over the model's module names to tap (``"features.*"``); ``None``
            taps the output of every ``torch.nn.ReLU`` module.
        dead_threshold: an entry is active when its value is ``> dead_threshold``.
        every_step: also emit the statistics of each training batch (``stage="step"``),
            not only of the probe set at each epoch end.
    """

    modules: str | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(
            attrs.validators.and_(attrs.validators.instance_of(str), attrs.validators.min_len(1))
        ),
    )
    dead_threshold: float = attrs.field(default=0.0, validator=_finite)
    every_step: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))


class UnitStats(infoshape.Plugin):
    """Emit ``unit_stats.<capture>.{active_fraction, dead_units, mean, unit_mean}`` metrics.

    The statistics are computed on the probe set at each ``epoch_end`` (and on each
    training batch with ``every_step=True``); see :func:`unit_statistics`.
    """

    name = "unit_stats"
    Config = UnitStatsConfig

    def __init__(self) -> None:
        super().__init__()  # self.config: the validated options (the defaults until then)
        self.tap: infoshape.Tap | None = None

    @infoshape.hookimpl
    def infoshape_taps(self) -> list[infoshape.Tap]:
        """One tap: the glob of ``modules``, or every ``nn.ReLU``."""
        self.tap = infoshape.Tap(self.config.modules or nn.ReLU)
        return [self.tap]

    @infoshape.hookimpl
    def infoshape_metrics(
        self, session: infoshape.Session, captures: Mapping[str, torch.Tensor], stage: str
    ) -> dict[str, Any]:
        """The statistics of each tapped capture present (none without a probe set)."""
        if self.tap is None or (stage == "step" and not self.config.every_step):
            return {}
        metrics: dict[str, Any] = {}
        for name in session.capture_names(self.tap):
            x = captures.get(name)
            if x is None or x.ndim == 0 or x.shape[0] == 0:
                continue
            for key, value in unit_statistics(x, self.config.dead_threshold).items():
                metrics[f"unit_stats.{name}.{key}"] = value
        return metrics
