"""Loading plugins from the ``infoshape.plugins`` entry-point group.

There is no global plugin manager: each :class:`~infoshape.Session` builds its
own with the plugins it enables, and registry look-ups build one with every
installed plugin. First-party plugins are entry points like any other.

A plugin the user asked for that fails to load raises :class:`PluginLoadError`
naming the plugin, the cause and the fix; an unrelated broken entry point only
warns (as xarray's backend loader does).
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata as metadata
import inspect
import types
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import pluggy

from infoshape import hookspecs
from infoshape.errors import PluginLoadError, raised_at

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "PluginManager",
    "build_plugin_manager",
    "installed_plugins",
    "plugin_name",
]

ENTRY_POINT_GROUP = "infoshape.plugins"
_HOOK_NAMES = [n for n in dir(hookspecs) if n.startswith("infoshape_")]


@attrs.frozen(kw_only=True)
class PluginInfo:
    """What is known of one registered plugin.

    Attributes:
        name: entry-point name (or the object's ``name``).
        plugin: the registered object (a module or an instance).
        version: version of the distribution that provides it, or ``"unknown"``.
        source: ``"entry point <value>"`` or ``"object"``.
        distribution: the distribution's name, or ``None`` for a plain object.
    """

    name: str
    plugin: Any
    version: str
    source: str
    distribution: str | None = None

    @property
    def hooks(self) -> list[str]:
        """Names of the hooks the plugin implements."""
        return sorted(n for n in _HOOK_NAMES if callable(getattr(self.plugin, n, None)))


class PluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers each plugin's :class:`PluginInfo`."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}

    def register_info(self, info: PluginInfo) -> None:
        """Register ``info.plugin`` under ``info.name`` and validate its hooks."""
        if info.name in self.infos:
            raise PluginLoadError(
                info.name,
                "is enabled twice",
                fix="list each plugin once",
            )
        _check_hook_names(info)
        try:
            self.register(info.plugin, name=info.name)
        except pluggy.PluginValidationError as err:
            raise PluginLoadError(
                info.name,
                f"a hook does not match its specification: {err}",
                expected="hook arguments that are a subset of the specification's",
                fix="see `infoshape.hookspecs` for each hook's arguments",
            ) from err
        self.infos[info.name] = info


def _check_hook_names(info: PluginInfo) -> None:
    """Refuse ``infoshape_*`` attributes that are no hook (a misspelled hook name)."""
    for attr in dir(info.plugin):
        if attr.startswith("infoshape_") and attr not in _HOOK_NAMES:
            close = difflib.get_close_matches(attr, _HOOK_NAMES, n=1, cutoff=0.6)
            raise PluginLoadError(
                info.name,
                f"defines {attr!r}, which is no infoshape hook",
                expected="hook names from infoshape.hookspecs",
                got=attr,
                fix=f"rename it to {close[0]!r}" if close else "remove it or rename it",
            )


def plugin_name(plugin: Any) -> str:
    """The name a plugin object is registered under.

    Its ``name`` attribute if it has one, else the module's last dotted part,
    else the class name in lower case.
    """
    name = getattr(plugin, "name", None)
    if isinstance(name, str) and name:
        return name
    if isinstance(plugin, types.ModuleType):
        return plugin.__name__.rsplit(".", 1)[-1]
    cls = plugin if inspect.isclass(plugin) else type(plugin)
    return cls.__name__.lower()


@functools.cache
def _package_distributions() -> Mapping[str, list[str]]:
    """Top-level import names to distributions (cached: it reads every RECORD file)."""
    return metadata.packages_distributions()


def _object_version(plugin: Any) -> tuple[str, str | None]:
    module = plugin if isinstance(plugin, types.ModuleType) else inspect.getmodule(plugin)
    top = (getattr(module, "__name__", "") or "").split(".", 1)[0]
    for dist in _package_distributions().get(top, []):
        return metadata.version(dist), dist
    return str(getattr(plugin, "__version__", "unknown")), None


def _instantiate(name: str, loaded: Any) -> Any:
    """Classes become one instance per manager (per session); modules/instances stay."""
    if not inspect.isclass(loaded):
        return loaded
    try:
        return loaded()
    except Exception as err:
        raise PluginLoadError(
            name,
            f"its class {loaded.__name__} cannot be instantiated without arguments: {err!r}",
            fix="give the plugin class a constructor without required arguments; "
            "options belong in its Config class",
        ) from err


def installed_plugins() -> dict[str, metadata.EntryPoint]:
    """The entry points of the ``infoshape.plugins`` group by name."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _load_entry_point(ep: metadata.EntryPoint) -> PluginInfo:
    try:
        loaded = ep.load()
    except ImportError as err:
        missing = getattr(err, "name", None) or ""
        own_module = ep.module == missing or ep.module.startswith(missing + ".")
        dist = ep.dist.name if ep.dist else "the plugin's distribution"
        raise PluginLoadError(
            ep.name,
            f"its entry point {ep.value!r} cannot be imported: {err}",
            fix=(
                f"install the missing package ({missing!r}) or uninstall {dist}"
                if missing and not own_module
                else f"the entry point names a module that does not exist: correct it in "
                f"{dist}'s pyproject.toml and reinstall"
            ),
        ) from err
    except Exception as err:
        raise PluginLoadError(
            ep.name,
            f"importing its entry point {ep.value!r} raised {err!r}",
            got=f"{type(err).__name__} raised in {raised_at(err)}",
            fix="fix the plugin module there, or uninstall the plugin",
        ) from err
    return PluginInfo(
        name=ep.name,
        plugin=_instantiate(ep.name, loaded),
        version=ep.dist.version if ep.dist else "unknown",
        source=f"entry point {ep.value}",
        distribution=ep.dist.name if ep.dist else None,
    )


def _info_for_object(plugin: Any) -> PluginInfo:
    name = plugin_name(plugin)
    version, dist = _object_version(plugin)
    return PluginInfo(
        name=name,
        plugin=_instantiate(name, plugin),
        version=version,
        source="object",
        distribution=dist,
    )


def build_plugin_manager(
    enable: Iterable[str | Any] | None = None, disable: Sequence[str] = ()
) -> PluginManager:
    """Build a plugin manager.

    Args:
        enable: entry-point names and plugin objects (modules, classes, instances) to
            register, in order. ``None`` registers every installed entry point; then a
            broken one warns and is skipped.
        disable: entry-point names never to register.

    Raises:
        PluginLoadError: a requested plugin is not installed, cannot be imported,
            misnames a hook or registers twice.
    """
    manager = PluginManager()
    available = installed_plugins()
    if enable is None:
        for name, ep in sorted(available.items()):
            if name in disable:
                continue
            try:
                manager.register_info(_load_entry_point(ep))
            except PluginLoadError as err:
                warnings.warn(f"skipping a broken plugin: {err}", RuntimeWarning, stacklevel=2)
    else:
        for item in enable:
            if isinstance(item, str):
                if item in disable:
                    continue
                if item not in available:
                    close = difflib.get_close_matches(item, list(available), n=3, cutoff=0.5)
                    raise PluginLoadError(
                        item,
                        "is not installed",
                        expected=f"one of {', '.join(sorted(available)) or '(none)'}",
                        got=repr(item),
                        fix=(
                            f"did you mean {', '.join(map(repr, close))}?"
                            if close
                            else "pip install the package that provides it; "
                            "`infoshape plugins` lists what is installed"
                        ),
                    )
                manager.register_info(_load_entry_point(available[item]))
            else:
                manager.register_info(_info_for_object(item))
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as err:
        raise PluginLoadError(
            (getattr(err, "plugin", None) and manager.get_name(err.plugin)) or "?",
            f"unknown hook: {err}",
            fix="rename the hook to one in infoshape.hookspecs",
        ) from err
    return manager
