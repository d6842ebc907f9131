"""What the ``train`` and ``sweep`` commands share: values, config files, run flags.

A run's settings come from a TOML file (``--config``) and from flags, the flags
winning; the flags that set a training run (model, data set, epochs, plugin and model
options ...) are the same for ``infoshape train`` and for the base run of
``infoshape sweep``, defined once here (:func:`add_run_flags`).
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

from infoshape.errors import ConfigError

__all__ = [
    "RUN_FLAG_KEYS",
    "add_run_flags",
    "add_scheduler_option",
    "add_storage_option",
    "formatter",
    "option_tables",
    "parse_assignment",
    "parse_toml_value",
    "read_config_file",
    "settings_from_flags",
]

RUN_FLAG_KEYS = (
    "model",
    "dataset",
    "data_root",
    "epochs",
    "batch_size",
    "lr",
    "device",
    "amp",
    "compile",
    "log_every",
)
"""The scalar run flags of :func:`add_run_flags`, as settings keys."""


def formatter(prog: str) -> argparse.HelpFormatter:
    """The help formatter of every ``infoshape`` command (examples kept as written)."""
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def add_storage_option(parser: argparse.ArgumentParser, what: str = "a store") -> None:
    """Add ``--storage-option KEY=VALUE`` (repeatable) for stores at fsspec URLs."""
    parser.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="storage_options",
        help=f"an option of the filesystem of {what} at a URL (s3://bucket/a.zarr), VALUE "
        "as JSON when it parses (repeatable; a dotted KEY nests: "
        "client_kwargs.endpoint_url=http://127.0.0.1:9000)",
    )


def add_scheduler_option(parser: argparse.ArgumentParser, what: str) -> None:
    """Add ``--scheduler local:N | tcp://HOST:PORT`` (:mod:`infoshape.apps.scheduler`)."""
    parser.add_argument(
        "--scheduler",
        metavar="SPEC",
        help=f"run {what} as tasks of a dask.distributed cluster: local:N (N worker "
        "processes here) or tcp://HOST:PORT (a running `dask scheduler`); default: in "
        "this process, one after the other (needs the infoshape[distributed] extra)",
    )


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Add the flags that set a training run: model, data, schedule, options, device."""
    add = parser.add_argument
    add("--model", help="zoo model: mlp, cnn, resnet18 (default mlp)")
    add("--model-option", action="append", default=[], metavar="KEY=VALUE",
        help="a model option, VALUE in TOML syntax: hidden=[128,64] (repeatable)")  # fmt: skip
    add("--dataset", help="registered data set (default digits; see `infoshape datasets`)")
    add("--data-root", metavar="DIR", help="folder holding the files of data sets that need them")
    add("--epochs", type=int, metavar="N", help="passes over the training split (default 10)")
    add("--batch-size", type=int, metavar="N", help="training batch size (default 64)")
    add("--lr", type=float, metavar="X", help="learning rate (default 0.001)")
    add("--option", action="append", default=[], metavar="PLUGIN.KEY=VALUE",
        help="a plugin option, VALUE in TOML syntax: shade.beta=0.1 (repeatable)")  # fmt: skip
    add(
        "--device",
        help="torch device: auto (default: cuda when there is one, else cpu), cpu, cuda:1",
    )
    add(
        "--amp",
        choices=["off", "bf16", "fp16"],
        help="mixed precision: bf16 or fp16 autocast (fp16 with a gradient scaler); default off",
    )
    add(
        "--compile",
        nargs="?",
        const=True,
        metavar="BACKEND",
        help="train through torch.compile(model), with BACKEND if given (default inductor); "
        "capture hooks are traced into the graph",
    )
    add(
        "--log-every",
        type=int,
        metavar="N",
        help="read step metrics back from the device every N steps (default 50): the step "
        "itself never waits for the device",
    )


def option_tables(args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """``--option`` flags as ``{plugin: {key: value}}``, ``--model-option`` as ``{key: value}``."""
    options: dict[str, dict[str, Any]] = {}
    for text in args.option:
        plugin, key, value = parse_assignment(text, dotted=True)
        options.setdefault(str(plugin), {})[key] = value
    model_options = {}
    for text in args.model_option:
        _, key, value = parse_assignment(text, dotted=False)
        model_options[key] = value
    return options, model_options


def parse_toml_value(text: str) -> Any:
    """Parse ``text`` as a TOML value (``0.1``, ``true``, ``[1, 2]``, ``"x"``); else a string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def parse_assignment(text: str, dotted: bool) -> tuple[str | None, str, Any]:
    """Split ``PLUGIN.KEY=VALUE`` (``dotted``) or ``KEY=VALUE`` into its parts.

    Returns:
        ``(plugin or None, key, value parsed by parse_toml_value)``.

    Raises:
        ConfigError: when the text has no ``=`` or (dotted) no ``PLUGIN.`` part.
    """
    left, equals, right = text.partition("=")
    plugin, dot, key = left.strip().rpartition(".") if dotted else (None, "", left.strip())
    if not equals or not key or (dotted and not (dot and plugin)):
        form = "PLUGIN.KEY=VALUE" if dotted else "KEY=VALUE"
        raise ConfigError(
            "cannot read an option",
            expected=form,
            got=repr(text),
            fix=f"write it as {form}, e.g. " + ("csv.path=m.csv" if dotted else "hidden=[128,64]"),
        )
    return plugin, key, parse_toml_value(right.strip())


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML train config (see ``infoshape train --help``) into a plain dict.

    ``store = false`` becomes ``store = None`` (no store).

    Raises:
        ConfigError: the file is missing or is not valid TOML.
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            settings = tomllib.load(file)
    except OSError as err:
        raise ConfigError(
            f"cannot read the config file {path}",
            expected="a readable TOML file",
            got=repr(err),
            fix="check the path given to --config",
        ) from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(
            f"the config file {path} is not valid TOML",
            expected="TOML (https://toml.io)",
            got=str(err),
            fix='fix the line named above; strings need quotes: model = "cnn"',
        ) from err
    if settings.get("store") is False:
        settings["store"] = None
    return settings


def _merged(table: Any, additions: dict[str, Any], nested: bool = False) -> Any:
    """``table`` (from the file) with ``additions`` (from flags) set key by key."""
    if not isinstance(table, dict):
        return table  # left for TrainConfig to refuse with its message
    merged = dict(table)
    for key, value in additions.items():
        inner = merged.get(key)
        merged[key] = {**inner, **value} if nested and isinstance(inner, dict) else value
    return merged


def settings_from_flags(args: argparse.Namespace, keys: tuple[str, ...]) -> dict[str, Any]:
    """The ``--config`` file's settings (if any) with the flags applied; flags win.

    Each flag in ``keys`` that was given replaces the file's value; ``--option`` and
    ``--model-option`` set single keys of its ``options`` and ``model_options`` tables.
    The settings of ``infoshape train`` and of the base run of ``infoshape sweep``.
    """
    settings = read_config_file(args.config) if args.config else {}
    for key in keys:
        if (value := getattr(args, key)) is not None:
            settings[key] = value
    options, model_options = option_tables(args)
    if options:
        settings["options"] = _merged(settings.get("options", {}), options, nested=True)
    if model_options:
        settings["model_options"] = _merged(settings.get("model_options", {}), model_options)
    return settings
