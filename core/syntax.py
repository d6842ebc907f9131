"""Fixes in the user's own syntax: Python for the API, flags for the command line.

An error's fix that names a setting is built with these helpers, so the same
check reads ``options={"information_dropout": {"layers": ["fc1"]}}`` to a
Python user and ``--option information_dropout.layers='["fc1"]'`` to a CLI
user. The ``infoshape`` command runs inside :func:`cli_syntax` (a context
variable, so threads and other callers are not affected); everything else
gets Python syntax::

    raise ConfigError(..., fix=f"name the layers: {option_syntax('shade', 'layers', ['fc1'])}")
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import re
import shlex
from collections.abc import Iterator
from typing import Any

__all__ = ["by_syntax", "cli_syntax", "option_syntax", "plugin_syntax"]

_CLI: contextvars.ContextVar[bool] = contextvars.ContextVar("infoshape_cli", default=False)


@contextlib.contextmanager
def cli_syntax() -> Iterator[None]:
    """Within this block fixes are written as command-line flags (``infoshape`` sets it)."""
    token = _CLI.set(True)
    try:
        yield
    finally:
        _CLI.reset(token)


def by_syntax(python: str, cli: str) -> str:
    """``cli`` inside :func:`cli_syntax`, else ``python``.

    Example: ``by_syntax("overwrite=True", "--overwrite")``.
    """
    return cli if _CLI.get() else python


def _python(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(_python, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_python(k)}: {_python(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _toml(value: Any, top: bool = False) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):  # the CLI reads a bare word as a string: exp, m.csv
        bare = top and re.fullmatch(r"[A-Za-z_][\w.-]*", value)
        return value if bare and value not in ("true", "false", "inf", "nan") else json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(map(_toml, value)) + "]"
    return repr(value)


def option_syntax(plugin: str, key: str, value: Any) -> str:
    """How to set one plugin option to ``value``.

    ``options={"information_dropout": {"layers": ["fc1"]}}`` in Python,
    ``--option information_dropout.layers='["fc1"]'`` on the command line.
    """
    python = f"options={{{_python(plugin)}: {{{_python(key)}: {_python(value)}}}}}"
    return by_syntax(python, f"--option {plugin}.{key}={shlex.quote(_toml(value, top=True))}")


def plugin_syntax(*names: str) -> str:
    """How to enable plugins: ``plugins=["shade"]`` in Python, ``--plugin shade`` on the CLI."""
    python = f"plugins=[{', '.join(map(_python, names))}]"
    return by_syntax(python, " ".join(f"--plugin {name}" for name in names))
