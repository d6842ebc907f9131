"""infoshape: capture neural-network representations to measure and regularize information.

The public API::

    import infoshape
    with infoshape.Session(model, plugins=["csv"], store="runs/a.zarr") as s: ...
    tree = infoshape.open_store("runs/a.zarr")

Plugins implement the hooks of :mod:`infoshape.hookspecs`, marked with
:data:`infoshape.hookimpl`, and register under the ``infoshape.plugins``
entry-point group.
"""

import importlib.abc
import importlib.util
import sys
from importlib import import_module
from importlib.machinery import ModuleSpec
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
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
    RunInterrupted,
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
    "Stream": "infoshape.capture",
    "Tap": "infoshape.capture",
    "hookimpl": "infoshape.hookspecs",
    "Penalty": "infoshape.objective",
    "Plugin": "infoshape.plugin",
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
    "open_runs": "infoshape.apps.runs",
}

if TYPE_CHECKING:
    from infoshape.capture import Stream, Tap
    from infoshape.hookspecs import hookimpl
    from infoshape.objective import Penalty
    from infoshape.plugin import Plugin
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


#: Modules that moved into a subpackage, by their old path. ``import infoshape.trainer`` gives
#: the module ``infoshape.apps.trainer`` itself (one module object, whichever path imported it
#: first), so code written against the flat layout goes on working; the repository's own code
#: uses the new paths (tests/meta/test_layout.py).
_MOVED = {
    "infoshape.analysis": "infoshape.apps.analysis",
    "infoshape.checkpoint": "infoshape.store.checkpoint",
    "infoshape.cli": "infoshape.apps.cli",
    "infoshape.lightning": "infoshape.apps.lightning",
    "infoshape.models": "infoshape.apps.models",
    "infoshape.report": "infoshape.apps.report",
    "infoshape.sweep": "infoshape.apps.sweep",
    "infoshape.trainer": "infoshape.apps.trainer",
    "infoshape.linalg": "infoshape.math.linalg",
    "infoshape.matrix_entropy": "infoshape.math.matrix_entropy",
    "infoshape.conformance": "infoshape.testing.conformance",
    "infoshape.plugin_tester": "infoshape.testing.plugin_tester",
    # documented at this path before ION moved beside the Choi–Rhee plugins (a path, no import)
    "infoshape.ion": "infoshape.plugins.choi_rhee.ion",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports a module of ``_MOVED`` under its old path (``python -m`` included)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        """A spec for an old path, None for any other name."""
        if fullname not in _MOVED:
            return None
        moved = importlib.util.find_spec(_MOVED[fullname])
        return ModuleSpec(fullname, self, origin=moved.origin if moved else None)

    def exec_module(self, module: ModuleType) -> None:
        """Put the module of the new path in ``sys.modules`` under the old one."""
        sys.modules[module.__name__] = import_module(_MOVED[module.__name__])

    def get_code(self, fullname: str) -> Any:
        """The new module's code, for ``python -m <old path>``."""
        moved = importlib.util.find_spec(_MOVED[fullname])
        return moved.loader.get_code(_MOVED[fullname])  # type: ignore[union-attr]


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())


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
    "Plugin",
    "PluginError",
    "PluginHookError",
    "PluginLoadError",
    "Probe",
    "RunInterrupted",
    "Session",
    "StoreError",
    "StoreWriteError",
    "Stream",
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
    "open_runs",
    "open_store",
]
