"""The hook caller: how a session calls its plugins' hooks, and what each hook may return.

A :class:`~infoshape.Session` calls every hook through its :class:`HookCaller`, which
owns four things:

- **Order**: the plugins' implementations run in the order the plugins were enabled
  (not pluggy's last-registered-first); ``tryfirst=True`` moves an implementation to
  the front and ``trylast=True`` to the back, each group in enabling order.
- **Arguments**: every implementation gets the arguments it names, ``session`` included,
  plus per-plugin ones (``config`` of ``infoshape_configure``, ``state`` of
  ``infoshape_load_state_dict``).
- **Errors**: an exception raised inside an implementation ends the session and becomes
  a :class:`~infoshape.PluginHookError` naming the plugin, the hook and the cause.
- **Return types**: one table, :func:`return_types`, read from the annotations of
  :mod:`infoshape.hookspecs`; every result is checked against it (the conformance checks of
  :mod:`infoshape.testing` read the same table).

pluggy's hook wrappers (``wrapper=True``, ``hookwrapper=True``) have no place here: the
caller calls each implementation itself, and a plugin declaring one is refused when it is
loaded (:mod:`infoshape.plugin_manager`). Observers (:meth:`HookCaller.observe`) see
every call and its result; :class:`~infoshape.testing.PluginTester` is one.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any, Literal

import attrs

from infoshape import hookspecs
from infoshape.errors import InfoshapeError, NonFiniteError, PluginHookError, raised_at

__all__ = ["HOOK_NAMES", "HookCaller", "Observer", "Returns", "return_types"]

HOOK_NAMES = tuple(sorted(n for n in dir(hookspecs) if n.startswith("infoshape_")))

Observer = Callable[[str, str, Mapping[str, Any], Any], None]
"""Called after each implementation with ``(plugin, hook, kwargs, result)``."""


@attrs.frozen
class Returns:
    """What one hook's implementations return, read from its specification's annotation.

    Attributes:
        kind: ``"nothing"`` (``None``), ``"items"`` (a list of ``type``), ``"mapping"``
            (a dict of name to value) or ``"value"`` (an instance of ``type``).
        type: the item type (``"items"``) or the value's type (``"value"``).
        optional: ``None`` is allowed besides the declared type.
    """

    kind: Literal["nothing", "items", "mapping", "value"]
    type: Any = None
    optional: bool = False

    def describe(self) -> str:
        """The declared type in words: ``a list of Tap``, ``an nn.Module or None``."""
        if self.kind == "nothing":
            return "None"
        name = getattr(self.type, "__name__", str(self.type))
        if self.type is not None and self.type.__module__.startswith("torch.nn"):
            name = f"nn.{name}"
        elif self.type is not None and self.type.__module__.startswith("torch"):
            name = f"torch.{name}"
        text = {
            "items": f"a list of {name}",
            "mapping": "a dict of name to value",
            "value": f"{'an' if name[0] in 'aeiou' or name.startswith('nn.') else 'a'} {name}",
        }[self.kind]
        return f"{text} or None" if self.optional else text

    def mismatch(self, result: Any, strict: bool = True) -> Any:
        """The first part of ``result`` (it or an item) that breaks the type, else ``None``.

        ``strict=False`` lets a single item stand for a one-item list (as the session does).
        A ``None`` result of a hook that may return ``None`` is no mismatch.
        """
        if result is None and (self.optional or self.kind == "nothing"):
            return None
        if self.kind == "nothing":
            return _Result(result)
        if self.kind == "mapping":
            return None if isinstance(result, Mapping) else _Result(result)
        if self.kind == "value":
            return None if isinstance(result, self.type) else _Result(result)
        if not isinstance(result, (list, tuple)):
            if strict:
                return _Result(result)
            result = [result]
        return next((_Result(item) for item in result if not isinstance(item, self.type)), None)


@attrs.frozen
class _Result:
    """A value that broke a declared type (wrapped: the value itself may be ``None``)."""

    value: Any


def _returns(annotation: Any) -> Returns:
    """A :class:`Returns` from a return annotation of :mod:`infoshape.hookspecs`."""
    if annotation in (None, type(None)):
        return Returns("nothing")
    optional = False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        optional = True
        (annotation,) = (a for a in args if a is not type(None))
    origin = typing.get_origin(annotation)
    if origin in (Sequence, list, tuple):
        return Returns("items", typing.get_args(annotation)[0], optional)
    if origin in (Mapping, dict):
        return Returns("mapping", None, optional)
    return Returns("value", origin or annotation, optional)


@functools.cache
def return_types() -> Mapping[str, Returns]:
    """Hook name to :class:`Returns`, read from the annotations of :mod:`infoshape.hookspecs`.

    The one table of what each hook returns: the session checks results against it and
    the conformance checks of :mod:`infoshape.testing` report against it.
    """
    import torch
    from torch import nn

    from infoshape.capture import Tap
    from infoshape.objective import Penalty
    from infoshape.registry import DatasetSpec, Estimator
    from infoshape.session import Session

    names = {
        "torch": torch,
        "nn": nn,
        "Tap": Tap,
        "Penalty": Penalty,
        "DatasetSpec": DatasetSpec,
        "Estimator": Estimator,
        "Session": Session,
    }
    return types.MappingProxyType(
        {
            hook: _returns(typing.get_type_hints(getattr(hookspecs, hook), localns=names)["return"])
            for hook in HOOK_NAMES
        }
    )


class HookCaller:
    """Calls the hooks of one session's plugins (module docstring).

    Args:
        manager: the session's plugin manager (:class:`~infoshape.plugin_manager.PluginManager`).
        session: passed as ``session`` to every implementation; its ``step`` and ``epoch``
            are named in errors.
        on_error: called before a :class:`~infoshape.PluginHookError` for an exception raised
            inside an implementation is raised (the session closes itself there).
    """

    def __init__(self, manager: Any, session: Any, on_error: Callable[[], object]) -> None:
        self.manager = manager
        self._session = session
        self._on_error = on_error
        self._observers: list[Observer] = []

    def observe(self, observer: Observer) -> Callable[[], None]:
        """Call ``observer(plugin, hook, kwargs, result)`` after every implementation call.

        ``kwargs`` are the arguments offered to the implementation (``session`` left out),
        ``result`` what it returned, before it is checked (``None`` included).

        Returns:
            a function that stops the observation.
        """
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    def impls(self, hook: str) -> list[Any]:
        """``hook``'s implementations in calling order (module docstring)."""
        enabled = {name: i for i, name in enumerate(getattr(self.manager, "infos", {}))}
        impls = getattr(self.manager.hook, hook).get_hookimpls()
        last = len(enabled)

        def place(impl: Any) -> tuple[int, int]:
            group = 0 if impl.tryfirst else 2 if impl.trylast else 1
            return group, enabled.get(impl.plugin_name, last)

        return sorted(impls, key=place)  # stable: pluggy's order where nothing tells apart

    def call(
        self,
        hook: str,
        kwargs_for: Callable[[str], Mapping[str, Any]] | None = None,
        plugins: Container[str] | None = None,
        **kwargs: Any,
    ) -> list[tuple[str, Any]]:
        """Call ``hook`` on each implementation; return ``(plugin, result)`` pairs.

        Results are checked against :func:`return_types` (``None`` results left out;
        a list hook's single item becomes a one-item list, a mapping a dict). A
        ``firstresult`` hook stops at the first result.

        Args:
            hook: the hook's name.
            kwargs_for: per-plugin arguments, ``kwargs_for(plugin)``.
            plugins: call only these plugins' implementations.
            **kwargs: the arguments of every implementation.
        """
        first = bool(getattr(self.manager.hook, hook).spec.opts.get("firstresult"))
        results = []
        for impl in self.impls(hook):
            if plugins is not None and impl.plugin_name not in plugins:
                continue
            extra = kwargs_for(impl.plugin_name) if kwargs_for else {}
            result = self.call_impl(impl, hook, {**kwargs, **extra})
            if result is not None:
                results.append((impl.plugin_name, result))
                if first:
                    break
        return results

    def pipe(self, hook: str, argument: str, value: Any) -> Any:
        """Pass ``value`` as ``argument`` through each implementation in turn.

        Each gets the previous one's result (``None``: unchanged); returns the last.
        """
        for impl in self.impls(hook):
            result = self.call_impl(impl, hook, {argument: value})
            if result is not None:
                value = result
        return value

    def call_impl(self, impl: Any, hook: str, kwargs: Mapping[str, Any]) -> Any:
        """Call one implementation with the arguments it names; check its result."""
        args = {"session": self._session, **kwargs}
        try:
            result = impl.function(*[args[a] for a in impl.argnames])
        except (PluginHookError, NonFiniteError):
            raise
        except Exception as err:
            # the run cannot go on with a broken plugin: the session closes itself
            self._on_error()
            raise self._raised(impl.plugin_name, hook, err) from err
        for observer in list(self._observers):
            observer(impl.plugin_name, hook, kwargs, result)
        return checked(impl.plugin_name, hook, result)

    def _raised(self, plugin: str, hook: str, err: Exception) -> PluginHookError:
        step, epoch = getattr(self._session, "step", "?"), getattr(self._session, "epoch", "?")
        return PluginHookError(
            plugin,
            hook,
            f"raised {type(err).__name__}: {err}",
            expected="the hook to return normally",
            got=f"{type(err).__name__} at step {step}, epoch {epoch}, raised in {raised_at(err)}",
            fix=f"{_remedy(err)}, or disable {plugin!r} to run without it "
            "(the session is closed, its store marked failed)",
        )


def checked(plugin: str, hook: str, result: Any) -> Any:
    """``result`` of ``plugin``'s ``hook`` in its declared type, else a PluginHookError.

    A list hook's results become a list (a single item a one-item list), a mapping a
    dict; a hook declared to return nothing has its result ignored.
    """
    returns = return_types().get(hook)
    if returns is None or result is None or returns.kind == "nothing":
        return result
    bad = returns.mismatch(result, strict=False)
    if bad is not None:
        raise PluginHookError(
            plugin,
            hook,
            "returned a value of the wrong type",
            expected=returns.describe(),
            got=type(bad.value).__name__,
        )
    if returns.kind == "items":
        return list(result) if isinstance(result, (list, tuple)) else [result]
    if returns.kind == "mapping":
        return dict(result)
    return result


def _remedy(err: BaseException) -> str:
    """A fix for an exception a hook raised (its message and place are in the error)."""
    if isinstance(err, OSError) and err.filename is not None:
        return f"check that {err.filename} can be written (its folder, permissions, space)"
    if isinstance(err, InfoshapeError):
        return "follow the fix above"
    return f"remove the cause of the {type(err).__name__} (named above)"
