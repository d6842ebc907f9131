"""The building blocks of :class:`~infoshape.testing.PluginTester`'s checks.

Each function inspects one thing and returns problems as sentences (an empty
list when all is well), so the tester can report every failure at once:
hook results against their declared types, fingerprints of module state,
hook counts on a model, and metric streams of two runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import numbers
import random
import reprlib
import types
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules import module as _torch_module

from infoshape.hooks import return_types
from infoshape.objective import Penalty

__all__ = [
    "RecordingSink",
    "compare_runs",
    "diff_snapshots",
    "hook_counts",
    "hook_diff",
    "isolated_rng",
    "penalty_gradient_problems",
    "reseed",
    "result_problems",
    "snapshot_state",
]

_HOOK_ATTRS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
_short = _repr.repr


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {_short(value)}"


def _scalar_problems(what: str, value: Any) -> list[str]:
    if not isinstance(value, torch.Tensor):
        return [f"{what} is {_describe(value)}; expected a scalar torch.Tensor"]
    if value.numel() != 1:
        return [f"{what} has shape {tuple(value.shape)}; expected a scalar tensor (one element)"]
    if not value.is_floating_point():
        return [f"{what} has dtype {value.dtype}; expected a floating tensor"]
    if not bool(torch.isfinite(value).all()):
        return [f"{what} is {float(value.detach().reshape(()))}; expected a finite value"]
    return []


def _metric_value_ok(value: Any) -> bool:
    if isinstance(value, numbers.Number):
        return True
    if isinstance(value, (np.ndarray, np.generic)):
        return value.dtype.kind in "biuf"
    if isinstance(value, torch.Tensor):
        return not value.is_complex()
    return type(value).__name__ == "DataArray"


def _metrics_problems(result: Any, stage: Any) -> list[str]:
    where = f"infoshape_metrics (stage={stage!r})"
    if not isinstance(result, Mapping):
        return [f"{where} returned {_describe(result)}; expected a dict of name to value"]
    problems = []
    for key, value in result.items():
        if not isinstance(key, str) or not key:
            problems.append(f"{where} has metric name {key!r}; expected a non-empty str")
        elif not _metric_value_ok(value):
            problems.append(
                f"{where}: metric {key!r} is {_describe(value)}; expected a number, a numeric "
                "array or tensor, or an xarray.DataArray"
            )
    return problems


def result_problems(hook: str, result: Any, stage: Any = None) -> list[str]:
    """What is wrong with ``result`` as a return value of ``hook`` (``[]`` if nothing).

    Args:
        hook: the hook's name, ``infoshape_*``.
        result: what one plugin returned (``None`` results are never passed).
        stage: the ``stage`` argument of ``infoshape_metrics`` (for messages).
    """
    returns = return_types().get(hook)
    if returns is None:
        return []
    if hook == "infoshape_metrics":
        return _metrics_problems(result, stage)
    if returns.kind == "nothing":
        return [f"{hook} returned {_describe(result)}; it should return None"]
    expected = returns.describe()
    if returns.kind == "items" and isinstance(result, (list, tuple)):
        problems = [
            f"{hook} returned an item {_describe(item)}; expected {expected}"
            for item in result
            if returns.mismatch([item]) is not None
        ]
    elif returns.mismatch(result) is not None:
        return [f"{hook} returned {_describe(result)}; expected {expected}"]
    else:
        problems = []
    if hook == "infoshape_objective":
        return _scalar_problems(f"{hook}'s loss", result)
    if hook == "infoshape_penalty":
        for penalty in result:
            if isinstance(penalty, Penalty):
                problems += _scalar_problems(f"penalty {penalty.name!r}", penalty.value)
    return problems


# ----------------------------------------------------------- module state
def _fingerprint(value: Any, owned: frozenset[str], depth: int = 0) -> Any:
    """A comparable summary of ``value`` that changes when it is rebound or mutated.

    Containers are followed; objects are followed into their ``__dict__`` only when their
    class belongs to the plugin (``owned`` module names), so a logger's cache is not state.
    """
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return repr(value)
    if isinstance(value, torch.Tensor):
        return ("tensor", id(value), value._version, tuple(value.shape), str(value.dtype))
    if isinstance(value, np.ndarray):
        digest = hashlib.sha1(np.ascontiguousarray(value).tobytes()).hexdigest()
        return ("ndarray", id(value), value.shape, digest)
    if depth >= 6 or isinstance(value, (types.ModuleType, type)) or inspect.isroutine(value):
        return ("id", id(value))
    deeper = depth + 1
    if isinstance(value, (list, tuple, deque)):
        return (
            type(value).__name__,
            id(value),
            tuple(_fingerprint(v, owned, deeper) for v in value),
        )
    if isinstance(value, (set, frozenset)):
        members = sorted(repr(_fingerprint(v, owned, deeper)) for v in value)
        return (type(value).__name__, id(value), tuple(members))
    if isinstance(value, dict):
        items = tuple(
            (_fingerprint(k, owned, deeper), _fingerprint(v, owned, deeper))
            for k, v in value.items()
        )
        return ("dict", id(value), items)
    if type(value).__module__ in owned and hasattr(value, "__dict__"):
        return (type(value).__name__, id(value), _fingerprint(dict(vars(value)), owned, deeper))
    return ("id", id(value))


def _is_state(value: Any) -> bool:
    """Whether a class attribute is data (not a method, property, nested class ...)."""
    return not (
        inspect.isroutine(value) or isinstance(value, type) or hasattr(type(value), "__get__")
    )


def snapshot_state(modules: Iterable[types.ModuleType]) -> dict[str, tuple[Any, str]]:
    """Fingerprint and short repr of every global and class attribute of ``modules``.

    Keys are ``"module.name"`` and ``"module.Class.attr"``; dunder names are skipped.
    """
    modules = list(modules)
    owned = frozenset(m.__name__ for m in modules)
    state: dict[str, tuple[Any, str]] = {}
    for module in modules:
        for name, value in list(vars(module).items()):
            if name.startswith("__"):
                continue
            key = f"{module.__name__}.{name}"
            state[key] = (_fingerprint(value, owned), _short(value))
            if isinstance(value, type) and value.__module__ == module.__name__:
                for attr, item in list(vars(value).items()):
                    if not attr.startswith("__") and _is_state(item):
                        state[f"{key}.{attr}"] = (_fingerprint(item, owned), _short(item))
    return state


def diff_snapshots(
    before: Mapping[str, tuple[Any, str]], after: Mapping[str, tuple[Any, str]]
) -> list[str]:
    """Sentences naming what was added, removed or changed between two snapshots."""
    problems = []
    for key in sorted(set(before) | set(after)):
        if key not in before:
            problems.append(f"{key} was added (now {after[key][1]})")
        elif key not in after:
            problems.append(f"{key} was removed (was {before[key][1]})")
        elif before[key][0] != after[key][0]:
            problems.append(f"{key} changed: {before[key][1]} -> {after[key][1]}")
    return problems


# ------------------------------------------------------------------ hooks
def hook_counts(model: nn.Module) -> dict[str, int]:
    """Number of forward/backward hooks on each module of ``model`` and globally.

    Keys are ``"<module name>.<hook dict>"`` (the root module is ``"<model>"``) and
    ``"global.<hook dict>"``; only non-zero counts appear.
    """
    counts = {}
    for name, module in model.named_modules():
        for attr in _HOOK_ATTRS:
            n = len(getattr(module, attr, None) or {})
            if n:
                counts[f"{name or '<model>'}.{attr}"] = n
    for attr in _HOOK_ATTRS:
        n = len(getattr(_torch_module, f"_global{attr}", None) or {})
        if n:
            counts[f"global.{attr}"] = n
    return counts


def penalty_gradient_problems(penalty: Penalty, params: list[torch.Tensor]) -> list[str]:
    """What is wrong with the gradients of ``penalty`` w.r.t. ``params`` (``[]`` if nothing).

    A penalty without a graph is a problem unless it is exactly zero (a warm-up).
    """
    value = penalty.value
    if not isinstance(value, torch.Tensor):
        return []  # reported by check_hook_types
    if not value.requires_grad:
        if value.numel() == 1 and float(value.detach().reshape(())) != 0.0:
            return [
                f"penalty {penalty.name!r} has no autograd graph, so it cannot change "
                "training; compute it from the captures without .detach()/.item()"
            ]
        return []
    grads = torch.autograd.grad(value.sum(), params, retain_graph=True, allow_unused=True)
    present = [g for g in grads if g is not None]
    if not present:
        return [f"penalty {penalty.name!r} has a graph but no gradient reaches the model"]
    if not all(bool(torch.isfinite(g).all()) for g in present):
        return [f"penalty {penalty.name!r} sends non-finite gradients to the model"]
    return []


def hook_diff(before: Mapping[str, int], after: Mapping[str, int]) -> str:
    """The hook counts that differ between two :func:`hook_counts` results, as text."""
    keys = sorted(k for k in set(before) | set(after) if before.get(k, 0) != after.get(k, 0))
    return ", ".join(f"{k}: {before.get(k, 0)} -> {after.get(k, 0)}" for k in keys)


# -------------------------------------------------------------------- RNG
@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Restore the global torch, numpy and ``random`` RNG states on exit."""
    torch_state, np_state, py_state = (
        torch.get_rng_state(),
        np.random.get_state(),
        random.getstate(),
    )
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


