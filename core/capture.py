"""Capture of intermediate tensors through forward hooks.

A :class:`Tap` names modules (by ``named_modules()`` glob or by class) and the
tensor wanted: the module's input (``"pre"``, read by a forward pre-hook before the
module runs, and copied when the module works in place) or its output (``"post"``).
:class:`Capture` resolves every tap against a model, registers one pre-hook and
one forward hook at most per module however many taps ask for it, and keeps the
latest tensors in a mapping from capture name to tensor. Captured tensors keep their autograd
graph (penalties use them); the store gets detached copies.

The hooks work under ``torch.compile(model)`` when they are registered before
compiling (``Session`` does): dynamo traces them into the graph, so a compiled
forward returns the same captures without graph breaks (the NaN check moves
out of the graph, to the first read of :attr:`Capture.tensors`).
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import attrs
import torch
from torch import nn

from infoshape.errors import CaptureError, TapError, report_nonfinite
from infoshape.options import one_of, satisfies

__all__ = ["Capture", "Stream", "Tap"]

StoreMode = Literal["probe", "stream", "both"]


def _positive_int(*, optional: bool = False) -> Any:
    return satisfies(
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
        "a positive int",
        problem="must be a positive int",
        optional=optional,
    )


@attrs.frozen(kw_only=True)
class Stream:
    """The budget of a tap stored from training batches: ``Tap(..., store=Stream(...))``.

    Applied in the order every → pool → project → dtype → reservoir and recorded in the
    stored variable's attrs (see :mod:`infoshape.store.budget`).

    Args:
        every: store every k-th step (``step % k == 0``).
        samples: keep a uniform reservoir of this many samples per epoch (seeded by
            ``seed``) stored as one row per epoch, ``(epoch, <name>_sample, ...)``, instead
            of one row per step; it draws from the samples of the steps ``every`` lets
            through. None: every sample.
        pool: average-pool conv maps to ``s × s`` (``(N, C, H, W) -> (N, C, s, s)``, 1-D
            maps to ``s``). None: no pooling.
        project: project each (pooled, flattened) sample to this many dims with a fixed
            Gaussian Johnson–Lindenstrauss matrix ``N(0, 1/m)`` drawn from ``seed`` and
            stored once as ``stream/<name>_projection``. None: no projection.
        dtype: storage dtype (``"float32"`` or ``"float16"``).
        seed: seed of the reservoir and of the projection matrix.
    """

    every: int = attrs.field(default=1, validator=_positive_int())
    samples: int | None = attrs.field(default=None, validator=_positive_int(optional=True))
    pool: int | None = attrs.field(default=None, validator=_positive_int(optional=True))
    project: int | None = attrs.field(default=None, validator=_positive_int(optional=True))
    dtype: Literal["float32", "float16"] = attrs.field(
        default="float32", validator=one_of("float32", "float16")
    )
    seed: int = attrs.field(default=0, validator=satisfies(lambda v: isinstance(v, int), "an int"))


_BUDGET_FIELDS = tuple(f.name for f in attrs.fields(Stream))


def _store_parts(value: Any) -> tuple[bool, Stream | None, bool]:
    """``(probe, stream budget, streamed)`` of a ``Tap.store`` value; TapError if unknown."""
    if value is True or value == "probe" or value is False or value is None:
        return bool(value), None, False
    if value == "stream":
        return False, None, True
    if value == "both":
        return True, None, True
    if isinstance(value, Stream):
        return False, value, True
    if isinstance(value, tuple) and value:
        parts = [_store_parts(v) for v in value if not isinstance(v, tuple)]
        budgets = [b for _, b, _ in parts if b is not None]
        if len(parts) == len(value) and len(budgets) <= 1:
            budget = budgets[0] if budgets else None
            return any(p[0] for p in parts), budget, any(p[2] for p in parts)
    raise TapError(
        "Tap.store has an unknown value",
        expected='True, False, "probe", "stream", "both", Stream(...) or ("probe", Stream(...))',
        got=repr(value),
        fix='use store=True to keep the probe set each epoch, store="stream" (or '
        "store=Stream(every=10, ...)) for training batches",
    )


def _store_mode(value: Any) -> StoreMode | None:
    probe, _, streamed = _store_parts(value)
    return "both" if probe and streamed else "probe" if probe else "stream" if streamed else None


def _deprecated_budget(name: str) -> Any:
    """A ``Tap(stream_<name>=...)`` keyword kept for old code (``None``: not given)."""
    return attrs.field(default=None, alias=f"stream_{name}", repr=False, eq=False)


def _budget_alias(name: str) -> property:
    return property(
        lambda tap: getattr(tap.budget, name),
        doc=f"``budget.{name}`` (the old spelling ``Tap.stream_{name}``).",
    )


@attrs.frozen(kw_only=True)
class Tap:
    """A request for the tensor entering or leaving some modules.

    Args:
        module: a glob over ``model.named_modules()`` names (``"features.*"``, ``"fc1"``),
            or a module class (``torch.nn.ReLU``) to tap every module of that class.
        point: ``"pre"`` for the module's first input, ``"post"`` for its output. A pre
            capture is taken by a forward *pre*-hook, as the module receives it; on a module
            that overwrites its input (torch's ``inplace=True`` flag, as torchvision's ResNet
            ReLUs) it is a differentiable copy, so it holds the true input, not the
            module's output, and the model is left as it is.
        store: ``False``; ``True`` or ``"probe"`` to store the probe set at each epoch end;
            ``"stream"`` to store training batches (every step, every sample), or a
            :class:`Stream` budget to store them within it (``store=Stream(every=10,
            samples=256, project=64)``); ``"both"`` (probe and stream) or
            ``("probe", Stream(...))`` for both with a budget.
        name: capture name; by default the module name (``"_pre"`` appended for inputs).
            With a glob matching several modules the module name is appended:
            ``"<name>.<module>"``.
        stream_every, stream_samples, stream_pool, stream_project, stream_dtype, stream_seed:
            deprecated (``DeprecationWarning``): ``stream_every=10`` is ``store=Stream(every=10)``;
            reading ``tap.stream_every`` gives ``tap.budget.every``.
        call: which call of a module that runs more than once per forward pass to keep
            (torchvision's ResNet blocks call one ``relu`` twice; a transformer may reuse a
            module across positions). ``None`` (default): every call, each its own
            capture: ``"<name>#0"``, ``"<name>#1"``, ... in call order, once a second call
            is seen (a module called once keeps the plain ``"<name>"``). An int ``k``: only
            the ``k``-th call (0-based), under the plain name.

    Attributes:
        budget: the :class:`Stream` budget of a streamed tap (``Stream()`` when ``store``
            names none).
    """

    module: str | type = attrs.field(kw_only=False)
    point: Literal["pre", "post"] = attrs.field(default="post", validator=one_of("pre", "post"))
    store: bool | str | Stream | tuple[Any, ...] = attrs.field(
        default=False, validator=lambda _i, _a, value: _store_mode(value), eq=_store_mode
    )
    name: str | None = None
    _stream_every: int | None = _deprecated_budget("every")
    _stream_samples: int | None = _deprecated_budget("samples")
    _stream_pool: int | None = _deprecated_budget("pool")
    _stream_project: int | None = _deprecated_budget("project")
    _stream_dtype: Literal["float32", "float16"] | None = _deprecated_budget("dtype")
    _stream_seed: int | None = _deprecated_budget("seed")
    call: int | None = attrs.field(
        default=None,
        validator=satisfies(
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
            "an int >= 0 (the call's index)",
            problem="must be a call index",
            optional=True,
        ),
    )

    budget: Stream = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        given = _store_parts(self.store)[1]
        old = {k: v for k in _BUDGET_FIELDS if (v := getattr(self, f"_stream_{k}")) is not None}
        if old and given is not None:
            raise TapError(
                "a tap's stream budget is given twice",
                expected="store=Stream(...) alone",
                got=f"store={self.store!r} and "
                + ", ".join(f"stream_{k}={v!r}" for k, v in old.items()),
                fix="move the stream_* values into the Stream(...)",
            )
        if old:
            warnings.warn(
                "Tap(stream_every=..., stream_samples=..., ...) is deprecated; pass the budget "
                f"as store=Stream({', '.join(f'{k}={v!r}' for k, v in old.items())})",
                DeprecationWarning,
                stacklevel=3,
            )
        object.__setattr__(self, "budget", given or Stream(**old))

    @property
    def store_mode(self) -> StoreMode | None:
        """Where the tap is stored: ``"probe"``, ``"stream"``, ``"both"`` or None."""
        return _store_mode(self.store)

    def describe(self) -> str:
        """The module selector as text (a glob or a class name)."""
        return self.module if isinstance(self.module, str) else self.module.__name__

    def select(self, model: nn.Module) -> list[str]:
        """Names of the modules of ``model`` this tap matches, in model order.

        Raises:
            TapError: when nothing matches, listing the closest module names.
        """
        named = [(n, m) for n, m in model.named_modules() if n]
        if isinstance(self.module, str):
            hits = [n for n, _ in named if fnmatch.fnmatchcase(n, self.module)]
        else:
            hits = [n for n, m in named if isinstance(m, self.module)]
        if hits:
            return hits
        names = [n for n, _ in named]
        close = difflib.get_close_matches(self.describe(), names, n=5, cutoff=0.3)
        raise TapError(
            f"tap {self.describe()!r} matches no module of {type(model).__name__}",
            expected="a module name or glob from model.named_modules()",
            got=repr(self.describe()),
            fix=(
                f"closest module names: {', '.join(close)}"
                if close
                else f"the model's modules are: {', '.join(names[:20]) or '(none)'}"
            ),
        )


for _field in _BUDGET_FIELDS:  # reading tap.stream_every etc. still works: the budget's
    setattr(Tap, f"stream_{_field}", _budget_alias(_field))


@attrs.frozen
class _Resolved:
    """One tap resolved to one module: the capture name, the module name, the point."""

    name: str
    module: str
    point: str
    tap: Tap


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


class Capture:
    """Forward hooks for a set of taps on one model.

    Use as a context manager, or call :meth:`attach` and :meth:`remove`;
    hooks are removed on exit, also when an exception leaves the block.

    Args:
        model: the model to hook.
        taps: the taps, possibly from several plugins.
        on_nonfinite: ``"raise"`` (default), ``"warn"`` or ``"ignore"`` when a capture
            holds NaN or Inf.
    """

    def __init__(
        self,
        model: nn.Module,
        taps: Iterable[Tap],
        on_nonfinite: Literal["raise", "warn", "ignore"] = "raise",
    ) -> None:
        if on_nonfinite not in ("raise", "warn", "ignore"):
            raise TapError(
                "unknown on_nonfinite policy",
                expected='"raise", "warn" or "ignore"',
                got=repr(on_nonfinite),
                fix='use on_nonfinite="warn" to continue past NaN activations',
            )
        self.model = model
        self.on_nonfinite = on_nonfinite
        self.resolved: list[_Resolved] = []
        self._names_of: dict[Tap, list[str]] = {}
        self._tensors: dict[str, torch.Tensor] = {}
        self._calls: dict[str, int] = {}  # calls of each capture's module in this forward
        self._seen: dict[str, int] = {}  # the same, in the last forward that ended
        self._in_forward = False  # inside a call of the whole model
        self._unchecked: list[_Resolved] = []  # captured inside torch.compile: checked on read
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for tap in dict.fromkeys(taps):  # same tap from two plugins: one capture
            self._resolve(tap)

    def _resolve(self, tap: Tap) -> None:
        modules = tap.select(self.model)
        names = []
        for module in modules:
            if tap.name is None:
                name = module + ("_pre" if tap.point == "pre" else "")
            else:
                name = tap.name if len(modules) == 1 else f"{tap.name}.{module}"
            existing = next((r for r in self.resolved if r.name == name), None)
            if existing is not None:
                if (existing.module, existing.point) != (module, tap.point):
                    raise TapError(
                        f"two taps claim the capture name {name!r}",
                        expected="one name per (module, point)",
                        got=f"{existing.module}:{existing.point} and {module}:{tap.point}",
                        fix="give the taps distinct name= values",
                    )
            else:
                self.resolved.append(_Resolved(name, module, tap.point, tap))
            names.append(name)
        self._names_of[tap] = names

    @property
    def names_of(self) -> dict[Tap, list[str]]:
        """Each tap's capture names: one per matched module, ``#i`` per call when repeated."""
        by_name = {r.name: r for r in self.resolved}
        return {
            tap: [n for name in names for n in self.names(by_name[name])]
            for tap, names in self._names_of.items()
        }

    def names(self, r: _Resolved) -> list[str]:
        """The capture names of one resolved tap: ``[name]``, or ``name#i`` for each call."""
        calls = (self._calls or self._seen).get(r.name, 1)
        if r.tap.call is not None or calls <= 1:
            return [r.name]
        return [f"{r.name}#{i}" for i in range(calls)]

    @property
    def tensors(self) -> Mapping[str, torch.Tensor]:
        """The latest captured tensor of every capture name seen since :meth:`clear`.

        Captures made inside a ``torch.compile``-d forward are checked for NaN/Inf here,
        on first read: a check in the hook would break the compiled graph at every tap.
        """
        if self._unchecked:
            pending, self._unchecked = self._unchecked, []
            for r in pending:
                if r.name in self._tensors:
                    self._check_finite(r, self._tensors[r.name])
        return self._tensors

    def clear(self) -> None:
        """Forget the captured tensors (and so free their graphs).

        Also called when the model's forward starts: each forward pass has its own
        captures and its own count of each module's calls.
        """
        self._tensors = {}
        self._unchecked = []
        if self._calls:
            self._seen = self._calls
        self._calls = {}

    def attach(self) -> Capture:
        """Register one forward hook per tapped module."""
        if self._handles:
            return self
        modules = dict(self.model.named_modules())
        by_module: dict[str, list[_Resolved]] = {}
        for r in self.resolved:
            by_module.setdefault(r.module, []).append(r)
        try:  # a new forward pass of the model: new captures, calls counted anew
            self._handles += [
                self.model.register_forward_pre_hook(lambda m, a: self._forward_starts()),
                self.model.register_forward_hook(lambda m, a, out: self._forward_ends()),
            ]
            for module_name, wanted in by_module.items():
                module = modules[module_name]
                pre = [r for r in wanted if r.point == "pre"]
                post = [r for r in wanted if r.point != "pre"]
                if pre:  # the input as the module receives it, before it runs
                    hook = self._make_hook(pre, clone=_modifies_input(module))
                    self._handles.append(module.register_forward_pre_hook(hook))
                if post:
                    hook = self._make_hook(post, clone=False)
                    self._handles.append(
                        module.register_forward_hook(lambda m, a, out, h=hook: h(m, out))
                    )
        except BaseException:
            self.remove()
            raise
        return self

    def _forward_starts(self) -> None:
        self.clear()
        self._in_forward = True

    def _forward_ends(self) -> None:
        self._in_forward = False

    def remove(self) -> None:
        """Remove every hook this capture registered (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def attached(self) -> bool:
        """Whether the hooks are registered."""
        return bool(self._handles)

    def __enter__(self) -> Capture:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _make_hook(self, wanted: list[_Resolved], clone: bool) -> Callable[[nn.Module, Any], None]:
        """A hook storing the first tensor of what it is given (the input or the output).

        With ``clone``, the tensor is copied first (differentiably): the module is about
        to overwrite its input in place, and the capture must keep the value it had.
        """

        def hook(module: nn.Module, value: Any) -> None:
            for r in wanted:
                tensor = _first_tensor(value)
                if tensor is None:
                    raise CaptureError(
                        f"tap {r.name!r} found no tensor at the {r.point} point of {r.module!r}",
                        expected="a tensor (or a tuple whose first item is a tensor)",
                        got=type(value).__name__,
                        fix="tap the other point or a sub-module that returns a tensor",
                    )
                key = self._key(r)
                if key is None:
                    continue
                if clone:
                    tensor = tensor.clone()
                if self.on_nonfinite != "ignore":
                    if torch.compiler.is_compiling():
                        self._unchecked.append(r)
                    else:
                        self._check_finite(r, tensor)
                self._tensors[key] = tensor

        return hook

    def _key(self, r: _Resolved) -> str | None:
        """The capture name of this call of ``r``'s module (None: a call not kept).

        Counts the module's calls in this forward pass of the model. At its second call,
        the first call's capture is renamed ``#0``. A tapped module called on its own,
        outside a call of the whole model, counts as a pass of its own (its capture
        replaces the last one).
        """
        i = self._calls.get(r.name, 0) if self._in_forward else 0  # alone: a pass of its own
        self._calls[r.name] = i + 1
        if r.tap.call is not None:
            return r.name if i == r.tap.call else None
        if i == 0:
            return r.name
        if i == 1 and r.name in self._tensors:
            self._tensors[f"{r.name}#0"] = self._tensors.pop(r.name)
        return f"{r.name}#{i}"

    def _check_finite(self, r: _Resolved, tensor: torch.Tensor) -> None:
        if not tensor.is_floating_point() or _all_finite(tensor):
            return
        n_bad = int((~torch.isfinite(tensor)).sum())
        report_nonfinite(
            self.on_nonfinite,
            f"tap {r.name!r} ({r.module}, {r.point}) holds {n_bad} NaN/Inf values",
            expected="finite activations",
            got=f"{n_bad} of {tensor.numel()} values non-finite",
            fix="lower the learning rate or check the input; on_nonfinite='warn' continues",
        )


def _modifies_input(module: nn.Module) -> bool:
    """Whether ``module`` overwrites its input: torch's in-place flag is set.

    (``nn.ReLU(inplace=True)``, ``nn.Dropout(inplace=True)``, torchvision's ResNet ReLUs.)
    """
    return getattr(module, "inplace", False) is True


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether every value of a floating-point tensor is finite, in one read of it.

    A NaN or an infinity makes the sum non-finite, so a finite sum settles it without the
    boolean tensor of ``isfinite`` (several times slower on large maps); a non-finite
    sum (which finite values can also give, by overflow) is checked value by value.
    """
    wide = torch.float32 if tensor.element_size() < 4 else tensor.dtype
    if math.isfinite(tensor.detach().sum(dtype=wide).item()):
        return True
    return bool(torch.isfinite(tensor).all())
