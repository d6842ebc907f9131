"""infoshape: capture neural-network representations to measure and regularize information.

The public API::

    import infoshape
    with infoshape.Session(model, plugins=["csv"], store="runs/a.zarr") as s: ...
    tree = infoshape.open_store("runs/a.zarr")

Plugins implement the hooks of :mod:`infoshape.hookspecs`, marked with
:data:`infoshape.hookimpl`, and register under the ``infoshape.plugins``
entry-point group.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from infoshape.errors import (
    CaptureError,
    ConfigError,
    DatasetNotFoundError,
    EstimatorAssumptionWarning,
    InfoshapeError,
    InfoshapeWarning,
    NonFiniteError,
    PluginError,
    PluginHookError,
    PluginLoadError,
    StoreError,
    StoreWriteError,
    TapError,
    UnknownNameError,
)

try:
    __version__ = version("infoshape")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

# Public names are imported on first use (PEP 562), so that `infoshape --help`
# and `import infoshape.errors` do not pay for torch, xarray and dask.
_LAZY = {
    "Tap": "infoshape.capture",
    "hookimpl": "infoshape.hookspecs",
    "Penalty": "infoshape.objective",
    "build_plugin_manager": "infoshape.plugin_manager",
    "Probe": "infoshape.probe",
    "DatasetSpec": "infoshape.registry",
    "Estimator": "infoshape.registry",
    "get_dataset": "infoshape.registry",
    "get_estimator": "infoshape.registry",
    "list_datasets": "infoshape.registry",
    "list_estimators": "infoshape.registry",
    "Session": "infoshape.session",
    "open_store": "infoshape.store.read",
}

if TYPE_CHECKING:
    from infoshape.capture import Tap
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
    from infoshape.store.read import open_store


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'infoshape' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CaptureError",
    "ConfigError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "Estimator",
    "EstimatorAssumptionWarning",
    "InfoshapeError",
    "InfoshapeWarning",
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
