"""Conformance checks for any plugin, first- or third-party (exported by :mod:`infoshape.testing`).

:class:`PluginTester` drives a plugin through real :class:`~infoshape.Session` runs
on a small model and checks what every plugin promises: it loads, its ``Config``
serializes, its hooks return the declared types, it keeps no module-level state,
its hooks are removed at close (also after an error), and gradients still reach the
model. Each check raises ``AssertionError`` naming the problem;
:meth:`PluginTester.check_all` runs them all, prints one line per check and returns a
:class:`~infoshape.testing.check_report.CheckReport`, raising once with every failure.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import itertools
import json
import math
import re
import sys
import tempfile
import types
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from infoshape.errors import ConfigError, PluginLoadError
from infoshape.hooks import Observer
from infoshape.objective import Penalty
from infoshape.options import build_config
from infoshape.plugin_manager import (
    PluginManager,
    build_plugin_manager,
    installed_plugins,
    plugin_name,
)
from infoshape.session import Session
from infoshape.testing.check_report import CheckReport, run_checks
from infoshape.testing.conformance import (
    RecordingSink,
    compare_runs,
    diff_snapshots,
    hook_counts,
    hook_diff,
    isolated_rng,
    penalty_gradient_problems,
    reseed,
    result_problems,
    snapshot_state,
)

__all__ = ["PluginTester", "small_mlp"]


def small_mlp(
    input_shape: tuple[int, ...] = (8,), n_classes: int = 3, hidden: int = 16
) -> nn.Module:
    """The default test model: ``flatten?``, ``fc1``, ``relu1``, ``fc2``, ``relu2``, ``fc3``.

    ``flatten`` is there only when ``input_shape`` has more than one dimension.
    """
    n_in = math.prod(input_shape)
    layers: list[tuple[str, nn.Module]] = (
        [("flatten", nn.Flatten())] if len(input_shape) > 1 else []
    )
    layers += [
        ("fc1", nn.Linear(n_in, hidden)),
        ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(hidden, hidden)),
        ("relu2", nn.ReLU()),
        ("fc3", nn.Linear(hidden, n_classes)),
    ]
    return nn.Sequential(OrderedDict(layers))


def _recorder(records: list[tuple[str, Any, Any]]) -> Observer:
    """A hook observer keeping ``(hook, result, stage)`` of every result that is not None."""

    def record(plugin: str, hook: str, kwargs: Mapping[str, Any], result: Any) -> None:
        if result is not None:
            records.append((hook, result, kwargs.get("stage")))

    return record


class _Injected(Exception):
    """The error :meth:`PluginTester.check_hooks_removed` raises inside a session."""


class PluginTester:
    """Conformance checks for one plugin.

    Args:
        plugin: an entry-point name, or a plugin module, class or instance.
        options: the plugin's options (``{"beta": 0.1}``); default: its Config defaults.
        model: the model to run; deep-copied for every session (default :func:`small_mlp`).
        input_shape: shape of one input sample.
        n_classes: number of classes (the model's output size).
        batch_size: samples per training batch; the probe set has twice as many.
        steps: training steps per session.
        seed: seed of the data, the default model and the RNGs during each session.

    Each ``check_*`` method raises ``AssertionError`` listing what is wrong:

    - :meth:`check_loads`: registers through ``build_plugin_manager``, every hook marked;
    - :meth:`check_config`: ``Config`` is frozen attrs and round-trips through JSON;
    - :meth:`check_hook_types`: hooks return their declared types in a real run;
    - :meth:`check_no_module_state`: sessions change no global or class attribute;
    - :meth:`check_sessions_independent`: two sessions side by side do not interact;
    - :meth:`check_hooks_removed`: no hook left on the model after close or an error;
    - :meth:`check_gradient`: the loss and the penalties reach the model's parameters.

    Sessions run in a temporary working directory (files a plugin writes to relative
    paths go there) and restore the global torch/numpy/random RNG states afterwards.
    """

    checks = (
        "check_loads",
        "check_config",
        "check_hook_types",
        "check_no_module_state",
        "check_sessions_independent",
        "check_hooks_removed",
        "check_gradient",
    )

    def __init__(
        self,
        plugin: Any,
        options: Mapping[str, Any] | None = None,
        model: nn.Module | None = None,
        input_shape: tuple[int, ...] = (8,),
        n_classes: int = 3,
        batch_size: int = 16,
        *,
        steps: int = 3,
        seed: int = 0,
    ) -> None:
        for label, value in (
            ("n_classes", n_classes),
            ("batch_size", batch_size),
            ("steps", steps),
        ):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"PluginTester: {label} must be a positive int",
                    expected="an int >= 1",
                    got=repr(value),
                    fix=f"pass {label}=... of at least 1",
                )
        self.plugin = plugin
        self.name = plugin if isinstance(plugin, str) else plugin_name(plugin)
        self.options = dict(options or {})
        self.seed = seed
        self._model = model
        self._loaded: PluginManager | None = None
        self._input_shape = tuple(input_shape)
        self._n_classes = n_classes
        gen = torch.Generator().manual_seed(seed)

        def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            y = torch.randperm(n, generator=gen) % n_classes  # every class, when n allows
            return torch.randn(n, *self._input_shape, generator=gen), y

        self._batches = [batch(batch_size) for _ in range(steps)]
        self._probe = batch(2 * batch_size)

    def __repr__(self) -> str:
        return f"PluginTester({self.name!r}, options={self.options!r})"

    # ------------------------------------------------------------ helpers
    def _fail(self, what: str, problems: list[str]) -> None:
        if problems:
            raise AssertionError(f"plugin {self.name!r} {what}:\n  - " + "\n  - ".join(problems))

    def _manager(self) -> PluginManager:
        """A plugin manager with only this plugin (built once per tester)."""
        if self._loaded is None:
            try:
                self._loaded = build_plugin_manager(enable=[self.plugin])
            except PluginLoadError as err:
                raise AssertionError(f"plugin {self.name!r} does not load: {err}") from err
        return self._loaded

    def new_model(self) -> nn.Module:
        """A fresh copy of the test model (the same weights every time)."""
        if self._model is not None:
            return copy.deepcopy(self._model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return small_mlp(self._input_shape, self._n_classes)

    def _session(
        self,
        model: nn.Module,
        records: list[tuple[str, Any, Any]] | None = None,
        sinks: Sequence[RecordingSink] = (),
    ) -> Session:
        return Session(
            model,
            plugins=[self.plugin],
            options={self.name: self.options} if self.options else None,
            n_train=len(self._batches) * len(self._batches[0][1]),
            seed=self.seed,
            sinks=sinks,
            observers=[_recorder(records)] if records is not None else (),
        )

    def _drive(self, session: Session) -> Iterator[None]:
        """Train ``steps`` steps and end an epoch with the probe set, yielding after each."""
        params = [p for p in session.model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params or [torch.zeros(1, requires_grad=True)], lr=0.05)
        for step, (x, y) in enumerate(self._batches):
            reseed(self.seed + step)
            loss = session.loss(session.model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            session.step_end()
            yield
        reseed(self.seed + len(self._batches))
        session.epoch_end(probe=self._probe)
        yield

    @contextlib.contextmanager
    def _sandbox(self, what: str) -> Iterator[None]:
        """Temporary cwd, restored RNGs; an unexpected error becomes an AssertionError."""
        with (
            tempfile.TemporaryDirectory(prefix="infoshape-plugintest-") as tmp,
            contextlib.chdir(tmp),
            isolated_rng(),
        ):
            try:
                yield
            except AssertionError:
                raise
            except Exception as err:
                raise AssertionError(
                    f"plugin {self.name!r}: {what} raised {type(err).__name__}: {err}"
                ) from err

    # ------------------------------------------------------------- checks
    def check_loads(self) -> None:
        """The plugin registers through ``build_plugin_manager``, every hook marked and named."""
        manager = self._manager()
        info = next(iter(manager.infos.values()))
        problems = []
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", info.name):
            problems.append(
                f"its name {info.name!r} is no identifier (options are written "
                "<name>.<option>); set a `name` attribute such as 'my_method'"
            )
        if not info.hooks:
            problems.append("it implements no infoshape_* hook (see infoshape.hookspecs)")
        marked = {caller.name for caller in manager.get_hookcallers(info.plugin) or []}
        unmarked = [h for h in info.hooks if h not in marked]
        if unmarked:
            problems.append(
                f"{', '.join(unmarked)} lack(s) @infoshape.hookimpl, so they are never "
                "called; decorate them"
            )
        self._fail("does not load cleanly", problems)

    def check_config(self) -> None:
        """``Config`` (if any) is a frozen attrs class whose instance round-trips through JSON."""
        config_cls = getattr(next(iter(self._manager().infos.values())).plugin, "Config", None)
        if config_cls is None:
            if self.options:
                raise AssertionError(f"plugin {self.name!r} takes options but has no Config")
            return
        if not (inspect.isclass(config_cls) and attrs.has(config_cls)):
            raise AssertionError(
                f"plugin {self.name!r}: Config is {config_cls!r}, not an attrs class; "
                "declare it with @attrs.frozen(kw_only=True)"
            )
        try:
            config = build_config(self.name, config_cls, self.options)
        except PluginLoadError as err:
            raise AssertionError(
                f"plugin {self.name!r}: its Config cannot be built from options "
                f"{self.options!r}: {err}; give every option a default"
            ) from err
        problems = []
        fields = attrs.fields(config_cls)
        if fields:
            try:
                setattr(config, fields[0].name, getattr(config, fields[0].name))
                problems.append("Config is mutable; declare it with @attrs.frozen(kw_only=True)")
            except attrs.exceptions.FrozenInstanceError:
                pass
        data = attrs.asdict(config)
        for key, value in data.items():
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                problems.append(
                    f"option {key!r} = {value!r} does not serialize to JSON (the run manifest, "
                    "the CLI and TOML files need it); use str, int, float, bool, lists or None"
                )
        if not problems:
            again = build_config(self.name, config_cls, json.loads(json.dumps(data)))
            if again != config:
                problems.append(f"Config does not round-trip through JSON: {config!r} -> {again!r}")
        self._fail("has a Config that does not conform", problems)

    def check_hook_types(self) -> None:
        """Every hook returns its declared type during a real training run and registry look-up."""
        records: list[tuple[str, Any, Any]] = []
        error: Exception | None = None
        with self._sandbox("a training run"):
            try:
                with self._session(self.new_model(), records) as session:
                    for _ in self._drive(session):
                        pass
                    session.epoch_end()  # no probe set: empty captures, outputs None
                    for hook in ("infoshape_estimators", "infoshape_datasets"):
                        for result in getattr(session.manager.hook, hook)():
                            records.append((hook, result, None))
            except Exception as err:
                error = err
        problems = [
            p for hook, result, stage in records for p in result_problems(hook, result, stage)
        ]
        if error is not None:
            problems.append(f"the session raised {type(error).__name__}: {error}")
        self._fail("returns values of the wrong type from its hooks", problems)

    def _home_modules(self) -> list[types.ModuleType]:
        obj = self.plugin
        names = set()
        if isinstance(obj, str):
            ep = installed_plugins().get(obj)
            if ep is None:
                raise AssertionError(f"plugin {obj!r} is not installed")
            names.add(ep.module)
            obj = ep.load()
        module = (
            obj
            if isinstance(obj, types.ModuleType)
            else inspect.getmodule(obj if inspect.isclass(obj) else type(obj))
        )
        if module is not None:
            names.add(module.__name__)
        for name in list(names):
            if hasattr(sys.modules.get(name), "__path__"):  # a package: its submodules too
                names.update(m for m in sys.modules if m.startswith(name + "."))
        return [sys.modules[n] for n in sorted(names) if n in sys.modules]

    def check_no_module_state(self) -> None:
        """Two sessions change no module global and no class attribute of the plugin's modules."""
        modules = self._home_modules()
        before = snapshot_state(modules)
        with self._sandbox("two sessions in turn"):
            for _ in range(2):
                with self._session(self.new_model()) as session:
                    for _ in self._drive(session):
                        pass
        changed = diff_snapshots(before, snapshot_state(modules))
        self._fail(
            "keeps module-level state (keep it on the plugin instance, which each session "
            "creates; two sessions would otherwise interfere)",
            changed,
        )

    def check_sessions_independent(self) -> None:
        """Two sessions side by side get distinct plugin objects and the metrics of one alone.

        The global RNGs are reseeded before each step of each session, so a plugin that
        draws random numbers still gives equal metrics; metrics must not depend on time.
        """
        alone, first, second = RecordingSink(), RecordingSink(), RecordingSink()
        problems = []
        with self._sandbox("two sessions side by side"):
            with self._session(self.new_model(), sinks=[alone]) as session:
                for _ in self._drive(session):
                    pass
            with (
                self._session(self.new_model(), sinks=[first]) as one,
                self._session(self.new_model(), sinks=[second]) as two,
            ):
                a, b = one.plugins[self.name].plugin, two.plugins[self.name].plugin
                if a is b and not isinstance(a, types.ModuleType) and a is not self.plugin:
                    problems.append(
                        f"both sessions got the same plugin object {a!r}; point the entry "
                        "point at the class (instantiated per session), not an instance"
                    )
                for _ in itertools.zip_longest(self._drive(one), self._drive(two)):
                    pass
        problems += compare_runs(alone.rows, first.rows, "run alone", "run beside another")
        self._fail("lets sessions share state", problems)

    def check_hooks_removed(self) -> None:
        """No forward/backward hook is left on any module after close, also after an error."""
        problems = []
        with self._sandbox("a session"):
            model = self.new_model()
            before = hook_counts(model)
            with self._session(model) as session:
                for _ in self._drive(session):
                    pass
            if (after := hook_counts(model)) != before:
                problems.append(f"after close: {hook_diff(before, after)}")
            model = self.new_model()
            before = hook_counts(model)
            try:
                with self._session(model) as session:
                    x, y = self._batches[0]
                    session.loss(session.model(x), y)
                    raise _Injected("raised inside the with block by PluginTester")
            except _Injected:
                pass
            if (after := hook_counts(model)) != before:
                problems.append(f"after an exception in the with block: {hook_diff(before, after)}")
        self._fail("leaves hooks on the model (remove them in infoshape_session_end)", problems)

    def check_gradient(self) -> None:
        """The loss and each penalty with a graph send finite gradients to the model."""
        problems: list[str] = []
        x, y = self._batches[0]
        model = self.new_model()
        baseline = copy.deepcopy(model)
        try:
            F.cross_entropy(baseline(x), y).backward()
            needed = {n for n, p in baseline.named_parameters() if p.grad is not None}
        except Exception:  # not a classifier: expect every trainable parameter
            needed = {n for n, p in model.named_parameters() if p.requires_grad}
        records: list[tuple[str, Any, Any]] = []
        with self._sandbox("a training step"), self._session(model, records) as session:
            loss = session.loss(session.model(x), y)
            params = [p for p in session.model.parameters() if p.requires_grad]
            penalties = [
                p
                for hook, result, _ in records
                if hook == "infoshape_penalty"
                for p in result
                if isinstance(p, Penalty)
            ]
            for penalty in penalties:
                problems += penalty_gradient_problems(penalty, params)
            if not loss.requires_grad:
                problems.append("the loss has no autograd graph (an objective was detached?)")
            else:
                loss.backward()
                named = dict(model.named_parameters())
                missing = sorted(n for n in needed if named[n].grad is None)
                if missing:
                    problems.append(f"no gradient reaches {', '.join(missing)}")
                bad = sorted(
                    n
                    for n, p in named.items()
                    if p.grad is not None and not bool(torch.isfinite(p.grad).all())
                )
                if bad:
                    problems.append(f"non-finite gradients in {', '.join(bad)}")
        self._fail("breaks the gradient", problems)

    def skip_reason(self, check: str) -> str | None:
        """Why ``check`` has nothing to check for this plugin, or ``None`` when it applies."""
        if check == "check_config" and not self.options:
            plugin = next(iter(self._manager().infos.values())).plugin
            if getattr(plugin, "Config", None) is None:
                return "the plugin has no Config (it takes no options)"
        return None

    def check_all(self, *, raise_on_failure: bool = True, echo: bool = True) -> CheckReport:
        """Run every check; print what was checked; raise one error listing every failure.

        Args:
            raise_on_failure: raise ``AssertionError`` (every failure listed) when a check
                failed; ``False``: only return the report.
            echo: print :meth:`CheckReport.summary` (one line per check, the counts).

        Returns:
            a :class:`~infoshape.testing.check_report.CheckReport`: each check's name,
            status (passed, failed, or skipped with the reason) and duration.
        """
        report = run_checks(self.name, {c: getattr(self, c) for c in self.checks}, self.skip_reason)
        if echo:
            print(report.summary())
        if raise_on_failure and not report.ok:
            raise AssertionError(
                f"{len(report.failures)} of {len(self.checks)} conformance checks failed for "
                f"plugin {self.name!r}:\n\n"
                + "\n\n".join(f"{r.name}: {r.reason}" for r in report.failures)
            )
        return report
