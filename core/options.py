"""Validation of per-plugin options against the plugin's attrs ``Config`` class.

Options arrive from Python (``Session(options=...)``), the CLI (``--option
shade.beta=0.1``) or a TOML file; all three go through :func:`build_config`,
so an unknown option or a value of the wrong type fails the same way,
naming the plugin, the option, the expected type and the fix.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from collections.abc import Mapping
from typing import Any

import attrs

from infoshape.errors import PluginLoadError
from infoshape.syntax import option_syntax

__all__ = ["build_config", "config_as_dict", "describe_type", "with_defaults"]


def describe_type(tp: Any) -> str:
    """A short readable name of a type annotation (``float``, ``'exp' | 'sigmoid'``)."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(describe_type(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else describe_type(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', origin)}[{args}]"
    return getattr(tp, "__name__", str(tp))


def _conform(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check ``value`` against annotation ``tp``; return (ok, value converted where lossless)."""
    if tp is Any or tp is None or isinstance(tp, str):
        return True, value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return value in args, value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, converted = _conform(value, arg)
            if ok:
                return True, converted
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False, value
        item_types = [args[0]] * len(value) if (len(args) == 2 and args[1] is Ellipsis) else args
        if args and len(item_types) != len(value):
            return False, value
        items = []
        for item, item_tp in zip(value, item_types or [Any] * len(value), strict=True):
            ok, converted = _conform(item, item_tp)
            if not ok:
                return False, value
            items.append(converted)
        return True, (list if origin is list else tuple)(items)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, Mapping), value
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value


def build_config(plugin: str, config_cls: type | None, options: Mapping[str, Any] | None) -> Any:
    """Build the plugin's config instance from user options.

    Args:
        plugin: the plugin's name (for messages).
        config_cls: the plugin's ``Config`` attrs class, or None if it takes no options.
        options: option name to value.

    Raises:
        PluginLoadError: for an unknown option (listing the valid ones), a value of the
            wrong type, or a value a validator refuses.
    """
    options = dict(options or {})
    if config_cls is None:
        if options:
            raise PluginLoadError(
                plugin,
                "takes no options",
                got=", ".join(sorted(options)),
                fix=f"remove the options given to {plugin!r}",
            )
        return None
    attrs.resolve_types(config_cls)
    fields = {f.alias or f.name: f for f in attrs.fields(config_cls) if f.init}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise PluginLoadError(
            plugin,
            f"unknown option {', '.join(map(repr, unknown))}",
            expected=f"options among: {', '.join(sorted(fields)) or '(none)'}",
            got=", ".join(f"{k}={options[k]!r}" for k in unknown),
            fix="correct the option's spelling (see `infoshape plugins --options`)",
        )
    for key, value in options.items():
        ok, options[key] = _conform(value, fields[key].type)
        choices = _choices(fields[key].type)
        if not ok and choices is not None:
            raise _not_a_choice(plugin, key, value, choices)
        if not ok:
            raise PluginLoadError(
                plugin,
                f"option {key!r} has the wrong type",
                expected=describe_type(fields[key].type),
                got=f"{value!r} ({type(value).__name__})",
                fix=f"give {key} a value of type {describe_type(fields[key].type)}",
            )
    try:
        return config_cls(**options)
    except (TypeError, ValueError) as err:
        if len(err.args) == 4 and isinstance(err.args[1], attrs.Attribute):  # attrs' in_()
            attribute, choices, value = err.args[1:]
            raise _not_a_choice(plugin, attribute.alias or attribute.name, value, choices) from err
        raise PluginLoadError(
            plugin,
            f"an option was refused: {err}",
            got=", ".join(f"{k}={v!r}" for k, v in options.items()),
            fix="see the plugin's documentation for the allowed range",
        ) from err


def _choices(tp: Any) -> tuple[Any, ...] | None:
    """The values a ``Literal`` annotation (or an optional one) allows; None for other types."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Literal:
        return args
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        parts = [_choices(a) if a is not type(None) else (None,) for a in args]
        return None if None in parts else tuple(v for part in parts for v in part)  # type: ignore[union-attr]
    return None


def _not_a_choice(plugin: str, key: str, value: Any, choices: Any) -> PluginLoadError:
    allowed = ", ".join(map(repr, choices))
    return PluginLoadError(
        plugin,
        f"option {key!r} is not one of {allowed}",
        expected=f"one of {allowed}",
        got=repr(value),
        fix=f"choose one of them, e.g. {option_syntax(plugin, key, choices[0])}",
    )


def config_as_dict(config: Any) -> dict[str, Any]:
    """A config instance as a JSON-friendly dict (for the run manifest)."""
    if config is None:
        return {}

    def _plain(_inst: Any, _field: Any, value: Any) -> Any:
        if isinstance(value, (str, int, float, bool, type(None), list, tuple, dict)):
            return value
        return repr(value)

    return attrs.asdict(config, value_serializer=_plain)


def with_defaults(config: type, name: str, **defaults: Any) -> type:
    """A subclass ``name`` of the attrs class ``config`` whose fields take other defaults.

    For plugins that share one options class but not its defaults (the Choi–Rhee
    regularizers' ``coefficient``): each field keeps its type, validator and converter.
    """
    import attr

    fields = attrs.fields_dict(config)
    these = {
        key: attr.ib(
            default=value,
            validator=fields[key].validator,
            converter=fields[key].converter,
            type=fields[key].type,
        )
        for key, value in defaults.items()
    }
    cls = attrs.make_class(name, these, bases=(config,), frozen=True, kw_only=True, slots=True)
    changed = ", ".join(f"``{k}`` = {v!r}" for k, v in defaults.items())
    cls.__doc__ = f"The options of :class:`{config.__name__}`, with default {changed}."
    cls.__module__ = config.__module__
    cls.__qualname__ = name
    return cls
