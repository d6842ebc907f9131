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

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from infoshape import distributed
from infoshape.capture import Capture, Tap
from infoshape.errors import ConfigError, InfoshapeError, PluginLoadError
from infoshape.hooks import HookCaller, Observer
from infoshape.hookspecs import MetricSink
from infoshape.metrics import Emitter, capture_sums, check_settings
from infoshape.objective import Term, cross_entropy, nonfinite_loss, penalty_terms, total_loss
from infoshape.plugin_manager import (
    PluginInfo,
    PluginManager,
    build_plugin_manager,
    plugin_configs,
    plugin_taps,
)
from infoshape.probe import (
    Probe,
    as_probe,
    gather_probe,
    require_captured,
    run_probe,
    shard_probe,
)
from infoshape.store import RunStore
from infoshape.store.manifest import build_manifest
from infoshape.store.taps import TapWriter

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
        observers: called after every hook call from the start on
            (:meth:`infoshape.hooks.HookCaller.observe`; ``session.hooks.observe`` later).
        storage_options: options of the fsspec filesystem of a URL ``store``
            (``{"key": ..., "secret": ..., "client_kwargs": {"endpoint_url": ...}}`` for
            S3); never written to the store's manifest.

    Under ``torch.distributed`` (DDP) each rank runs a session on its own batches;
    see :mod:`infoshape.distributed` for how taps, the probe set, metrics and the
    store behave then. A plugin raising inside a hook or a metric sink's ``write`` ends the
    session (hooks removed, store closed with status ``"failed"``, its rows kept) and surfaces
    as :class:`PluginHookError` naming the plugin and the hook. A ``KeyboardInterrupt``
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
        observers: Iterable[Observer] = (),
    ) -> None:
        check_settings(on_nonfinite, log_every, check_every)
        self.n_train, self.seed = n_train, seed
        self.on_nonfinite = on_nonfinite
        self.probe_batch_size = probe_batch_size
        self.step = self.epoch = 0
        self.closed = False
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.manager: PluginManager = build_plugin_manager(enable=plugins)
        failed = functools.partial(self.close, status="failed")  # a plugin or sink raised
        self.hooks = HookCaller(self.manager, self, on_error=failed)
        for observer in observers:
            self.hooks.observe(observer)
        self.plugins: dict[str, PluginInfo] = dict(self.manager.infos)
        self.configs: dict[str, Any] = {}
        self._model = model
        self._capture: Capture | None = None
        self._store: RunStore | None = None
        self._taps: TapWriter | None = None  # the stored taps' way into the store
        self._store_options = dict(store_options or {})
        if storage_options:
            self._store_options["storage_options"] = dict(storage_options)
        # checks in the step itself (a host sync each): asked for, or needed by "skip"
        self._check_in_step = check_every == 1 or on_nonfinite == "skip"
        held = "ignore" if self._check_in_step else on_nonfinite  # checked at each flush
        self._emitter = Emitter(
            None, sinks, log_every=log_every, on_nonfinite=held, world_size=self.world_size
        )
        self._emitter.on_error = failed
        self._pending: dict[str, torch.Tensor] = {}
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
    def _start(
        self,
        options: Mapping[str, Mapping[str, Any]],
        user_taps: Iterable[Tap],
        store: str | Path | None,
        overwrite: bool,
        run_config: Mapping[str, Any] | None,
        resume: Mapping[str, Any] | None,
    ) -> None:
        self.configs = plugin_configs(self.plugins, options)
        self.hooks.call("infoshape_configure", lambda name: {"config": self.configs[name]})
        self._model = self.hooks.pipe("infoshape_wrap_model", "model", self._model)
        taps = list(user_taps)
        for name, result in self.hooks.call("infoshape_taps"):
            taps += plugin_taps(name, result, self.module, self.configs.get(name))
        policy = "warn" if self.on_nonfinite == "skip" else self.on_nonfinite
        if not self._check_in_step:  # captures are checked by their sums at the flush
            policy = "ignore"
        self._capture = Capture(self.module, taps, on_nonfinite=policy).attach()
        self._emitter.name_captures(self._capture)
        if store is not None:  # before the sinks hook, so sinks can sit beside the store
            manifest = build_manifest(
                store=store,
                plugins=self.plugins,
                configs=self.configs,
                run_config=run_config,
                seed=self.seed,
                n_train=self.n_train,
                model=type(self._model).__name__,
            )
            self._store = RunStore(
                distributed.rank_store_path(store, self.rank),
                manifest=manifest,
                overwrite=overwrite,
                resume=resume,
                **self._store_options,
            )
            self._taps = TapWriter(self._store, self._capture)
        if self.rank == 0:  # metrics are reduced across ranks and written by rank 0
            self._emitter.store = self._store
            for plugin, result in self.hooks.call("infoshape_sinks"):
                self._emitter.add_sinks(plugin, result)

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
        objective = self.hooks.call("infoshape_objective", outputs=outputs, targets=targets)
        base = objective[0][1] if objective else cross_entropy(outputs, targets)
        self._pending = {"loss.objective": base.detach()}
        if self.on_nonfinite == "skip":  # on every step: ranks reduce the same metrics
            self._pending["nonfinite.skipped"] = torch.zeros(())
        terms: list[Term] = []
        for plugin, penalties in self.hooks.call(
            "infoshape_penalty", captures=captures, outputs=outputs, targets=targets
        ):
            terms += penalty_terms(plugin, penalties)
        for term in terms:
            self._pending[term.metric] = term.value.detach()
            self._emitter.where[term.metric] = f"{term.metric} of plugin {term.plugin!r}"
        total = total_loss(base, terms)
        if self.on_nonfinite != "ignore":
            if self._check_in_step and not math.isfinite(total.detach().item()):  # one sync
                total, skipped = nonfinite_loss(base, terms, self.on_nonfinite, self.step)
                if skipped:
                    self._pending["nonfinite.skipped"] = torch.tensor(float(skipped))
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
        if self.captures:  # the model ran, but some tapped module may not have
            require_captured(self._capture, self.captures, "the training forward pass")

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
            for _, result in self.hooks.call(
                "infoshape_metrics",
                captures=detached,
                outputs=outputs.detach() if isinstance(outputs, torch.Tensor) else outputs,
                targets=targets,
                stage="step",
            ):
                metrics.update(result)
            if self._taps is not None:
                self._taps.write_step(self.step, detached, targets, index)
        self._emitter.steps.add(self.step, {**self._logged["step"], **metrics})
        self._logged["step"] = {}
        self.hooks.call("infoshape_step_end", step=self.step)
        self._pending = {}
        self._last = None
        if self._capture is not None:
            self._capture.clear()
        self.step += 1
        if self._emitter.steps.full:
            self.flush_steps()

    def flush_steps(self) -> None:
        """Read the held step metrics back (one copy), check them, write them to the sinks.

        Called every ``log_every`` steps, at epoch end and at close. Rows are written in
        step order; with ``on_nonfinite="raise"`` the rows before the first step holding
        a non-finite loss, penalty or capture are written, then :class:`NonFiniteError`
        names that step and what failed (:meth:`infoshape.metrics.Emitter.flush_steps`).
        """
        self._emitter.flush_steps()

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
            probe_set = shard_probe(as_probe(probe), self.rank, self.world_size)
            captures, outputs = run_probe(
                self.module, self._capture, probe_set, self.probe_batch_size
            )
            targets = probe_set.y
            if self._taps is not None:
                self._taps.write_probe(self.epoch, captures, probe_set)
            if self.world_size > 1:  # estimators see the whole probe set, in its order
                captures, outputs, targets = gather_probe(
                    captures, outputs, targets, self.world_size
                )
        if self._taps is not None:  # stream taps' reservoirs of this epoch
            self._taps.end_epoch(self.epoch)
        for _, result in self.hooks.call(
            "infoshape_metrics", captures=captures, outputs=outputs, targets=targets, stage="epoch"
        ):
            metrics.update(result)
        metrics = {**self._logged["epoch"], **metrics}
        self._logged["epoch"] = {}
        self._emitter.write("epoch", self.epoch, metrics)
        self.hooks.call("infoshape_epoch_end", epoch=self.epoch)
        self.epoch += 1
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """The resumable state: step, epoch, the store's ``run_id`` and each plugin's state."""
        plugins = dict(self.hooks.call("infoshape_state_dict"))
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
        self.hooks.call(
            "infoshape_load_state_dict", lambda name: {"state": saved[name]}, plugins=saved
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
        store, emitter = self._store, self._emitter
        steps: list[Callable[[], object]] = [self.flush_steps]  # the steps still held
        if status == "complete":  # metrics logged after the last step_end / epoch_end
            index = {"step": self.step, "epoch": self.epoch}
            steps += [
                functools.partial(emitter.write, st, index[st], self._logged[st]) for st in STAGES
            ]
        steps.append(lambda: self.hooks.call("infoshape_session_end"))
        if self._capture is not None:
            steps.append(self._capture.remove)
        steps += [sink.close for sink in emitter.sinks]
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
