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
are stored as ``(epoch, sample, ...)``.
"""

from __future__ import annotations

import difflib
import json
import random
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attr
import attrs
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from infoshape.apps.models import build_model
from infoshape.capture import Tap
from infoshape.checkpoint import (
    checkpoint_path,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from infoshape.errors import ConfigError, DatasetNotFoundError, RunInterrupted, StoreError
from infoshape.probe import Probe
from infoshape.registry import get_dataset
from infoshape.session import Session
from infoshape.store import location
from infoshape.syntax import by_syntax, plugin_syntax

__all__ = [
    "RESUMABLE_SETTINGS",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "resume_config",
    "seed_everything",
    "train",
]

RESUMABLE_SETTINGS = ("epochs", "progress", "device", "data_root", "overwrite", "store")
"""Settings a resumed run may change; the others must equal the run's own."""


# ------------------------------------------------------------------ config
def _setting(expected: str, test: Callable[[Any], bool], example: str) -> Callable[..., None]:
    """An attrs validator raising :class:`ConfigError` with the field, value and constraint."""

    def validate(_instance: object, attribute: attrs.Attribute, value: Any) -> None:
        if not test(value):
            raise ConfigError(
                f"train setting {attribute.name!r} is invalid",
                expected=expected,
                got=f"{value!r} ({type(value).__name__})",
                fix=f"give {attribute.name} {expected}, e.g. {example}",
            )

    return validate


def _text(what: str, example: str, optional: bool = False) -> Callable[..., None]:
    """A non-empty string (or, when ``optional``, also None)."""
    expected = f"{what} (text){' or None' if optional else ''}"
    return _setting(expected, lambda v: _is_str(v) or (optional and v is None), example)


def _int_at_least(low: int, example: str) -> Callable[..., None]:
    return _setting(f"an integer >= {low}", lambda v: _is_int(v) and v >= low, example)


def _boolean() -> Callable[..., None]:
    return _setting("true or false", lambda v: isinstance(v, bool), "true")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _to_float(value: Any) -> Any:
    return float(value) if _is_int(value) else value


def _to_optional_str(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def _to_names(value: Any) -> Any:
    if value is None or isinstance(value, tuple):
        return value
    if isinstance(value, str):
        return (value,)
    return tuple(value) if isinstance(value, list) else value


def _names(value: Any) -> bool:
    return isinstance(value, tuple) and all(_is_str(v) for v in value)


def _plugin_names(_instance: object, _attribute: attrs.Attribute, value: Any) -> None:
    """A list of plugin names; a string is refused, not read as one name or as letters."""
    if _names(value):
        return
    names = [value] if _is_str(value) else ["csv"]
    in_file = f"plugins = {json.dumps(names)} in the config file, or {plugin_syntax(*names)}"
    raise ConfigError(
        "train setting 'plugins' is invalid",
        expected="a list of plugin names",
        got=f"{value!r} ({type(value).__name__})",
        fix=f"write it as a list: {by_syntax(plugin_syntax(*names), in_file)}",
    )


def _options(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, Mapping) for k, v in value.items()
    )


def _device(value: Any) -> bool:
    try:
        torch.device(value)
    except (RuntimeError, TypeError):
        return False
    return True


def _default_store(config: TrainConfig) -> str:
    return f"runs/{config.dataset}-{config.model}.zarr"


