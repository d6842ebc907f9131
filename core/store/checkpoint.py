"""Checkpoints beside a run store, for resuming a run at its last complete epoch.

A checkpoint is one file, ``<store>.checkpoint.pt`` (``runs/a.zarr`` →
``runs/a.zarr.checkpoint.pt``), written at each epoch end *after* the store is
flushed, atomically (a temporary file in the same folder, ``fsync``, then
``os.replace``): a killed run leaves either the previous checkpoint or the new
one, never a torn file. A store at an fsspec URL (``s3://bucket/a.zarr``) has its
checkpoint beside it on the same filesystem (``s3://bucket/a.zarr.checkpoint.pt``),
written in one PUT (an object appears whole or not at all); pass the store's
``storage_options`` to :func:`save_checkpoint` and :func:`load_checkpoint`.

A checkpoint holds what continuing needs:

- ``session``: :meth:`infoshape.Session.state_dict` (epoch and step reached, the
  store's ``run_id``, each plugin's state through ``infoshape_state_dict``);
- ``model`` and ``optimizer``: their ``state_dict()``;
- ``rng``: the states of Python's ``random``, numpy's global generator, torch's CPU
  (and CUDA) generators and any extra generators (the data loader's shuffling),
  so a resumed run draws what the uninterrupted run would have drawn;
- whatever else the caller adds (the trainer keeps its config and history).

Only tensors and plain Python data are stored, so :func:`load_checkpoint` reads
it with ``torch.load(weights_only=True)``.

Resuming with your own loop::

    state = load_checkpoint(checkpoint_path("runs/a.zarr"))
    with Session(model, plugins=..., store="runs/a.zarr", resume=state["session"]) as s:
        model.load_state_dict(state["model"]); opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"], loader.generator)
        for epoch in range(s.epoch, epochs): ...
"""

from __future__ import annotations

import contextlib
import io
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infoshape.errors import StoreError, StoreWriteError
from infoshape.syntax import by_syntax

__all__ = [
    "CHECKPOINT_SUFFIX",
    "checkpoint_path",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINT_SUFFIX = ".checkpoint.pt"
FORMAT = 1


def checkpoint_path(store: str | Path) -> Any:
    """The checkpoint file of the run store ``store``: ``<store>.checkpoint.pt`` beside it.

    A ``Path`` for a local store, a URL for a store at an fsspec URL.
    """
    from infoshape.store import location

    return location.with_name(store, location.name_of(store) + CHECKPOINT_SUFFIX)


def save_checkpoint(
    path: str | Path, state: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None
) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, ``os.replace``).

    At an fsspec URL the file is written in one piece (one PUT on an object store).

    Raises:
        StoreWriteError: the file cannot be written (disk full, permissions); the previous
            checkpoint at ``path``, if any, is left as it was.
    """
    from infoshape.store import free_space, location

    if location.is_url(path):
        buffer = io.BytesIO()
        torch.save({"format": FORMAT, **state}, buffer)
        try:
            fs, inner = location.filesystem(str(path), storage_options)
            fs.pipe_file(inner, buffer.getvalue())
        except OSError as err:
            raise StoreWriteError(
                f"cannot write the checkpoint {path}: {err}",
                expected="a writable location",
                got=repr(err),
                fix="check the URL, the credentials (storage_options) and the quota; the "
                "previous checkpoint is intact, so the run can be resumed from the epoch before",
            ) from err
        return
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as file:
            torch.save({"format": FORMAT, **state}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        _fsync_folder(path.parent)
    except OSError as err:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise StoreWriteError(
            f"cannot write the checkpoint {path}: {err} ({free_space(path)})",
            expected="a writable folder with free space",
            got=repr(err),
            fix="free disk space or fix permissions; the previous checkpoint is intact, so "
            "the run can be resumed from the epoch before",
        ) from err


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _afresh() -> str:
    return f"start the run afresh ({by_syntax('overwrite=True', '--overwrite')} replaces the store)"


def load_checkpoint(
    path: str | Path, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (a local path or an fsspec URL).

    Raises:
        StoreError: no checkpoint at ``path``, or a file that is not one.
    """
    from infoshape.store import location

    source: Any
    if location.is_url(path):
        fs, inner = location.filesystem(str(path), storage_options)
        is_file, there = fs.isfile(inner), fs.exists(inner)
        source = io.BytesIO(fs.cat_file(inner)) if is_file else None
    else:
        path = Path(path)
        is_file, there, source = path.is_file(), path.exists(), path
    if not is_file:
        raise StoreError(
            f"no checkpoint at {path}",
            expected="the checkpoint written beside the store at each epoch end "
            f"({location.name_of(path)})",
            got="a folder" if there else "nothing there",
            fix="the run ended before its first epoch, or was not written by `infoshape "
            f"train`: {_afresh()}",
        )
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors have many types
        raise StoreError(
            f"cannot read the checkpoint {path}",
            expected="a file written by infoshape.store.checkpoint.save_checkpoint",
            got=f"{type(err).__name__}: {err}",
            fix=_afresh(),
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise StoreError(
            f"{path} is no infoshape checkpoint of this version",
            expected=f"a dict with format {FORMAT}",
            got=f"format {state.get('format') if isinstance(state, dict) else type(state)}",
            fix=_afresh(),
        )
    return state


def rng_state(*generators: torch.Generator) -> dict[str, Any]:
    """The states of the global random generators and of ``generators``."""
    kind, keys, position, has_gauss, gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (
            kind,
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            position,
            has_gauss,
            gauss,
        ),
        "torch": torch.get_rng_state(),
        "generators": [g.get_state() for g in generators],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any], *generators: torch.Generator) -> None:
    """Restore what :func:`rng_state` returned (the same ``generators``, in order)."""
    random.setstate(_as_tuples(state["python"]))
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    for generator, saved in zip(generators, state["generators"], strict=True):
        generator.set_state(saved)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    """``random.setstate`` wants tuples where a round trip may give lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value
