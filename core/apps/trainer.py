"""The built-in training loop behind ``infoshape train``.

Users with their own loop (or Lightning) talk to :class:`~infoshape.Session`
directly; this module is that loop for the zoo models and registered data
sets, configured by one frozen :class:`TrainConfig`::

    from infoshape.apps.trainer import TrainConfig, train
    result = train(TrainConfig(model="mlp", dataset="digits", epochs=10, plugins=("csv",)))
    result.test_accuracy, result.store

Each epoch: the training steps (``s.loss`` → backward → step → ``s.step_end``),
then test accuracy/loss and train accuracy/loss (``test.*``, ``train.*``,
logged before ``s.epoch_end``), then ``s.epoch_end`` with the probe set (at
most ``probe_size`` test samples, drawn by a seeded permutation) whose taps
are stored as ``(epoch, sample, ...)``. After each epoch one line (epoch, train loss, test
accuracy, elapsed time) goes to the ``infoshape.progress`` logger: at INFO when no progress
bar shows it (stderr no terminal), else at DEBUG. The settings live in
:mod:`infoshape.apps.train_config`, resuming in :mod:`infoshape.apps.resume`.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from infoshape import distributed
from infoshape.apps import parallel
from infoshape.apps.logs import PROGRESS
from infoshape.apps.models import build_model
from infoshape.apps.resume import (
    RESUMABLE_SETTINGS,
    deferred_interrupt,
    interrupted,
    resume_config,
    resume_state,
    save_run,
)
from infoshape.apps.train_config import TrainConfig, TrainResult
from infoshape.capture import Tap
from infoshape.errors import ConfigError, DatasetNotFoundError
from infoshape.probe import Probe
from infoshape.registry import get_dataset
from infoshape.session import Session
from infoshape.store import location
from infoshape.store.checkpoint import set_rng_state
from infoshape.syntax import by_syntax

__all__ = [
    "RESUMABLE_SETTINGS",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "resume_config",
    "seed_everything",
    "train",
]

progress_log = logging.getLogger(PROGRESS)


# ------------------------------------------------------------------ pieces
def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Indexed(Dataset):
    """Yields ``(x, y, index)`` so each batch knows its samples' data-set indices."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        x, y = self.dataset[index]
        return x, y, index


class _LatestStepMetrics:
    """A metric sink keeping the last step's loss and penalties (for the progress bar)."""

    def __init__(self) -> None:
        self.latest: dict[str, float] = {}

    def write(self, stage: str, index: int, metrics: Mapping[str, Any]) -> None:
        if stage == "step":
            self.latest = {
                k: float(v)
                for k, v in metrics.items()
                if (k == "loss" or k.startswith("penalty.")) and np.ndim(v) == 0
            }

    def close(self) -> None:
        """Nothing to release."""

    def postfix(self) -> dict[str, str]:
        return {k: f"{v:.4g}" for k, v in self.latest.items()}


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Dataset, device: torch.device | str = "cpu", batch_size: int = 512
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``dataset``, in eval mode.

    The model's train/eval mode is restored afterwards.

    Returns:
        ``(accuracy, loss)``.
    """
    correct, loss_sum, n = parallel.evaluation_sums(
        model, dataset, torch.device(device), batch_size
    )
    return correct / max(n, 1), loss_sum / max(n, 1)


def _probe_set(test_set: Dataset, size: int, seed: int) -> Probe:
    """The first ``size`` samples of a seeded permutation of ``test_set``, in index order."""
    n_test = len(test_set)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(n_test, generator=generator)[:size].sort().values
    items = [test_set[int(i)] for i in chosen]
    x = torch.stack([torch.as_tensor(x) for x, _ in items])
    y = torch.as_tensor([int(y) for _, y in items], dtype=torch.int64)
    return Probe(x=x, y=y, sample=chosen.numpy(), split="test")


def _torch_device(name: str) -> torch.device:
    """``name`` as a device of this machine; else a ConfigError naming the devices it has.

    ``"auto"`` is CUDA when this machine has it, else the CPU.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = torch.backends.mps.is_available()
    present = {"cpu": True, "cuda": n_cuda > (device.index or 0), "mps": mps}
    if present.get(device.type, True):  # other types: torch says whether it has them
        return device
    available = ["cpu", *(f"cuda:{i}" for i in range(n_cuda)), *(["mps"] if mps else [])]
    why = {
        "cuda": f"torch.cuda.device_count() is {n_cuda}"
        + ("" if torch.cuda.is_available() else " (torch.cuda.is_available() is False)"),
        "mps": "torch.backends.mps.is_available() is False"
        + ("" if torch.backends.mps.is_built() else " (this torch is built without MPS)"),
    }[device.type]
    raise ConfigError(
        f"device {name!r} is not available on this machine",
        expected=f"a device this machine has: {', '.join(available)}",
        got=f"device={name!r}; {why}",
        fix="use " + by_syntax(f"device={available[-1]!r}", f"--device {available[-1]}"),
    )


