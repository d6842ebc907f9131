"""The ``shade`` plugin (moved; split in the next commit)."""

from infoshape.plugins.shade.plugin import *  # noqa: F403
from infoshape.plugins.shade.plugin import __all__  # noqa: F401
