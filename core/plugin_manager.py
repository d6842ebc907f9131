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
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from infoshape import hookspecs
from infoshape.errors import PluginLoadError, TapError, raised_at
from infoshape.hooks import HOOK_NAMES
from infoshape.options import build_config
from infoshape.syntax import option_syntax, plugin_syntax

if TYPE_CHECKING:
    from torch import nn

    from infoshape.capture import Tap

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "PluginManager",
    "build_plugin_manager",
    "installed_plugins",
    "plugin_configs",
    "plugin_name",
    "plugin_taps",
]

ENTRY_POINT_GROUP = "infoshape.plugins"


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
        return sorted(n for n in HOOK_NAMES if callable(getattr(self.plugin, n, None)))


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
        _refuse_wrappers(self, info)
        self.infos[info.name] = info


def _refuse_wrappers(manager: PluginManager, info: PluginInfo) -> None:
    """Unregister ``info.plugin`` and refuse it when a hook is a pluggy hook wrapper."""
    for caller in manager.get_hookcallers(info.plugin) or []:
        for impl in caller.get_hookimpls():
            if impl.plugin is info.plugin and (impl.wrapper or impl.hookwrapper):
                manager.unregister(info.plugin)
                flag = "wrapper=True" if impl.wrapper else "hookwrapper=True"
                raise PluginLoadError(
                    info.name,
                    f"its hook {caller.name} is a hook wrapper ({flag})",
                    expected="plain hook implementations: infoshape calls each implementation "
                    "itself; wrappers are not supported",
                    got=f"@hookimpl({flag}) on {caller.name}",
                    fix="return a value instead: drop the wrapper flag and the yield",
                )


def _check_hook_names(info: PluginInfo) -> None:
    """Refuse ``infoshape_*`` attributes that are no hook (a misspelled hook name)."""
    for attr in dir(info.plugin):
        if attr.startswith("infoshape_") and attr not in HOOK_NAMES:
            close = difflib.get_close_matches(attr, HOOK_NAMES, n=1, cutoff=0.6)
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


def plugin_configs(
    plugins: Mapping[str, PluginInfo], options: Mapping[str, Mapping[str, Any] | None]
) -> dict[str, Any]:
    """Each enabled plugin's ``Config`` instance, built from its ``options``.

    Raises:
        PluginLoadError: options for a plugin that is not enabled, or an invalid option
            (:func:`infoshape.options.build_config`).
    """
    unknown = sorted(set(options) - set(plugins))
    if unknown:
        raise PluginLoadError(
            unknown[0],
            "has options but is not enabled",
            expected=f"options only for enabled plugins: {', '.join(plugins) or '(none)'}",
            got=", ".join(unknown),
            fix=f"enable it ({plugin_syntax(unknown[0])}) or remove its options",
        )
    return {
        name: build_config(name, getattr(info.plugin, "Config", None), options.get(name))
        for name, info in plugins.items()
    }


def plugin_taps(plugin: str, taps: list[Tap], module: nn.Module, config: Any) -> list[Tap]:
    """``plugin``'s taps, each matching a module of ``module``.

    Raises:
        TapError: a tap matches no module; it names the plugin and, when its ``Config``
            has a ``layers`` option (``config``), how to set it.
    """
    for tap in taps:
        try:
            tap.select(module)
        except TapError as err:
            layers = attrs.has(type(config)) and "layers" in attrs.fields_dict(type(config))
            names = [n for n, _ in module.named_modules() if n]
            example = option_syntax(plugin, "layers", names[-1:])
            fix = f"name the modules to tap: {example}, " if layers else ""
            raise TapError(
                f"plugin {plugin!r}: {err.problem}",
                expected=f"a module of the model for plugin {plugin!r} to tap",
                got=f"modules {', '.join(names[:20]) or '(none)'}",
                fix=f"{fix}or disable {plugin!r} for this model",
            ) from err
    return taps
