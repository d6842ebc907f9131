"""infoshape-unitstats: per-unit activation statistics as infoshape metrics.

A third-party infoshape plugin, registered under the ``infoshape.plugins``
entry-point group as ``unit_stats``::

    with infoshape.Session(model, plugins=["unit_stats"]) as s:
        ...
        s.epoch_end(probe=(x_probe, y_probe))  # emits unit_stats.<capture>.* metrics
"""

from infoshape_unitstats.plugin import UnitStats, UnitStatsConfig
from infoshape_unitstats.stats import unit_statistics

__all__ = ["UnitStats", "UnitStatsConfig", "unit_statistics"]
__version__ = "0.1.0"
