"""Resuming a built-in training run: its config, its checkpoint, and what an interrupt keeps.

A run with a store writes a checkpoint beside it at each epoch end
(:mod:`infoshape.store.checkpoint`); ``infoshape train --resume STORE`` continues it from
its last complete epoch with the settings it was started with (:func:`resume_config`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from infoshape.apps.train_config import TrainConfig
from infoshape.errors import ConfigError, RunInterrupted, StoreError
from infoshape.store.checkpoint import checkpoint_path, load_checkpoint, rng_state, save_checkpoint
from infoshape.syntax import by_syntax

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from infoshape.session import Session

__all__ = [
    "RESUMABLE_SETTINGS",
    "deferred_interrupt",
    "interrupted",
    "resume_config",
    "resume_state",
    "save_run",
]

RESUMABLE_SETTINGS = (
    "epochs",
    "progress",
    "device",
    "data_root",
    "overwrite",
    "store",
    "compile",
    "log_every",
)
"""Settings a resumed run may change; the others must equal the run's own."""


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
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def resume_state(
    config: TrainConfig, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
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


def save_run(
    s: Session,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    history: list[dict[str, Any]],
    storage_options: Mapping[str, Any] | None = None,
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


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) for the block; raise ``KeyboardInterrupt`` after it.

    The trainer writes an epoch's checkpoint and counts the epoch as kept in one such
    block, so an interrupt never falls between them (a checkpoint of epoch ``e`` while
    the error says ``e - 1`` epochs are kept). Outside the main thread, or when SIGINT
    is not Python's default handler, the block runs as it is.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def interrupted(config: TrainConfig, kept: int) -> RunInterrupted:
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