def _optimizer(config: TrainConfig, params: Any) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr)
    return torch.optim.Adam(params, lr=config.lr)


def _load_splits(config: TrainConfig) -> tuple[Any, Dataset, Dataset]:
    spec = get_dataset(config.dataset)
    if spec.needs_root and config.data_root is None:
        raise DatasetNotFoundError(
            f"data set {spec.name!r} needs its files in a local folder",
            expected="data_root naming that folder",
            got="no data root",
            fix=by_syntax("pass data_root=DIR", "pass --data-root DIR (data_root in a config file)")
            + "; `infoshape datasets` says which data sets need one",
        )
    return spec, spec.load("train", config.data_root), spec.load("test", config.data_root)


def _progress_bar(config: TrainConfig, steps: int, epoch: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=steps,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        unit="step",
        disable=not (config.progress and sys.stderr.isatty()) or distributed.rank() != 0,
        dynamic_ncols=True,
    )


@attrs.define
class _Step:
    """How a training step runs: the (compiled) forward, autocast and the gradient scaler."""

    forward: Any
    autocast: Any
    scaler: torch.amp.GradScaler

    @classmethod
    def of(cls, config: TrainConfig, s: Session, device: torch.device) -> _Step:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
        return cls(
            forward=_compiled(s.model, config.compile),
            autocast=torch.autocast(device.type, dtype=dtype, enabled=dtype is not None),
            scaler=torch.amp.GradScaler(device.type, enabled=config.amp == "fp16"),
        )


def _compiled(model: nn.Module, backend: bool | str) -> Any:
    if backend is False:
        return model
    return torch.compile(model) if backend is True else torch.compile(model, backend=backend)