@attrs.frozen(kw_only=True)
class TrainConfig:
    """Everything a built-in training run needs; the CLI flags and the TOML file map onto it.

    Attributes:
        model: zoo model name (``infoshape.models.MODELS``).
        dataset: registered data-set name (``infoshape datasets`` lists them).
        data_root: local folder of data sets that need files (MNIST, CIFAR-10).
        epochs: number of passes over the training split.
        batch_size: training batch size.
        lr: learning rate.
        optimizer: ``"adam"`` (Adam) or ``"sgd"`` (plain SGD, no momentum).
        seed: seeds torch, numpy, random, the shuffling and the probe draw.
        plugins: plugin names to enable (entry points of ``infoshape.plugins``).
        options: per-plugin options, ``{"csv": {"path": "m.csv"}}``.
        model_options: options of the zoo model (``hidden`` for mlp, ``channels`` for cnn).
        store: path of the zarr store (default ``runs/<dataset>-<model>.zarr``); ``None``
            writes no store.
        overwrite: replace an existing store.
        probe: pass a probe set (test samples) at each epoch end and store its taps.
        probe_size: at most this many probe samples.
        taps: module names (globs) whose outputs are stored for the probe set; ``None``
            means the model's ``default_taps``.
        device: torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        progress: show a progress bar (only on a terminal).
    """

    model: str = attrs.field(default="mlp", validator=_text("a model name", "'cnn'"))
    dataset: str = attrs.field(default="digits", validator=_text("a data-set name", "'mnist'"))
    data_root: str | None = attrs.field(
        default=None,
        converter=_to_optional_str,
        validator=_text("a folder", "'~/data'", optional=True),
    )
    epochs: int = attrs.field(default=10, validator=_int_at_least(1, "10"))
    batch_size: int = attrs.field(default=64, validator=_int_at_least(1, "64"))
    lr: float = attrs.field(
        default=1e-3,
        converter=_to_float,
        validator=_setting("a float > 0", lambda v: isinstance(v, float) and v > 0, "0.001"),
    )
    optimizer: str = attrs.field(
        default="adam",
        validator=_setting("'adam' or 'sgd'", lambda v: v in ("adam", "sgd"), "'sgd'"),
    )
    seed: int = attrs.field(default=0, validator=_int_at_least(0, "0"))
    plugins: tuple[str, ...] = attrs.field(
        default=(),
        converter=lambda v: tuple(v) if isinstance(v, list) else v,  # "shade" is refused
        validator=_plugin_names,
    )
    options: dict[str, dict[str, Any]] = attrs.field(
        factory=dict,
        validator=_setting(
            "a table per plugin: {plugin: {option: value}}", _options, "{csv = {path = 'm.csv'}}"
        ),
    )
    model_options: dict[str, Any] = attrs.field(
        factory=dict,
        validator=_setting(
            "a table {option: value}", lambda v: isinstance(v, Mapping), "{hidden = [128, 64]}"
        ),
    )
    store: str | None = attrs.field(
        default=attrs.Factory(_default_store, takes_self=True),
        converter=_to_optional_str,
        validator=_text("a store path", "'runs/a.zarr'", optional=True),
    )
    overwrite: bool = attrs.field(default=False, validator=_boolean())
    probe: bool = attrs.field(default=True, validator=_boolean())
    probe_size: int = attrs.field(default=1000, validator=_int_at_least(1, "1000"))
    taps: tuple[str, ...] | None = attrs.field(
        default=None,
        converter=_to_names,
        validator=_setting(
            "a list of module names (or None)", lambda v: v is None or _names(v), "['relu1']"
        ),
    )
    device: str = attrs.field(
        default="cpu", validator=_setting("a torch device name", _device, "'cuda'")
    )
    progress: bool = attrs.field(default=True, validator=_boolean())

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> TrainConfig:
        """Build a config from a mapping (a parsed TOML file), refusing unknown keys.

        Raises:
            ConfigError: an unknown key (listing the valid ones) or an invalid value.
        """
        known = [f.name for f in attrs.fields(cls)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.6)
            raise ConfigError(
                f"unknown train setting {unknown[0]!r}",
                expected=f"settings among: {', '.join(known)}",
                got=", ".join(unknown),
                fix=f"did you mean {close[0]!r}?" if close else "remove it",
            )
        return cls(**settings)

    def as_dict(self) -> dict[str, Any]:
        """The config as plain data (lists, dicts), as recorded in the run manifest."""
        return attr.asdict(self, retain_collection_types=False)


