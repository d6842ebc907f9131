"""Where a store lives: a local path, or an fsspec URL with its ``storage_options``.

A store is a local folder (``runs/a.zarr``) or any URL fsspec can write
(``s3://bucket/runs/a.zarr``, ``gs://...``, ``memory://a.zarr``) with the
``storage_options`` of that filesystem (credentials, ``endpoint_url``...). Local paths
stay :class:`~pathlib.Path` and keep the local fast paths (chunk files written
directly, :mod:`~infoshape.store.chunks`); a URL is opened through zarr's
``FsspecStore``, so every write goes through zarr's store API. The commit protocol
holds on both: each chunk and metadata object is written whole (an object store's
PUT is atomic), and the coordinate is written last.

Storage options are never written to the store (they may hold credentials).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "StorePath",
    "exists",
    "filesystem",
    "is_url",
    "join",
    "name_of",
    "normalize",
    "parse_storage_options",
    "with_name",
    "zarr_store",
]

StorePath = Path | str
"""A local store path (``Path``) or an fsspec URL (``str``, no trailing slash)."""

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_url(path: Any) -> bool:
    """Whether ``path`` is an fsspec URL (``s3://...``, ``memory://...``) and not a local path."""
    return isinstance(path, str) and _URL.match(path) is not None


def normalize(path: str | Path) -> StorePath:
    """``path`` as a ``Path`` when local, as a URL without trailing slash otherwise."""
    if is_url(path):
        return str(path).rstrip("/")
    return Path(path)


def name_of(path: str | Path) -> str:
    """The last component of a store path or URL (``a.zarr``)."""
    path = normalize(path)
    return path.name if isinstance(path, Path) else path.rsplit("/", 1)[-1]


def with_name(path: str | Path, name: str) -> StorePath:
    """The path or URL beside ``path`` called ``name`` (same folder, same filesystem)."""
    path = normalize(path)
    if isinstance(path, Path):
        return path.with_name(name)
    parent, _, _ = path.rpartition("/")
    return f"{parent}/{name}"


def join(base: str | Path, *parts: str) -> StorePath:
    """``base / parts`` for a local path, ``base/parts`` for a URL."""
    base = normalize(base)
    if isinstance(base, Path):
        return base.joinpath(*parts)
    return "/".join([base, *parts])


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path inside it (listings cache cleared)."""
    from fsspec.core import url_to_fs

    fs, inner = url_to_fs(url, **dict(storage_options or {}))
    fs.invalidate_cache()  # another process (a killed run) may have written since
    return fs, inner


def exists(path: str | Path, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether anything is at ``path`` (a local path or a URL)."""
    path = normalize(path)
    if isinstance(path, Path):
        return path.exists()
    fs, inner = filesystem(path, storage_options)
    return bool(fs.exists(inner))


def zarr_store(
    path: str | Path, storage_options: Mapping[str, Any] | None = None, read_only: bool = False
) -> Any:
    """What ``zarr.open_group`` takes for ``path``: the local path itself, or an ``FsspecStore``."""
    path = normalize(path)
    if isinstance(path, Path):
        return str(path)
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(
        path, storage_options=dict(storage_options or {}), read_only=read_only
    )


def parse_storage_options(texts: Sequence[str]) -> dict[str, Any]:
    """``["anon=true", "client_kwargs.endpoint_url=http://..."]`` as fsspec ``storage_options``.

    Raises:
        ConfigError: an entry without ``=``.
    """
    from infoshape.errors import ConfigError

    options: dict[str, Any] = {}
    for text in texts:
        key, equals, value = text.partition("=")
        if not equals or not key.strip():
            raise ConfigError(
                "cannot read a storage option",
                expected="KEY=VALUE (VALUE as JSON when it parses)",
                got=repr(text),
                fix="write it as --storage-option anon=true or "
                "--storage-option client_kwargs.endpoint_url=http://127.0.0.1:9000",
            )
        try:
            parsed: Any = json.loads(value)
        except ValueError:
            parsed = value
        *parents, last = key.strip().split(".")
        table: dict[str, Any] = options
        for part in parents:
            table = table.setdefault(part, {})
        table[last] = parsed
    return options
