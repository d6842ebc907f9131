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

import contextlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
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
    "write_text",
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


#: exception class names (anywhere in an error's cause chain) meaning the endpoint refused or
#: never answered: s3fs turns a 403 into ``PermissionError``; botocore and aiohttp raise these
_REFUSED = {
    "NoCredentialsError": "no credentials were found",
    "PartialCredentialsError": "the credentials are incomplete",
    "EndpointConnectionError": "the endpoint could not be reached",
    "ConnectTimeoutError": "the endpoint did not answer",
    "ClientConnectorError": "the endpoint could not be reached",
}
_REFUSED_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken")


def _refusal(err: BaseException) -> str | None:
    """Why the storage endpoint refused the request, or ``None`` for any other error."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for cls in type(current).__mro__:
            if cls.__name__ in _REFUSED:
                return _REFUSED[cls.__name__]
        code = getattr(current, "response", {}) or {}
        code = code.get("Error", {}).get("Code") if isinstance(code, dict) else None
        if code in _REFUSED_CODES or isinstance(current, PermissionError):
            return f"the credentials were refused ({code or current})"
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def storage_errors(path: str | Path, storage_options: Mapping[str, Any] | None) -> Iterator[None]:
    """Turn a refused or unreachable URL (credentials, endpoint) into a ``StoreError``.

    Local paths and other errors pass unchanged. The message names the URL, what was
    refused, the endpoint and the options that fix it (never their secret values).
    """
    from infoshape.errors import StoreError
    from infoshape.syntax import by_syntax

    try:
        yield
    except StoreError:
        raise
    except Exception as err:
        why = _refusal(err) if is_url(path) else None
        if why is None:
            raise
        options = dict(storage_options or {})
        endpoint = (options.get("client_kwargs") or {}).get("endpoint_url") or "the default"
        given = ", ".join(sorted(options)) or "none"
        raise StoreError(
            f"cannot use the store {path}: {why}",
            expected="credentials and an endpoint the storage accepts",
            got=f"{type(err).__name__}: {err} (endpoint {endpoint}; storage options given: "
            f"{given})",
            fix=by_syntax(
                "pass storage_options={'key': ..., 'secret': ..., 'client_kwargs': "
                "{'endpoint_url': 'http://host:port'}} (or set AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY)",
                "pass --storage-option key=... --storage-option secret=... "
                "--storage-option client_kwargs.endpoint_url=http://host:port (or set "
                "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)",
            ),
        ) from err


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


def write_text(
    folder: StorePath, name: str, text: str, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Write ``text`` (UTF-8) as ``folder/name``: a local file, or one object at a URL."""
    if isinstance(folder, Path):
        (folder / name).write_text(text, encoding="utf-8")
        return
    fs, inner = filesystem(f"{folder}/{name}", storage_options)
    fs.pipe_file(inner, text.encode("utf-8"))
