"""What a new run may write over: only a store infoshape wrote, never a user's folder.

``overwrite=True`` (CLI ``--overwrite``) replaces an existing *run store*: a folder whose
root ``zarr.json`` is a zarr group carrying an infoshape manifest (``run_id`` and
``infoshape_version`` in its attributes). With it goes the run's checkpoint
``<store>.checkpoint.pt`` (a rank store of a DDP run is replaced by its own rank, so
that no rank deletes a store another rank is creating). Anything else at the path (a
plain file, a folder of the user's, a zarr store of another program) is refused and
nothing is deleted. An empty folder is taken as it is. A store at an fsspec URL
(:mod:`~infoshape.store.location`) follows the same rules on its filesystem.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from infoshape.errors import StoreError
from infoshape.store import location
from infoshape.store.checkpoint import CHECKPOINT_SUFFIX
from infoshape.syntax import by_syntax

__all__ = ["infoshape_manifest", "prepare_store_path"]


def infoshape_manifest(
    path: str | Path, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The run manifest of the infoshape store at ``path`` (a path or URL), or None."""
    try:
        if location.is_url(path):
            fs, inner = location.filesystem(str(path).rstrip("/"), storage_options)
            meta = json.loads(fs.cat_file(f"{inner}/zarr.json"))
        else:
            meta = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return None
    attrs = meta.get("attributes")
    if isinstance(attrs, dict) and "run_id" in attrs and "infoshape_version" in attrs:
        return attrs
    return None


def prepare_store_path(
    path: str | Path, overwrite: bool, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Make ``path`` ready for a new store, deleting only what infoshape wrote.

    Raises:
        StoreError: a file is at ``path``; a folder that is no infoshape store (nothing
            deleted, even with ``overwrite``); an infoshape store without ``overwrite``.
    """
    if location.is_url(path):
        _prepare_url(str(path).rstrip("/"), overwrite, storage_options)
        return
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise StoreError(
            f"a file is in the way of the store at {path}",
            expected="a new path, or a store infoshape wrote",
            got="a file, not a folder",
            fix="choose another store path (the file is left as it is)",
        )
    manifest = infoshape_manifest(path)
    if manifest is None:
        if not any(path.iterdir()):
            path.rmdir()  # an empty folder: nothing to lose
            return
        raise StoreError(
            f"{path} is a folder infoshape did not write; it is left as it is",
            expected="a new path, an empty folder, or a store infoshape wrote",
            got=f"a folder holding {', '.join(sorted(p.name for p in path.iterdir())[:5])}",
            fix="choose another store path; overwrite replaces only infoshape's own stores",
        )
    if not overwrite:
        raise _exists(path, manifest)
    path.with_name(path.name + CHECKPOINT_SUFFIX).unlink(missing_ok=True)
    shutil.rmtree(path)


def _exists(path: str | Path, manifest: Mapping[str, Any]) -> StoreError:
    return StoreError(
        f"a store already exists at {path} (run {manifest.get('run_id')}, "
        f"status {manifest.get('status')!r})",
        expected="a new path",
        got=str(path),
        fix="choose another path, continue the run with "
        + by_syntax("resume=<its checkpoint's session state>", f"--resume {path}")
        + f", or replace it with {by_syntax('overwrite=True', '--overwrite')}",
    )


def _prepare_url(url: str, overwrite: bool, storage_options: Mapping[str, Any] | None) -> None:
    """:func:`prepare_store_path` for a store at an fsspec URL (same rules, its filesystem)."""
    fs, inner = location.filesystem(url, storage_options)
    if not fs.exists(inner):
        return
    if not fs.isdir(inner):
        raise StoreError(
            f"an object is in the way of the store at {url}",
            expected="a new URL, or a store infoshape wrote",
            got="a file, not a folder (prefix)",
            fix="choose another store URL (the object is left as it is)",
        )
    manifest = infoshape_manifest(url, storage_options)
    if manifest is None:
        entries = [name.rsplit("/", 1)[-1] for name in fs.ls(inner, detail=False)]
        if not entries:
            return
        raise StoreError(
            f"{url} holds objects infoshape did not write; they are left as they are",
            expected="a new URL, or a store infoshape wrote",
            got=f"a prefix holding {', '.join(sorted(entries)[:5])}",
            fix="choose another store URL; overwrite replaces only infoshape's own stores",
        )
    if not overwrite:
        raise _exists(url, manifest)
    if fs.exists(inner + CHECKPOINT_SUFFIX):
        fs.rm(inner + CHECKPOINT_SUFFIX)
    fs.rm(inner, recursive=True)
    fs.invalidate_cache()
