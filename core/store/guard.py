"""What a new run may write over: only a store infoshape wrote, never a user's folder.

``overwrite=True`` (CLI ``--overwrite``) replaces an existing *run store*: a folder whose
root ``zarr.json`` is a zarr group carrying an infoshape manifest (``run_id`` and
``infoshape_version`` in its attributes). With it goes the run's checkpoint
``<store>.checkpoint.pt`` (a rank store of a DDP run is replaced by its own rank, so
that no rank deletes a store another rank is creating). Anything else at the path (a
plain file, a folder of the user's, a zarr store of another program) is refused and
nothing is deleted. An empty folder is taken as it is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from infoshape.errors import StoreError
from infoshape.store.checkpoint import CHECKPOINT_SUFFIX
from infoshape.syntax import by_syntax

__all__ = ["infoshape_manifest", "prepare_store_path"]


def infoshape_manifest(path: str | Path) -> dict[str, Any] | None:
    """The run manifest of the infoshape store at ``path``, or None when it is none."""
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return None
    attrs = meta.get("attributes")
    if isinstance(attrs, dict) and "run_id" in attrs and "infoshape_version" in attrs:
        return attrs
    return None


def prepare_store_path(path: str | Path, overwrite: bool) -> None:
    """Make ``path`` ready for a new store, deleting only what infoshape wrote.

    Raises:
        StoreError: a file is at ``path``; a folder that is no infoshape store (nothing
            deleted, even with ``overwrite``); an infoshape store without ``overwrite``.
    """
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
        raise StoreError(
            f"a store already exists at {path} (run {manifest.get('run_id')}, "
            f"status {manifest.get('status')!r})",
            expected="a new path",
            got=str(path),
            fix="choose another path, continue the run with "
            + by_syntax("resume=<its checkpoint's session state>", f"--resume {path}")
            + f", or replace it with {by_syntax('overwrite=True', '--overwrite')}",
        )
    path.with_name(path.name + CHECKPOINT_SUFFIX).unlink(missing_ok=True)
    shutil.rmtree(path)
