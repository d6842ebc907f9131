"""A base class for estimator plugins: registry entry plus optional per-layer epoch metrics.

An estimator plugin registers one :class:`~infoshape.Estimator` and, when the
user lists ``layers`` in its options, taps those modules and emits
``<plugin>.<capture>.<quantity>`` on the probe set at each epoch end::

    class Binning(EstimatorPlugin):
        name = "binning"
        estimator = Estimator(name="binning", function=..., information_plane=...)

        @attrs.frozen(kw_only=True)
        class Config:
            n_bins: int = 30
            layers: tuple[str, ...] = ()

        def layer_metrics(self, t, labels):
            return {"I_TX": ..., "I_TY": ...}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import torch

from infoshape.capture import Tap
from infoshape.hookspecs import hookimpl
from infoshape.registry import Estimator

__all__ = ["EstimatorPlugin"]


class EstimatorPlugin:
    """Registers :attr:`estimator`; taps ``Config.layers`` and reports :meth:`layer_metrics`.

    Subclasses set ``name``, ``estimator`` and a ``Config`` attrs class (with a
    ``layers: tuple[str, ...]`` field to offer epoch metrics), and override
    :meth:`layer_metrics`.
    """

    name: ClassVar[str]
    estimator: ClassVar[Estimator]

    @attrs.frozen(kw_only=True)
    class Config:
        """No options."""

    def __init__(self) -> None:
        self.config = self.Config()
        self.taps: list[Tap] = []

    @hookimpl
    def infoshape_configure(self, config: Any) -> None:
        """Keep the validated options."""
        self.config = config

    @hookimpl
    def infoshape_taps(self, session) -> list[Tap]:
        """One tap per module glob in the ``layers`` option."""
        self.taps = [Tap(glob) for glob in getattr(self.config, "layers", ())]
        return self.taps

    @hookimpl
    def infoshape_metrics(self, session, captures, targets, stage) -> dict[str, float]:
        """:meth:`layer_metrics` of each tapped layer on the probe set (epoch stage only)."""
        if stage != "epoch" or not self.taps or not captures or targets is None:
            return {}
        metrics: dict[str, float] = {}
        names = dict.fromkeys(n for tap in self.taps for n in session.capture_names(tap))
        with torch.no_grad():
            for name in names:
                for key, value in self.layer_metrics(captures[name], targets).items():
                    metrics[f"{self.name}.{name}.{key}"] = float(value)
        return metrics

    def layer_metrics(self, t: torch.Tensor, labels: torch.Tensor) -> Mapping[str, Any]:
        """Quantities of one layer's probe representation ``t`` (default: none)."""
        return {}

    @hookimpl
    def infoshape_estimators(self) -> list[Estimator]:
        """The plugin's estimator."""
        return [self.estimator]