@attrs.frozen(kw_only=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        train_accuracy: accuracy on the whole training split after the last epoch.
        train_loss: mean cross-entropy on the training split after the last epoch.
        test_accuracy: accuracy on the whole test split after the last epoch.
        test_loss: mean cross-entropy on the test split after the last epoch.
        store: the store's path, or ``None`` when no store was written.
        elapsed_s: wall-clock seconds of the whole run (loading data included).
        history: per epoch, the metrics logged at its end (``train.*``, ``test.*``, and
            those returned by ``Session.epoch_end``).
        config: the config run, with ``taps`` resolved to the module names stored.
    """

    train_accuracy: float
    train_loss: float
    test_accuracy: float
    test_loss: float
    store: Path | str | None
    elapsed_s: float
    history: tuple[dict[str, Any], ...]
    config: TrainConfig


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
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    try:
        for x, y in DataLoader(dataset, batch_size=batch_size):
            x, y = x.to(device), torch.as_tensor(y).to(device)
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
            n += int(y.shape[0])
    finally:
        model.train(was_training)
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
    """``name`` as a device of this machine; else a ConfigError naming the devices it has."""
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
        disable=not (config.progress and sys.stderr.isatty()),
        dynamic_ncols=True,
    )


def _train_epoch(
    s: Session,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    bar: Any,
    latest: _LatestStepMetrics,
) -> None:
    """One pass over ``loader``: loss (objective + penalties), backward, step, ``step_end``."""
    s.model.train()
    for x, y, index in loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = s.loss(s.model(x), y, index=index)
        loss.backward()
        optimizer.step()
        s.step_end()
        bar.set_postfix(latest.postfix(), refresh=False)
        bar.update(1)


def _evaluate_splits(
    model: nn.Module, train_set: Dataset, test_set: Dataset, device: torch.device
) -> dict[str, Any]:
    """``test.accuracy``, ``test.loss``, ``train.accuracy``, ``train.loss`` (cross-entropy)."""
    test_accuracy, test_loss = evaluate(model, test_set, device)
    train_accuracy, train_loss = evaluate(model, train_set, device)
    return {
        "test.accuracy": test_accuracy,
        "test.loss": test_loss,
        "train.accuracy": train_accuracy,
        "train.loss": train_loss,
    }


# ------------------------------------------------------------------ resume
def resume_config(
    store: str | Path,
    settings: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[TrainConfig, bool]:
    """The config of the run whose store is ``store``, with ``settings`` applied.

    ``store`` may be an fsspec URL, reached with ``storage_options``.

    ``settings`` (from the command line) may change :data:`RESUMABLE_SETTINGS`
    (``epochs`` to train longer); any other setting must equal the run's own.

    Returns:
        the config and whether to resume (``False``: ``settings`` hold ``overwrite``
        and change the run, so a new run replaces the store).

    Raises:
        StoreError: no checkpoint beside ``store``.
        ConfigError: ``settings`` change a setting of the run (unless ``overwrite``:
            then the returned config starts a new run at ``store``, replacing it).
    """
    saved = dict(load_checkpoint(checkpoint_path(store), storage_options)["config"])
    settings = {**dict(settings or {}), "store": str(store)}
    changed = {
        k: v
        for k, v in settings.items()
        if k not in RESUMABLE_SETTINGS and _normalized(v) != _normalized(saved.get(k))
    }
    if changed and settings.get("overwrite"):  # not resumable: a new run replaces the store
        return TrainConfig.from_mapping({**saved, **settings}), False
    if changed:
        raise ConfigError(
            f"the settings differ from those of the run in {store}",
            expected=", ".join(f"{k}={saved.get(k)!r}" for k in changed),
            got=", ".join(f"{k}={v!r}" for k, v in changed.items()),
            fix="drop those settings to resume (only "
            + ", ".join(RESUMABLE_SETTINGS)
            + " may change), or start a new run: another --store, or --overwrite to "
            "replace this one",
        )
    return TrainConfig.from_mapping({**saved, **settings}), True


def _normalized(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalized(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _normalized(v) for k, v in value.items()}
    return float(value) if _is_int(value) else value


def _resume_state(config: TrainConfig, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The checkpoint to resume ``config`` from, checked against the store's run."""
    if config.store is None:
        raise ConfigError(
            "resuming needs a store",
            expected="the store of the run to resume",
            got="store=None",
            fix=by_syntax("give the config the store to resume", "pass --resume STORE"),
        )
    state = load_checkpoint(checkpoint_path(config.store), storage_options)
    saved = {k: v for k, v in state["config"].items() if k not in RESUMABLE_SETTINGS}
    given = {k: v for k, v in config.as_dict().items() if k not in RESUMABLE_SETTINGS}
    if _normalized(saved) != _normalized(given):
        diff = sorted(k for k in given if _normalized(given[k]) != _normalized(saved.get(k)))
        raise StoreError(
            f"the checkpoint beside {config.store} is from another run",
            expected=", ".join(f"{k}={saved.get(k)!r}" for k in diff),
            got=", ".join(f"{k}={given[k]!r}" for k in diff),
            fix="resume with the run's own settings ("
            + by_syntax("resume_config(STORE)", "infoshape train --resume STORE")
            + "), or start afresh with "
            + by_syntax("overwrite=True", "--overwrite"),
        )
    return state


def _save_checkpoint(
    s: Session,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    history: list[dict[str, Any]],
    storage_options: Mapping[str, Any] | None,
) -> None:
    """Flush the store, then write the checkpoint of the epoch that just ended."""
    assert config.store is not None and loader.generator is not None
    s.flush()  # the store holds the epoch before the checkpoint says so
    save_checkpoint(
        checkpoint_path(config.store),
        {
            "config": config.as_dict(),
            "session": s.state_dict(),
            "model": s.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng_state(loader.generator),
            "history": [{k: _plain_metric(v) for k, v in h.items()} for h in history],
        },
        storage_options,
    )


def _plain_metric(value: Any) -> Any:
    """A history value as what ``torch.load(weights_only=True)`` reads back."""
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    array = np.asarray(getattr(value, "values", value))
    return float(array) if array.ndim == 0 else torch.from_numpy(np.array(array))


def _interrupted(config: TrainConfig, kept: int) -> RunInterrupted:
    """The error of a run interrupted after ``kept`` complete epochs: what is kept, what next."""
    store = config.store
    done = f"{kept} complete epoch{'s are' if kept != 1 else ' is'} kept in {store}"
    if store is None:
        done, fix = "nothing is kept (no store)", "run it again (a run with a store can resume)"
    elif kept == 0:
        done = f"no epoch was complete, so nothing is kept in {store}"
        fix = (
            "start it again (" + by_syntax("overwrite=True", "--overwrite") + " replaces the store)"
        )
    else:
        resume = by_syntax(f"train(*resume_config({store!r}))", f"infoshape train --resume {store}")
        fix = f"continue the run with {resume}"
    return RunInterrupted(
        f"training was interrupted in epoch {min(kept + 1, config.epochs)} of {config.epochs}; "
        + done,
        epochs_kept=kept if store is not None else 0,
        store=store,
        fix=fix,
    )


# ------------------------------------------------------------------ loop
def train(
    config: TrainConfig, resume: bool = False, storage_options: Mapping[str, Any] | None = None
) -> TrainResult:
    """Train ``config.model`` on ``config.dataset`` through a :class:`~infoshape.Session`.

    With a store, a checkpoint (model, optimizer, random generators, session and plugin
    state) is written beside it at each epoch end, after the store is flushed
    (:mod:`infoshape.checkpoint`). With ``resume``, training continues from the last
    complete epoch of the run in ``config.store``: the store is reopened and appended,
    rows of a partial epoch dropped, so every epoch and step is stored exactly once,
    and the resumed epochs draw the same batches as an uninterrupted run.

    ``config.store`` may be an fsspec URL (``s3://bucket/runs/a.zarr``): ``storage_options``
    reach its filesystem, and are not recorded in the store or the checkpoint.

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
    start = time.perf_counter()
    device = _torch_device(config.device)
    seed_everything(config.seed)
    spec, train_set, test_set = _load_splits(config)
    model = build_model(config.model, spec.input_shape, spec.n_classes, **config.model_options)
    model.to(device)
    taps = config.taps if config.taps is not None else tuple(getattr(model, "default_taps", ()))
    config = attrs.evolve(config, taps=taps)
    checkpoint = _resume_state(config, storage_options) if resume else None
    probe = _probe_set(test_set, config.probe_size, config.seed) if config.probe else None
    loader = DataLoader(
        _Indexed(train_set),
        batch_size=config.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(config.seed),
    )
    latest = _LatestStepMetrics()
    history: list[dict[str, Any]] = []
    session = Session(
        model,
        plugins=list(config.plugins),
        options=config.options,
        store=config.store,
        storage_options=storage_options,
        n_train=len(train_set),  # type: ignore[arg-type]
        taps=[Tap(name, store=True) for name in taps] if probe is not None else [],
        seed=config.seed,
        overwrite=config.overwrite,
        run_config=config.as_dict(),
        sinks=[latest],
        resume=checkpoint["session"] if checkpoint is not None else None,
    )
    kept = 0  # complete epochs in the store and the checkpoint
    try:
        with session as s:
            optimizer = _optimizer(config, s.model.parameters())  # after plugins wrapped it
            if checkpoint is not None:
                s.model.load_state_dict(checkpoint["model"])
                optimizer.load_state_dict(checkpoint["optimizer"])
                set_rng_state(checkpoint["rng"], loader.generator)
                history = [dict(h) for h in checkpoint["history"]]
                kept = s.epoch
            for epoch in range(s.epoch, config.epochs):
                with _progress_bar(config, len(loader), epoch) as bar:
                    _train_epoch(s, loader, optimizer, device, bar, latest)
                    metrics = _evaluate_splits(s.model, train_set, test_set, device)
                    bar.set_postfix(
                        {**latest.postfix(), "test.accuracy": f"{metrics['test.accuracy']:.3f}"}
                    )
                s.log_metrics(metrics, stage="epoch")
                metrics.update(s.epoch_end(probe=probe))
                history.append(metrics)
                if config.store is not None:
                    _save_checkpoint(s, config, optimizer, loader, history, storage_options)
                    kept = s.epoch
    except KeyboardInterrupt as err:  # the session closed the store as "interrupted"
        raise _interrupted(config, kept) from err
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
