"""The :class:`Session`: the one object a training loop talks to.

It owns the plugin manager, the (possibly wrapped) model, the capture, the
store and the metric sinks::

    with infoshape.Session(model, plugins=["shade"], store="runs/a.zarr",
                           n_train=len(train_set)) as s:
        for epoch in range(epochs):
            for x, y in loader:
                loss = s.loss(s.model(x), y)      # objective + weighted penalties
                loss.backward(); opt.step(); opt.zero_grad()
                s.step_end()
            s.epoch_end(probe=(x_probe, y_probe))
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
import platform
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np
import torch
from torch import nn

from infoshape import distributed
from infoshape.capture import Capture, Tap
from infoshape.errors import (
    CaptureError,
    ConfigError,
    InfoshapeError,
    NonFiniteError,
    PluginHookError,
    PluginLoadError,
    TapError,
    raised_at,
    report_nonfinite,
)
from infoshape.hookspecs import MetricSink
from infoshape.metrics import FINITE, StepMetrics, capture_sums, first_nonfinite, visible
from infoshape.objective import Penalty, cross_entropy
from infoshape.options import build_config, config_as_dict
from infoshape.plugin_manager import PluginInfo, PluginManager, build_plugin_manager
from infoshape.probe import Probe, as_probe, run_probe
from infoshape.store import RunStore, location
from infoshape.syntax import option_syntax, plugin_syntax

__all__ = ["Session"]

Stage = Literal["step", "epoch"]
STAGES: tuple[Stage, ...] = ("step", "epoch")


class Session:
    """Capture, penalties, metrics and storage for one training run.

    Args:
        model: the model being trained. Use ``session.model`` in the training loop:
            it is the same object unless a plugin wrapped it.
        plugins: entry-point names and/or plugin objects (modules, classes, instances).
        options: per-plugin options, ``{"shade": {"beta": 0.1}}``, validated against each
            plugin's ``Config`` attrs class.
        store: path of the zarr store to write (``None``: no store), or an fsspec URL
            (``"s3://bucket/runs/a.zarr"``, ``"gs://..."``, ``"memory://a.zarr"``).
        n_train: number of training samples (some penalties divide by it).
        taps: extra taps requested by the user (e.g. to store a layer), besides the plugins'.
        seed: the run's seed, recorded in the manifest (the session does not seed torch).
        on_nonfinite: NaN/Inf in captures, penalties and the loss: ``"raise"`` (stop with
            the first step, the tap or the penalty and its plugin named), ``"warn"``,
            ``"ignore"``, or ``"skip"``: leave a non-finite penalty out of that step's loss
            with a warning (and count it in the metric ``nonfinite.skipped``); a
            non-finite objective still raises.
        log_every: steps whose metrics are held on the device before they are read back
            to the host in one copy and written to the sinks, one row per step (also at
            epoch end and close). No value is read back inside a step, so a GPU's queue
            never stalls for them. The finite checks (``on_nonfinite``) run on those
            values then, naming the first step that failed.
        check_every: ``1`` checks captures, penalties and the loss in every step, before
            :meth:`loss` returns, and stops at once (one host sync per step: on a GPU this
            costs the queue's depth in every step); ``None`` (default) checks at each
            ``log_every`` flush. ``on_nonfinite="skip"`` needs the value in the step, so
            it always checks every step.
        overwrite: replace an existing store at ``store``.
        resume: a :meth:`state_dict` (from a checkpoint) to continue from: the store at
            ``store`` is reopened for appending (rows of later epochs/steps, e.g. a killed
            run's partial epoch, are dropped) and the plugins' state is restored.
        run_config: extra run configuration recorded in the manifest (the CLI's flags).
        probe_batch_size: batch size of the probe pass at epoch end.
        sinks: extra metric sinks besides those the plugins supply.
        store_options: options of the store writer :class:`~infoshape.store.RunStore`:
            ``queue_size`` (pending writes before training waits), ``codec``
            (``"none"``, ``"lz4"``, ``"zstd"``), ``flush_steps``, ``store_probe_inputs``.
        storage_options: options of the fsspec filesystem of a URL ``store``
            (``{"key": ..., "secret": ..., "client_kwargs": {"endpoint_url": ...}}`` for
            S3); never written to the store's manifest.

    Under ``torch.distributed`` (DDP) each rank runs a session on its own batches;
    see :mod:`infoshape.distributed` for how taps, the probe set, metrics and the
    store behave then. A plugin raising inside a hook ends the session (hooks
    removed, store closed with status ``"failed"``) and surfaces as
    :class:`PluginHookError` naming the plugin and the hook. A ``KeyboardInterrupt``
    (Ctrl-C) leaving the ``with`` block closes the store with status ``"interrupted"``.

    Raises:
        PluginLoadError: a plugin is missing, broken, or given an invalid option.
        TapError: a tap matches no module.
        StoreError: the store path holds something else, or (``resume``) a store of
            another run.
    """

    def __init__(
        self,
        model: nn.Module,
        plugins: Sequence[str | Any] = (),
        options: Mapping[str, Mapping[str, Any]] | None = None,
        store: str | Path | None = None,
        n_train: int | None = None,
        *,
        taps: Iterable[Tap] = (),
        seed: int | None = None,
        on_nonfinite: Literal["raise", "warn", "ignore", "skip"] = "raise",
        overwrite: bool = False,
        run_config: Mapping[str, Any] | None = None,
        probe_batch_size: int = 512,
        sinks: Iterable[MetricSink] = (),
        resume: Mapping[str, Any] | None = None,
        store_options: Mapping[str, Any] | None = None,
        storage_options: Mapping[str, Any] | None = None,
        log_every: int = 50,
        check_every: Literal[1] | None = None,
    ) -> None:
        if on_nonfinite not in ("raise", "warn", "ignore", "skip"):
            raise ConfigError(
                "unknown on_nonfinite policy",
                expected='"raise", "warn", "ignore" or "skip"',
                got=repr(on_nonfinite),
                fix='on_nonfinite="skip" leaves non-finite penalties out of the loss',
            )
        if not isinstance(log_every, int) or isinstance(log_every, bool) or log_every < 1:
            raise ConfigError(
                "log_every must be a positive number of steps",
                expected="an int >= 1 (default 50)",
                got=repr(log_every),
                fix="log_every=50 reads step metrics back every 50 steps",
            )
        if check_every not in (None, 1):
            raise ConfigError(
                "check_every is 1 or None",
                expected="1 (check every step, one host sync each) or None (at each flush)",
                got=repr(check_every),
                fix="use log_every to read values back more often",
            )
        self.n_train = n_train
        self.seed = seed
        self.on_nonfinite = on_nonfinite
        self.probe_batch_size = probe_batch_size
        self._store_options = dict(store_options or {})
        if storage_options:
            self._store_options["storage_options"] = dict(storage_options)
        self.step = 0
        self.epoch = 0
        self.closed = False
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.manager: PluginManager = build_plugin_manager(enable=plugins)
        self.plugins: dict[str, PluginInfo] = dict(self.manager.infos)
        self.configs: dict[str, Any] = {}
        self._model = model
        self._capture: Capture | None = None
        self._sinks: list[MetricSink] = list(sinks)
        self._store: RunStore | None = None
        self._pending: dict[str, torch.Tensor] = {}
        self._steps = StepMetrics(log_every)
        # checks in the step itself (a host sync each): asked for, or needed by "skip"
        self._check_in_step = check_every == 1 or on_nonfinite == "skip"
        self._penalty_plugins: dict[str, str] = {}  # penalty metric -> its plugin
        self._logged: dict[str, dict[str, Any]] = {stage: {} for stage in STAGES}
        self._last: tuple[Mapping[str, torch.Tensor], Any, Any, Any] | None = None
        try:
            self._start(options or {}, taps, store, overwrite, run_config, resume)
            if resume is not None:
                self.load_state_dict(resume)
        except BaseException:
            self.close(status="failed")
            raise

    # ---------------------------------------------------------------- start
    def _start(self, options, user_taps, store, overwrite, run_config, resume) -> None:
        unknown = sorted(set(options) - set(self.plugins))
        if unknown:
            raise PluginLoadError(
                unknown[0],
                "has options but is not enabled",
                expected=f"options only for enabled plugins: {', '.join(self.plugins) or '(none)'}",
                got=", ".join(unknown),
                fix=f"enable it ({plugin_syntax(unknown[0])}) or remove its options",
            )
        for name, info in self.plugins.items():
            config = build_config(name, getattr(info.plugin, "Config", None), options.get(name))
            self.configs[name] = config
        self._call_each("infoshape_configure", lambda name: {"config": self.configs[name]})
        self._wrap_model()
        taps = list(user_taps)
        for name, result in self._call_each("infoshape_taps"):
            taps.extend(self._plugin_taps(name, result))
        policy = "warn" if self.on_nonfinite == "skip" else self.on_nonfinite
        if not self._check_in_step:  # captures are checked by their sums at the flush
            policy = "ignore"
        self._capture = Capture(self.module, taps, on_nonfinite=policy).attach()
        if store is not None:  # before the sinks hook, so sinks can sit beside the store
            self._store = RunStore(
                distributed.rank_store_path(store, self.rank),
                manifest=self._manifest(run_config, store),
                overwrite=overwrite,
                resume=resume,
                **self._store_options,
            )
            if self.rank == 0:
                self._sinks.insert(0, self._store)
        if self.rank == 0:  # metrics are reduced across ranks and written by rank 0
            for name, result in self._call_each("infoshape_sinks"):
                self._sinks.extend(self._checked_list(name, "infoshape_sinks", result, MetricSink))

    def _plugin_taps(self, plugin: str, result: Any) -> list[Tap]:
        """A plugin's taps, each matching a module: else a TapError naming the plugin."""
        taps = self._checked_list(plugin, "infoshape_taps", result, Tap)
        for tap in taps:
            try:
                tap.select(self.module)
            except TapError as err:
                raise self._tap_error(plugin, err) from err
        return taps

    def _tap_error(self, plugin: str, err: TapError) -> TapError:
        """``err`` (a tap of ``plugin`` that matches no module) with the plugin named."""
        config = type(self.configs.get(plugin))  # NoneType for a plugin without options
        layers = attrs.has(config) and "layers" in attrs.fields_dict(config)
        names = [n for n, _ in self.module.named_modules() if n]
        example = option_syntax(plugin, "layers", names[-1:])
        fix = f"name the modules to tap: {example}, " if layers else ""
        return TapError(
            f"plugin {plugin!r}: {err.problem}",
            expected=f"a module of the model for plugin {plugin!r} to tap",
            got=f"modules {', '.join(names[:20]) or '(none)'}",
            fix=f"{fix}or disable {plugin!r} for this model",
        )

    def _manifest(self, run_config: Mapping[str, Any] | None, store: Any) -> dict[str, Any]:
        import xarray
        import zarr

        from infoshape import __version__

        run_id = [uuid.uuid4().hex]
        extra: dict[str, Any] = {}
        if distributed.is_distributed():  # one run id for the stores of all ranks
            import torch.distributed as dist

            dist.broadcast_object_list(run_id, src=0)
            extra["distributed"] = {
                "rank": self.rank,
                "world_size": self.world_size,
                "backend": str(dist.get_backend()),
                "probe_sharding": "strided",
                "rank_stores": [
                    location.name_of(distributed.rank_store_path(store, r))
                    for r in range(self.world_size)
                ],
            }
        return {
            "run_id": run_id[0],
            **extra,
            "infoshape_version": __version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "seed": self.seed,
            "n_train": self.n_train,
            "plugins": [
                {
                    "name": name,
                    "version": info.version,
                    "distribution": info.distribution,
                    "options": config_as_dict(self.configs.get(name)),
                }
                for name, info in self.plugins.items()
            ],
            "config": dict(run_config or {}),
            "model": type(self._model).__name__,
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "zarr": zarr.__version__,
                "xarray": xarray.__version__,
                "numpy": np.__version__,
            },
        }

    # ------------------------------------------------------------- plugins
    def _call_each(
        self,
        hook: str,
        kwargs_for: Callable[[str], Mapping[str, Any]] | None = None,
        first: bool = False,
        **kwargs: Any,
    ) -> list[tuple[str, Any]]:
        """Call ``hook`` on each plugin in enabling order; return (plugin, result) pairs.

        ``kwargs_for(plugin)`` adds per-plugin arguments. With ``first``, stop at the
        first non-None result.
        """
        results = []
        for impl in self._ordered_impls(hook):
            extra = kwargs_for(impl.plugin_name) if kwargs_for else {}
            result = self._call_impl(impl, hook, {**kwargs, **extra})
            if result is not None:
                results.append((impl.plugin_name, result))
                if first:
                    break
        return results

    def _call_impl(self, impl: Any, hook: str, kwargs: Mapping[str, Any]) -> Any:
        """Call one hook implementation; its exception becomes a :class:`PluginHookError`."""
        args = {"session": self, **kwargs}
        try:
            return impl.function(*[args[a] for a in impl.argnames])
        except (PluginHookError, NonFiniteError):
            raise
        except Exception as err:
            # the run cannot go on with a broken plugin: remove hooks, close the store
            self.close(status="failed")
            raise PluginHookError(
                impl.plugin_name,
                hook,
                f"raised {type(err).__name__}: {err}",
                expected="the hook to return normally",
                got=f"{type(err).__name__} at step {self.step}, epoch {self.epoch}, "
                f"raised in {raised_at(err)}",
                fix=f"{_remedy(err)}, or disable {impl.plugin_name!r} to run without it "
                "(the session is closed, its store marked failed)",
            ) from err

    def _wrap_model(self) -> None:
        """Apply each plugin's ``infoshape_wrap_model`` in turn to the current model."""
        for impl in self._ordered_impls("infoshape_wrap_model"):
            wrapped = self._call_impl(impl, "infoshape_wrap_model", {"model": self._model})
            if wrapped is None:
                continue
            if not isinstance(wrapped, nn.Module):
                raise PluginHookError(
                    impl.plugin_name,
                    "infoshape_wrap_model",
                    "returned no nn.Module",
                    expected="an nn.Module or None",
                    got=type(wrapped).__name__,
                )
            self._model = wrapped

    def _ordered_impls(self, hook: str) -> list[Any]:
        """Hook implementations in the order the plugins were enabled.

        ``tryfirst`` implementations come before, ``trylast`` ones after the rest.
        """
        impls = getattr(self.manager.hook, hook).get_hookimpls()
        return (
            [i for i in impls if i.tryfirst]
            + [i for i in impls if not (i.tryfirst or i.trylast)]
            + [i for i in impls if i.trylast]
        )

    @staticmethod
    def _checked_list(plugin: str, hook: str, result: Any, kind: type) -> list[Any]:
        items = list(result) if isinstance(result, (list, tuple)) else [result]
        for item in items:
            if not isinstance(item, kind):
                raise PluginHookError(
                    plugin,
                    hook,
                    "returned an item of the wrong type",
                    expected=f"a list of {kind.__name__}",
                    got=type(item).__name__,
                )
        return items

    # --------------------------------------------------------------- access
    @property
    def model(self) -> nn.Module:
        """The model to train: the user's model, or what plugins wrapped it into."""
        return self._model

    @property
    def module(self) -> nn.Module:
        """The model without a ``DistributedDataParallel`` wrapper: taps resolve on it."""
        return distributed.unwrap(self._model)

    @property
    def store(self) -> RunStore | None:
        """The run's store writer, if any."""
        return self._store

    def config_of(self, plugin: str) -> Any:
        """The validated config instance of an enabled plugin."""
        return self.configs[plugin]

    def capture_names(self, tap: Tap) -> list[str]:
        """The capture names ``tap`` resolved to (one per matched module)."""
        assert self._capture is not None
        return list(self._capture.names_of[tap])

    @property
    def captures(self) -> Mapping[str, torch.Tensor]:
        """The tensors captured in the latest forward pass."""
        assert self._capture is not None
        return self._capture.tensors

    # ------------------------------------------------------------ training
    def loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The batch's loss: the objective plus every plugin's weighted penalties.

        Args:
            outputs: the model's output on the batch (``session.model(x)``).
            targets: the batch's labels.
            index: optional data-set indices of the batch's samples (kept with streamed taps).

        Returns:
            a scalar tensor with its graph, ready for ``backward()``.
        """
        self._require_open()
        self._check_batch(outputs, targets)
        captures = dict(self.captures)
        objective = self._call_each(
            "infoshape_objective", first=True, outputs=outputs, targets=targets
        )
        base = objective[0][1] if objective else cross_entropy(outputs, targets)
        self._pending = {"loss.objective": base.detach()}
        if self.on_nonfinite == "skip":  # on every step: ranks reduce the same metrics
            self._pending["nonfinite.skipped"] = torch.zeros(())
        terms: list[tuple[str, str, torch.Tensor]] = []  # (plugin, metric, weighted value)
        for plugin, result in self._call_each(
            "infoshape_penalty", captures=captures, outputs=outputs, targets=targets
        ):
            for penalty in self._checked_list(plugin, "infoshape_penalty", result, Penalty):
                value = penalty.value
                if not isinstance(value, torch.Tensor) or value.numel() != 1:
                    raise PluginHookError(
                        plugin,
                        "infoshape_penalty",
                        f"penalty {penalty.name!r} is not a scalar",
                        expected="a tensor with one element",
                        got=repr(getattr(value, "shape", type(value).__name__)),
                    )
                terms.append(
                    (plugin, f"penalty.{penalty.name}", penalty.weight * value.reshape(()))
                )
                self._pending[f"penalty.{penalty.name}"] = value.detach().reshape(())
                self._penalty_plugins[f"penalty.{penalty.name}"] = plugin
        total = base + sum(term for _, _, term in terms) if terms else base
        if self.on_nonfinite != "ignore":
            if self._check_in_step and not math.isfinite(total.detach().item()):  # one sync
                total = self._nonfinite_loss(base, terms)
            elif not self._check_in_step:  # checked at the flush, by their sums
                self._pending.update(capture_sums(captures))
        self._pending["loss"] = total.detach()
        self._last = (captures, outputs, targets, index)
        return total

    def _check_batch(self, outputs: Any, targets: Any) -> None:
        """Refuse an empty batch and a batch whose taps captured nothing."""
        size = outputs.shape[0] if isinstance(outputs, torch.Tensor) and outputs.ndim else None
        if size == 0 or (isinstance(targets, torch.Tensor) and targets.numel() == 0):
            raise ConfigError(
                f"an empty batch at step {self.step}",
                expected="a batch of at least one sample",
                got=f"outputs of shape {tuple(getattr(outputs, 'shape', ()))}, targets of "
                f"shape {tuple(getattr(targets, 'shape', ()))}",
                fix="skip empty batches (DataLoader(drop_last=True) avoids a short last one)",
            )
        assert self._capture is not None
        tensors = self._capture.tensors
        missing = [
            r
            for r in self._capture.resolved
            if any(n not in tensors for n in self._capture.names(r))
        ]
        if missing and self._capture.tensors:  # the model ran, but some tapped module did not
            self._raise_not_called(missing, "the training forward pass")

    def _raise_not_called(self, missing: Sequence[Any], where: str) -> None:
        raise CaptureError(
            f"tapped module {missing[0].module!r} was never called in {where}",
            expected="every tapped module runs in the model's forward",
            got=f"no capture for {', '.join(repr(r.name) for r in missing)}",
            fix="tap a module the forward pass uses (named_modules() also lists unused "
            "ones), or call the model through session.model before session.loss",
        )

    def _nonfinite_loss(
        self, base: torch.Tensor, terms: list[tuple[str, str, torch.Tensor]]
    ) -> torch.Tensor:
        """Name the non-finite parts of the loss; raise, warn, or leave bad penalties out."""
        bad = [(plugin, name) for plugin, name, term in terms if not bool(torch.isfinite(term))]
        parts = [f"{name} of plugin {plugin!r}" for plugin, name in bad]
        values = [f"{name}={float(self._pending[name])}" for _, name in bad]
        if not bool(torch.isfinite(base)):
            parts.insert(0, "the objective")
            values.insert(0, f"loss.objective={float(base.detach())}")
        if parts[0] == "the objective" or self.on_nonfinite != "skip":
            report_nonfinite(
                "raise" if self.on_nonfinite == "skip" else self.on_nonfinite,
                f"the loss is not finite at step {self.step} ({'; '.join(parts)})",
                expected="a finite objective and finite penalties",
                got=", ".join(values),
                fix="lower the learning rate or the penalty weight; on_nonfinite='skip' leaves "
                "non-finite penalties out of the loss, 'warn' continues",
            )
            return base + sum(term for _, _, term in terms)
        self._pending["nonfinite.skipped"] = torch.tensor(float(len(bad)))
        warnings.warn(
            f"step {self.step}: left {', '.join(parts)} out of the loss ({', '.join(values)}); "
            "on_nonfinite='skip'",
            RuntimeWarning,
            stacklevel=3,
        )
        kept = [term for plugin, name, term in terms if (plugin, name) not in bad]
        return base + sum(kept) if kept else base

    def step_end(self) -> None:
        """Close a training step: keep its metrics, store streamed taps, run ``step_end`` hooks.

        The step's metrics stay on the device; every ``log_every`` steps they are read
        back in one copy and written to the sinks, one row per step (:meth:`flush_steps`).
        """
        self._require_open()
        metrics: dict[str, Any] = dict(self._pending)
        if self._last is not None:
            captures, outputs, targets, index = self._last
            detached = {k: v.detach() for k, v in captures.items()}
            for plugin, result in self._call_each(
                "infoshape_metrics",
                captures=detached,
                outputs=outputs.detach() if isinstance(outputs, torch.Tensor) else outputs,
                targets=targets,
                stage="step",
            ):
                metrics.update(self._checked_metrics(plugin, result))
            if self._store is not None:
                self._store_stream(detached, targets, index)
        self._steps.add(self.step, {**self._logged["step"], **metrics})
        self._logged["step"] = {}
        self._call_each("infoshape_step_end", step=self.step)
        self._pending = {}
        self._last = None
        if self._capture is not None:
            self._capture.clear()
        self.step += 1
        if self._steps.full:
            self.flush_steps()

    def flush_steps(self) -> None:
        """Read the held step metrics back (one copy), check them, write them to the sinks.

        Called every ``log_every`` steps, at epoch end and at close. Rows are written in
        step order; with ``on_nonfinite="raise"`` the rows before the first step holding
        a non-finite loss, penalty or capture are written, then :class:`NonFiniteError`
        names that step and what failed.
        """
        rows = self._steps.drain()
        bad = None
        if self.on_nonfinite != "ignore" and not self._check_in_step:
            bad = first_nonfinite(rows)
        stop = len(rows)
        if bad is not None and self.on_nonfinite == "raise":
            stop = next(i for i, (index, _) in enumerate(rows) if index == bad[0])
        for index, row in rows[:stop]:
            self._emit(visible(row), stage="step", index=index)
        if bad is not None:
            self._report_nonfinite_step(*bad)

    def _report_nonfinite_step(self, step: int, names: list[str], values: dict) -> None:
        """Raise or warn (``on_nonfinite``) for the first step with NaN/Inf values."""
        assert self._capture is not None
        where = {
            name: f"tap {name!r} ({r.module}, {r.point})"
            for r in self._capture.resolved
            for name in self._capture.names(r)
        }
        parts, got = [], []
        order = {FINITE: 0, "penalty.": 1, "loss.objective": 2, "loss": 3}
        names = sorted(names, key=lambda n: next(v for k, v in order.items() if n.startswith(k)))
        if len(names) > 1 and names[-1] == "loss":  # the total adds nothing to its parts
            names = names[:-1]
        for name in names:
            if name.startswith(FINITE):
                capture = name.removeprefix(FINITE)
                parts.append(where.get(capture, f"capture {capture!r}"))
                got.append(f"{capture} holds NaN/Inf")
            else:
                plugin = self._penalty_plugins.get(name)
                parts.append(f"{name} of plugin {plugin!r}" if plugin else name)
                got.append(f"{name}={values[name]}")
        report_nonfinite(
            self.on_nonfinite,
            f"non-finite values at step {step}: {'; '.join(parts)}",
            expected="finite activations, a finite objective and finite penalties",
            got=", ".join(got),
            fix="lower the learning rate or the penalty weight; check_every=1 stops in the "
            "step itself, on_nonfinite='warn' continues",
        )

    def _store_stream(self, captures, targets, index) -> None:
        assert self._capture is not None and self._store is not None
        taps = {
            name: r
            for r in self._capture.resolved
            if r.tap.store_mode in ("stream", "both") and self.step % r.tap.stream_every == 0
            for name in self._capture.names(r)
        }
        if not taps:
            return
        self._store.write_stream(
            self.step,
            {n: captures[n] for n in taps if n in captures},
            labels=targets,
            index=index,
            taps={n: (r.module, r.point, r.tap) for n, r in taps.items()},
        )

    def epoch_end(self, probe: Probe | tuple | None = None) -> dict[str, Any]:
        """Close an epoch: pass the probe set, store probe taps, emit epoch metrics.

        Args:
            probe: ``None``, ``(x, y)``, ``(x, y, sample_index)`` or a :class:`Probe`.
                Without a probe set only epoch metrics that need none are emitted.

        Returns:
            the epoch's metrics (name to value).
        """
        self._require_open()
        assert self._capture is not None
        self.flush_steps()
        metrics: dict[str, Any] = {}
        captures: Mapping[str, torch.Tensor] = {}
        outputs = targets = None
        if probe is not None:
            probe_set = self._own_shard(as_probe(probe))
            captures, outputs = run_probe(
                self.module, self._capture, probe_set, self.probe_batch_size
            )
            missing = [
                r
                for r in self._capture.resolved
                if any(n not in captures for n in self._capture.names(r))
            ]
            if missing:
                self._raise_not_called(missing, "the probe pass")
            targets = probe_set.y
            if self._store is not None:
                stored = {
                    name: (r.module, r.point)
                    for r in self._capture.resolved
                    if r.tap.store_mode in ("probe", "both")
                    for name in self._capture.names(r)
                }
                if stored:
                    self._store.write_probe(
                        self.epoch, {n: captures[n] for n in stored}, probe=probe_set, taps=stored
                    )
            if self.world_size > 1:  # estimators see the whole probe set, in its order
                captures, outputs, targets = self._gather_probe(captures, outputs, targets)
        if self._store is not None:  # stream taps' reservoirs of this epoch
            self._store.end_epoch(self.epoch)
        for plugin, result in self._call_each(
            "infoshape_metrics", captures=captures, outputs=outputs, targets=targets, stage="epoch"
        ):
            metrics.update(self._checked_metrics(plugin, result))
        metrics = {**self._logged["epoch"], **metrics}
        self._logged["epoch"] = {}
        self._emit(metrics, stage="epoch")
        self._call_each("infoshape_epoch_end", epoch=self.epoch)
        self.epoch += 1
        return metrics

    def _own_shard(self, probe: Probe) -> Probe:
        """This rank's strided shard of the probe set (the whole set in one process)."""
        if probe.n == 0:
            raise ConfigError(
                "the probe set is empty",
                expected="a probe set of at least one sample",
                got=f"probe inputs of shape {tuple(probe.x.shape)}",
                fix="pass probe=(x, y) with samples, or probe=None for no probe pass",
            )
        if self.world_size == 1:
            return probe
        if probe.n < self.world_size:
            raise ConfigError(
                "the probe set is smaller than the number of ranks",
                expected=f"at least {self.world_size} probe samples (one per rank)",
                got=f"{probe.n} samples",
                fix="pass the same, larger probe set on every rank",
            )
        part = slice(self.rank, None, self.world_size)
        return Probe(
            x=probe.x[part], y=probe.y[part], sample=probe.sample_index[part], split=probe.split
        )

    def _gather_probe(self, captures, outputs, targets):
        """The probe captures, outputs and labels of all ranks, in the probe set's order."""
        gathered = [distributed.all_gather(t) for t in (*captures.values(), outputs, targets)]
        n = gathered[-1].shape[0]
        order = torch.from_numpy(np.argsort(distributed.strided_positions(n, self.world_size)))
        full = [t[order] for t in gathered]
        return dict(zip(captures, full[:-2], strict=True)), full[-2], full[-1]

    @staticmethod
    def _checked_metrics(plugin: str, result: Any) -> dict[str, Any]:
        if not isinstance(result, Mapping):
            raise PluginHookError(
                plugin,
                "infoshape_metrics",
                "returned no mapping",
                expected="a dict of metric name to value",
                got=type(result).__name__,
            )
        return dict(result)

    def state_dict(self) -> dict[str, Any]:
        """The resumable state: step, epoch, the store's ``run_id`` and each plugin's state."""
        plugins = dict(self._call_each("infoshape_state_dict"))
        state = {"step": self.step, "epoch": self.epoch, "plugins": plugins}
        if self._store is not None:  # resuming checks the store is this run's
            state["run_id"] = self._store.run_id
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`: step and epoch counters and each plugin's state.

        Raises:
            PluginLoadError: the state holds a plugin that is not enabled in this session.
        """
        self._require_open()
        saved = dict(state.get("plugins", {}))
        missing = sorted(set(saved) - set(self.plugins))
        if missing:
            raise PluginLoadError(
                missing[0],
                "has saved state but is not enabled in this session",
                expected=f"the plugins of the saved run: {sorted(saved)}",
                got=f"enabled plugins: {sorted(self.plugins)}",
                fix="enable the same plugins as the run being resumed",
            )
        for impl in self._ordered_impls("infoshape_load_state_dict"):
            if impl.plugin_name in saved:
                self._call_impl(
                    impl, "infoshape_load_state_dict", {"state": saved[impl.plugin_name]}
                )
        self.step = int(state.get("step", self.step))
        self.epoch = int(state.get("epoch", self.epoch))

    def log_metrics(self, metrics: Mapping[str, Any], stage: Stage = "epoch") -> None:
        """Add metrics to the row of the current step or epoch (e.g. test accuracy).

        They are written with that row when it closes: by :meth:`step_end` for
        ``stage="step"``, by :meth:`epoch_end` for ``stage="epoch"`` (or by :meth:`close`
        if none follows), so each step and epoch is one row in the store and the sinks.
        Values may be Python numbers, tensors, numpy arrays or ``xarray.DataArray``,
        or any of them wrapped in :class:`infoshape.distributed.Reduced`. Under
        ``torch.distributed`` every rank must log the same metrics: they are reduced
        across ranks (the mean unless ``Reduced`` says otherwise) and rank 0 writes them.
        """
        self._require_open()
        if stage not in STAGES:
            raise ConfigError("unknown metric stage", expected=" or ".join(STAGES), got=repr(stage))
        self._logged[stage].update(metrics)

    def _emit(self, metrics: Mapping[str, Any], stage: Stage, index: int | None = None) -> None:
        """Reduce ``metrics`` across ranks and write them to every sink as one row."""
        if not metrics:
            return
        if index is None:
            index = self.step if stage == "step" else self.epoch
        ops = {n: v.op for n, v in metrics.items() if isinstance(v, distributed.Reduced)}
        plain = {
            name: _plain(value.value if isinstance(value, distributed.Reduced) else value)
            for name, value in metrics.items()
        }
        if self.world_size > 1:
            plain = distributed.reduce_metrics(plain, ops)
        for sink in self._sinks:
            sink.write(stage, index, plain)

    def flush(self) -> None:
        """Write the held step metrics, then block until the store has written everything.

        Writer errors are re-raised.
        """
        if not self.closed:
            self.flush_steps()
        if self._store is not None:
            self._store.flush()

    # ------------------------------------------------------------ closing
    def close(self, status: str = "complete") -> None:
        """End the session: plugins' ``session_end``, remove hooks, close sinks and store.

        Idempotent; every step runs even when an earlier one fails (the first error is
        re-raised after all).
        """
        if self.closed:
            return
        self.closed = True
        errors: list[BaseException] = []
        store = self._store
        steps: list[Callable[[], object]] = [self.flush_steps]  # the steps still held
        if status == "complete":  # metrics logged after the last step_end / epoch_end
            steps += [functools.partial(self._emit, self._logged[st], st) for st in STAGES]
        steps.append(lambda: self._call_each("infoshape_session_end"))
        if self._capture is not None:
            steps.append(self._capture.remove)
        steps += [sink.close for sink in self._sinks if sink is not store]
        if store is not None:
            steps.append(lambda: store.close(status=status))
        for step in steps:
            try:
                step()
            except BaseException as err:
                errors.append(err)
        if errors and status == "complete":
            raise errors[0]

    def _require_open(self) -> None:
        if self.closed:
            raise InfoshapeError("this session is closed; create a new Session to go on")

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close(status="complete")
        else:  # Ctrl-C is no failure: what was stored is sound, and the run can resume
            interrupted = issubclass(exc_type, KeyboardInterrupt)
            self.close(status="interrupted" if interrupted else "failed")

    def __repr__(self) -> str:
        return (
            f"Session(plugins={list(self.plugins)}, step={self.step}, epoch={self.epoch}, "
            f"store={str(self._store.path) if self._store else None})"
        )


def _remedy(err: BaseException) -> str:
    """A fix for an exception a hook raised (its message and place are in the error)."""
    if isinstance(err, OSError) and err.filename is not None:
        return f"check that {err.filename} can be written (its folder, permissions, space)"
    if isinstance(err, InfoshapeError):
        return "follow the fix above"
    return f"remove the cause of the {type(err).__name__} (named above)"


def _plain(value: Any) -> Any:
    """A metric value as a float or a numpy array (DataArrays kept as they are)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if type(value).__name__ == "DataArray":
        return value
    array = np.asarray(value)
    if array.ndim == 0:
        return float(array) if array.dtype.kind in "fiub" else math.nan
    return array