def reseed(seed: int) -> None:
    """Seed the global torch, numpy and ``random`` RNGs with ``seed``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# ---------------------------------------------------------------- metrics
class RecordingSink:
    """A metric sink that keeps every ``(stage, index, metrics)`` it receives."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int, dict[str, Any]]] = []
        self.closed = False

    def write(self, stage: str, index: int, metrics: Mapping[str, Any]) -> None:
        """Keep a copy of the metrics."""
        self.rows.append((stage, index, dict(metrics)))

    def close(self) -> None:
        """Mark the sink closed."""
        self.closed = True


def compare_runs(
    rows_a: list[tuple[str, int, dict[str, Any]]],
    rows_b: list[tuple[str, int, dict[str, Any]]],
    label_a: str,
    label_b: str,
    limit: int = 5,
) -> list[str]:
    """Sentences naming the metrics that differ between two runs that should agree."""
    if [(s, i) for s, i, _ in rows_a] != [(s, i) for s, i, _ in rows_b]:
        return [f"the {label_a} and {label_b} emit metrics at different steps/epochs"]
    problems = []
    for (stage, index, a), (_, _, b) in zip(rows_a, rows_b, strict=True):
        if set(a) != set(b):
            problems.append(f"{stage} {index}: metric names differ: {sorted(set(a) ^ set(b))}")
            continue
        for name in sorted(a):
            x, y = np.asarray(a[name], dtype=float), np.asarray(b[name], dtype=float)
            if x.shape != y.shape or not np.allclose(x, y, rtol=1e-5, atol=1e-7, equal_nan=True):
                problems.append(
                    f"{stage} {index}: {name} is {_short(a[name])} when {label_a} but "
                    f"{_short(b[name])} when {label_b}"
                )
    return problems[:limit]