def _train_epoch(
    s: Session,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    bar: Any,
    latest: _LatestStepMetrics,
    step: _Step,
) -> None:
    """One pass over ``loader``: loss (objective + penalties), backward, step, ``step_end``.

    Nothing in it reads a value back from the device: batches are copied with
    ``non_blocking=True`` (from pinned memory on CUDA), and the progress bar shows the step
    metrics of the last flush (every ``log_every`` steps). Under DDP a rank's loss is
    weighted by its share of the global batch (:class:`~infoshape.apps.parallel.GlobalBatches`).
    """
    s.model.train()
    batches: parallel.GlobalBatches = loader.batch_sampler  # type: ignore[assignment]
    for k, (x, y, index) in enumerate(loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with step.autocast:
            loss = s.loss(step.forward(x), y, index=index)
        weight = batches.weight(len(index), k)
        if weight != 1.0:  # an uneven split of the last batch across ranks
            loss = loss * weight
        step.scaler.scale(loss).backward()
        step.scaler.step(optimizer)
        step.scaler.update()
        s.step_end()
        bar.set_postfix(latest.postfix(), refresh=False)
        bar.update(1)


def _evaluate_splits(
    model: nn.Module, train_set: Dataset, test_set: Dataset, device: torch.device
) -> dict[str, Any]:
    """``test.accuracy``, ``test.loss``, ``train.accuracy``, ``train.loss`` (cross-entropy).

    Under DDP each rank evaluates a shard and the sums are reduced across the ranks.
    """
    test_accuracy, test_loss = parallel.evaluate_sharded(model, test_set, device)
    train_accuracy, train_loss = parallel.evaluate_sharded(model, train_set, device)
    return {
        "test.accuracy": test_accuracy,
        "test.loss": test_loss,
        "train.accuracy": train_accuracy,
        "train.loss": train_loss,
    }


def _log_epoch(
    config: TrainConfig, epoch: int, metrics: Mapping[str, Any], start: float, bar_shown: bool
) -> None:
    """Log one line per epoch on the ``infoshape.progress`` logger.

    INFO without a progress bar (stderr no terminal, or ``progress=False``), DEBUG when the
    bar already shows it. Under DDP only rank 0 logs.
    """
    if distributed.rank() != 0:
        return
    progress_log.log(
        logging.DEBUG if bar_shown else logging.INFO,
        "epoch %d/%d  train loss %.4f  test accuracy %.4f  %.1f s",
        epoch + 1,
        config.epochs,
        metrics["train.loss"],
        metrics["test.accuracy"],
        time.perf_counter() - start,
    )


# ------------------------------------------------------------------ loop
def train(
    config: TrainConfig, resume: bool = False, storage_options: Mapping[str, Any] | None = None
) -> TrainResult:
    """Train ``config.model`` on ``config.dataset`` through a :class:`~infoshape.Session`.

    With a store, a checkpoint (model, optimizer, random generators, session and plugin
    state) is written beside it at each epoch end, after the store is flushed
    (:mod:`infoshape.store.checkpoint`). With ``resume``, training continues from the last
    complete epoch of the run in ``config.store``: the store is reopened and appended,
    rows of a partial epoch dropped, so every epoch and step is stored exactly once,
    and the resumed epochs draw the same batches as an uninterrupted run.

    Started by torchrun (``torchrun --nproc-per-node N -m infoshape train``), each rank
    trains with DDP on its share of every global batch of ``batch_size``
    (:mod:`infoshape.apps.parallel`); rank 0 returns what the run stored.

    Returns:
        the final accuracies and losses, the store path and the elapsed time.

    Raises:
        UnknownNameError: unknown model or data set.
        DatasetNotFoundError: the data set's files are missing.
        PluginLoadError: a plugin is missing or given an invalid option.
        ConfigError: an invalid setting, or CUDA requested but unavailable.
        StoreError: the store exists and ``overwrite`` is false; with ``resume``, no
            checkpoint beside the store or one of another run.
        RunInterrupted: Ctrl-C (SIGINT); the store, closed with status ``"interrupted"``,
            and its checkpoint keep the complete epochs, so the run can resume.
    """
    with parallel.process_group(_torch_device(config.device)) as device:
        return _train(config, device, resume, storage_options)


def _train(
    config: TrainConfig,
    device: torch.device,
    resume: bool,
    storage_options: Mapping[str, Any] | None,
) -> TrainResult:
    start = time.perf_counter()
    config = attrs.evolve(config, device=str(device))  # the manifest records the one used
    if resume and distributed.is_distributed():
        raise ConfigError(
            "a distributed run cannot be resumed",
            expected="--resume in one process",
            got=f"--resume under torchrun with {distributed.world_size()} ranks",
            fix="resume without torchrun/--nproc, or start the run again with --overwrite",
        )
    seed_everything(config.seed)  # the same initial model on every rank
    spec, train_set, test_set = _load_splits(config)
    model = build_model(config.model, spec.input_shape, spec.n_classes, **config.model_options)
    model.to(device)
    taps = config.taps if config.taps is not None else tuple(getattr(model, "default_taps", ()))
    config = attrs.evolve(config, taps=taps)
    checkpoint = resume_state(config, storage_options) if resume else None
    probe = _probe_set(test_set, config.probe_size, config.seed) if config.probe else None
    n_train = len(train_set)  # type: ignore[arg-type]
    loader = DataLoader(
        _Indexed(train_set),
        batch_sampler=parallel.GlobalBatches(
            n_train, config.batch_size, config.seed, distributed.rank(), distributed.world_size()
        ),
        generator=torch.Generator().manual_seed(config.seed),
        pin_memory=device.type == "cuda",
    )
    latest = _LatestStepMetrics()
    history: list[dict[str, Any]] = []
    session = Session(
        parallel.wrap(model, device),
        plugins=list(config.plugins),
        options=config.options,
        store=config.store,
        n_train=n_train,
        taps=[Tap(name, store=True) for name in taps] if probe is not None else [],
        seed=config.seed,
        overwrite=config.overwrite,
        run_config=config.as_dict(),
        sinks=[latest],
        log_every=config.log_every,
        storage_options=storage_options,
        resume=checkpoint["session"] if checkpoint is not None else None,
    )
    kept = 0  # complete epochs in the store and the checkpoint
    try:
        with session as s:
            optimizer = _optimizer(config, s.model.parameters())  # after plugins wrapped it
            step = _Step.of(config, s, device)  # compiled after the capture hooks are on
            if checkpoint is not None:
                s.model.load_state_dict(checkpoint["model"])
                optimizer.load_state_dict(checkpoint["optimizer"])
                set_rng_state(checkpoint["rng"], loader.generator)
                history = [dict(h) for h in checkpoint["history"]]
                kept = s.epoch
            for epoch in range(s.epoch, config.epochs):
                loader.batch_sampler.set_epoch(epoch)  # type: ignore[union-attr]
                with _progress_bar(config, len(loader), epoch) as bar:
                    _train_epoch(s, loader, optimizer, device, bar, latest, step)
                    metrics = _evaluate_splits(s.module, train_set, test_set, device)
                    bar.set_postfix(
                        {**latest.postfix(), "test.accuracy": f"{metrics['test.accuracy']:.3f}"}
                    )
                _log_epoch(config, epoch, metrics, start, bar_shown=not bar.disable)
                s.log_metrics(metrics, stage="epoch")
                metrics.update(s.epoch_end(probe=probe))
                history.append(metrics)
                if config.store is not None and not distributed.is_distributed():
                    with deferred_interrupt():  # Ctrl-C waits: the checkpoint and kept agree
                        save_run(s, config, optimizer, loader, history, storage_options)
                        kept = s.epoch
    except KeyboardInterrupt as err:  # the session closed the store as "interrupted"
        raise interrupted(config, kept) from err
    last = history[-1]
    return TrainResult(
        train_accuracy=last["train.accuracy"],
        train_loss=last["train.loss"],
        test_accuracy=last["test.accuracy"],
        test_loss=last["test.loss"],
        store=location.normalize(config.store) if config.store is not None else None,
        elapsed_s=time.perf_counter() - start,
        history=tuple(history),
        config=config,
    )
