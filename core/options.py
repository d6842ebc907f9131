"""Validation of per-plugin options against the plugin's attrs ``Config`` class.

Options arrive from Python (``Session(options=...)``), the CLI (``--option
shade.beta=0.1``) or a TOML file; all three go through :func:`build_config`,
so an unknown option or a value of the wrong type fails the same way,
naming the plugin, the option, the expected type and the fix.

The validators a ``Config`` field uses are the small factories of this module
(:func:`positive`, :func:`non_negative`, :func:`at_least`, :func:`in_range`,
:func:`one_of`, :func:`satisfies`): each raises :class:`~infoshape.errors.ConfigError`
naming the option, what it expected, what it got and a fix, and :func:`build_config`
turns that into the plugin's :class:`~infoshape.errors.PluginLoadError` with the fix
written in the user's syntax::

    @attrs.frozen(kw_only=True)
    class Config:
        beta: float = attrs.field(default=1e-3, validator=non_negative())
        decay: float = attrs.field(default=0.8, validator=in_range(0.0, 1.0, example=0.8))
        p_z: str = attrs.field(default="exp", validator=one_of("exp", "sigmoid"))
"""

from __future__ import annotations

import collections.abc
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from infoshape.errors import ConfigError, PluginLoadError
from infoshape.syntax import option_syntax

__all__ = [
    "at_least",
    "build_config",
    "config_as_dict",
    "describe_type",
    "in_range",
    "non_negative",
    "one_of",
    "positive",
    "satisfies",
    "with_defaults",
]

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _refusal(
    attribute: attrs.Attribute,
    value: Any,
    problem: str,
    expected: str,
    fix: str | None = None,
    example: Any = None,
) -> ConfigError:
    """A :class:`ConfigError` naming the option (``option``, ``example`` kept as attributes)."""
    name = attribute.alias or attribute.name
    if fix is None and example is not None:
        fix = f"e.g. {name}={example!r}"
    err = ConfigError(
        f"option {name!r} {problem}",
        expected=f"{name}: {expected}",
        got=f"{name}={value!r}",
        fix=fix if fix is not None else f"give {name} a value {expected}",
    )
    err.option, err.value, err.example = name, value, example  # type: ignore[attr-defined]
    return err


def satisfies(
    predicate: Callable[[Any], bool],
    expected: str,
    *,
    problem: str = "is refused",
    fix: str | None = None,
    example: Any = None,
    optional: bool = False,
) -> Validator:
    """A validator refusing a value for which ``predicate`` is false.

    Args:
        predicate: value -> True when acceptable.
        expected: what is accepted, in words (``"> 0"``, ``"(low, high) with low < high"``).
        problem: what is wrong, after the option's name (``"is out of range"``).
        fix: the fix; default ``e.g. <name>=<example>`` or ``give <name> a value <expected>``.
        example: an acceptable value, for the fix (written in the user's syntax by
            :func:`build_config`).
        optional: accept ``None`` too.
    """
    shown = f"None or {expected}" if optional else expected

    def validate(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if optional and value is None:
            return
        try:
            ok = bool(predicate(value))
        except TypeError:
            ok = False
        if not ok:
            raise _refusal(attribute, value, problem, shown, fix, example)

    return validate


def positive(*, optional: bool = False, example: Any = None) -> Validator:
    """A validator accepting numbers ``> 0`` (and ``None`` with ``optional``)."""
    return satisfies(
        lambda v: v > 0, "> 0", problem="must be positive", example=example, optional=optional
    )


def non_negative(*, optional: bool = False, example: Any = None) -> Validator:
    """A validator accepting numbers ``>= 0`` (and ``None`` with ``optional``)."""
    return satisfies(
        lambda v: v >= 0, ">= 0", problem="must not be negative", example=example, optional=optional
    )


def at_least(bound: float, *, optional: bool = False, example: Any = None) -> Validator:
    """A validator accepting numbers ``>= bound`` (and ``None`` with ``optional``)."""
    return satisfies(
        lambda v: v >= bound,
        f">= {bound}",
        problem=f"must be at least {bound}",
        example=example,
        optional=optional,
    )


def in_range(
    lo: float, hi: float, *, closed: str = "[)", optional: bool = False, example: Any = None
) -> Validator:
    """A validator accepting numbers between ``lo`` and ``hi``.

    Args:
        lo: the lower bound.
        hi: the upper bound.
        closed: which ends are included: ``"[)"`` (default), ``"[]"``, ``"(]"`` or ``"()"``.
        optional: accept ``None`` too.
        example: an acceptable value, for the fix.
    """
    if closed not in ("[)", "[]", "(]", "()"):
        raise ValueError(f"closed must be one of '[)', '[]', '(]', '()', got {closed!r}")
    low_ok = (lambda v: v >= lo) if closed[0] == "[" else (lambda v: v > lo)
    high_ok = (lambda v: v <= hi) if closed[1] == "]" else (lambda v: v < hi)
    interval = f"{closed[0]}{lo}, {hi}{closed[1]}"
    return satisfies(
        lambda v: low_ok(v) and high_ok(v),
        f"in {interval}",
        problem=f"must be in {interval}",
        example=example,
        optional=optional,
    )


def one_of(*choices: Any) -> Validator:
    """A validator accepting one of ``choices`` ("option 'p_z' is not one of 'exp', 'sigmoid'")."""
    allowed = ", ".join(map(repr, choices))

    def validate(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        try:
            ok = value in choices
        except TypeError:  # an unhashable value
            ok = False
        if not ok:
            err = _refusal(
                attribute,
                value,
                f"is not one of {allowed}",
                f"one of {allowed}",
                fix=f"choose one of them, e.g. {attribute.alias or attribute.name}={choices[0]!r}",
            )
            err.choices = choices  # type: ignore[attr-defined]
            raise err

    return validate


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
    except ConfigError as err:
        option: str | None = getattr(err, "option", None)
        if option is not None and hasattr(err, "choices"):
            raise _not_a_choice(plugin, option, err.value, err.choices) from err  # type: ignore[attr-defined]
        example = getattr(err, "example", None)
        fix = err.fix
        if option is not None and example is not None:
            fix = f"e.g. {option_syntax(plugin, option, example)}"
        raise PluginLoadError(
            plugin,
            f"an option was refused: {err.problem}",
            expected=err.expected,
            got=err.got,
            fix=fix,
        ) from err
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
