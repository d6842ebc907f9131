"""infoshape: capture neural-network representations to measure and regularize information.

The public API::

    import infoshape
    with infoshape.Session(model, plugins=["csv"], store="runs/a.zarr") as s: ...
    tree = infoshape.open_store("runs/a.zarr")

Plugins implement the hooks of :mod:`infoshape.hookspecs`, marked with
:data:`infoshape.hookimpl`, and register under the ``infoshape.plugins``
entry-point group.
"""

from importlib.metadata import PackageNotFoundError, version

from infoshape.capture import Tap
from infoshape.errors import (
    CaptureError,
    ConfigError,
    DatasetNotFoundError,
    InfoshapeError,
    NonFiniteError,
    PluginError,
    PluginHookError,
    PluginLoadError,
    StoreError,
    StoreWriteError,
    TapError,
    UnknownNameError,
)
from infoshape.hookspecs import hookimpl
from infoshape.objective import Penalty
from infoshape.plugin_manager import build_plugin_manager
from infoshape.probe import Probe
from infoshape.registry import (
    DatasetSpec,
    Estimator,
    get_dataset,
    get_estimator,
    list_datasets,
    list_estimators,
)
from infoshape.session import Session
from infoshape.store import open_store

try:
    __version__ = version("infoshape")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "CaptureError",
    "ConfigError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "Estimator",
    "InfoshapeError",
    "NonFiniteError",
    "Penalty",
    "PluginError",
    "PluginHookError",
    "PluginLoadError",
    "Probe",
    "Session",
    "StoreError",
    "StoreWriteError",
    "Tap",
    "TapError",
    "UnknownNameError",
    "__version__",
    "build_plugin_manager",
    "get_dataset",
    "get_estimator",
    "hookimpl",
    "list_datasets",
    "list_estimators",
    "open_store",
]
