"""The ``infoshape`` command line: train, analyze, sweep, report, plugins, datasets.

Every error infoshape raises (:class:`~infoshape.InfoshapeError`) is printed
without a traceback and exits with status 2; so does a usage error.
``python -m infoshape.cli`` runs the same program as the ``infoshape`` script.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infoshape.errors import ConfigError, InfoshapeError
from infoshape.store.location import parse_storage_options
from infoshape.syntax import cli_syntax

__all__ = [
    "EXIT_ERROR",
    "build_parser",
    "main",
    "parse_assignment",
    "parse_toml_value",
    "read_config_file",
    "train_settings",
]

EXIT_ERROR = 2

_TRAIN_EPILOG = """\
examples:
  infoshape train                                   # mlp on the embedded digits, 10 epochs
  infoshape train --model cnn --epochs 5 --csv runs/cnn.csv
  infoshape train --dataset mnist --data-root ~/data --model cnn --device cuda
  infoshape train --plugin csv --option csv.path="m.csv" --tap 'fc*' --overwrite
  infoshape train --model mlp --model-option hidden=[128,64] --no-probe
  infoshape train --config run.toml --epochs 3      # flags override the file
  infoshape train --resume runs/a.zarr              # continue a killed run
  infoshape train --resume runs/a.zarr --epochs 20  # train a finished run longer

config file (TOML): top-level keys are the flag names with underscores
  model = "cnn"          dataset = "digits"      epochs = 5       lr = 0.001
  plugins = ["csv"]      taps = ["relu1"]        probe = true     store = "runs/a.zarr"
  [model_options]        hidden = [128, 64]
  [options.csv]          path = "runs/a.csv"
On the command line, scalar flags replace the file's value, --plugin and --tap
replace its lists, --option and --model-option set single keys of its tables.
`store = false` in the file (or --no-store) writes no store.

open the store:
  import xarray; tree = xarray.open_datatree("runs/digits-mlp.zarr", engine="zarr")
"""

_ANALYZE_EPILOG = """\
examples:
  infoshape analyze runs/digits-mlp.zarr --estimator kl_pairwise
  infoshape analyze runs/a.zarr --estimator binning --tap relu1 --epochs ::2 --max-samples 500
  infoshape analyze runs/a.zarr --estimator kl_pairwise --option noise_var=0.001 --name kl2

--epochs takes epoch values (0 5 9) or one slice of the stored epochs by position
(::2 every other; --epochs=-1: the last). Results go to STORE/analysis/NAME (I_XT,
I_TY over epoch and tap): xarray.open_datatree(STORE, engine="zarr")["analysis/NAME"].
"""

_REPORT_EPILOG = """\
examples:
  infoshape report runs/a.zarr          # runs/a.report/information_plane_NAME.png, metrics.png
  infoshape report runs/a.zarr --out figures/
"""

_PLUGINS_EPILOG = """\
examples:
  infoshape plugins              # name, version, distribution, hooks
  infoshape plugins --options    # also each plugin's options with types and defaults
"""

_DATASETS_EPILOG = """\
examples:
  infoshape datasets
  infoshape train --dataset mnist --data-root ~/data   # a data set that needs a root
"""


# ------------------------------------------------------------------ values and files
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


# ------------------------------------------------------------------ storage options
def add_storage_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--storage-option KEY=VALUE`` (repeatable) for stores at fsspec URLs."""
    parser.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="storage_options",
        help="an option of the filesystem of a store at a URL (s3://bucket/a.zarr), VALUE "
        "as JSON when it parses (repeatable; a dotted KEY nests: "
        "client_kwargs.endpoint_url=http://127.0.0.1:9000)",
    )


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


# ------------------------------------------------------------------ parser
def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add_train(commands: Any) -> None:
    p = commands.add_parser(
        "train",
        help="train a zoo model on a registered data set, capturing and storing taps",
        description="Train a zoo model on a registered data set through an infoshape "
        "Session: enabled plugins add penalties and metrics, and the probe set's taps are "
        "stored at each epoch end in a zarr store that xarray opens.",
        epilog=_TRAIN_EPILOG,
        formatter_class=_formatter,
    )
    add = p.add_argument
    add("--config", metavar="FILE.toml", help="read settings from a TOML file (flags override)")
    add("--model", help="zoo model: mlp, cnn, resnet18 (default mlp)")
    add(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model option, VALUE in TOML syntax: hidden=[128,64] (repeatable)",
    )
    add("--dataset", help="registered data set (default digits; see `infoshape datasets`)")
    add("--data-root", metavar="DIR", help="folder holding the files of data sets that need them")
    add("--epochs", type=int, metavar="N", help="passes over the training split (default 10)")
    add("--batch-size", type=int, metavar="N", help="training batch size (default 64)")
    add("--lr", type=float, metavar="X", help="learning rate (default 0.001)")
    add("--optimizer", choices=["adam", "sgd"], help="adam (default) or sgd (no momentum)")
    add("--seed", type=int, metavar="N", help="seed of torch, numpy, shuffling, probe (default 0)")
    add(
        "--plugin",
        action="append",
        metavar="NAME",
        dest="plugins",
        help="enable a plugin (repeatable; `infoshape plugins` lists them)",
    )
    add(
        "--option",
        action="append",
        default=[],
        metavar="PLUGIN.KEY=VALUE",
        help="a plugin option, VALUE in TOML syntax: shade.beta=0.1 (repeatable)",
    )
    add("--store", metavar="PATH", help="zarr store to write, a path or an fsspec URL "
        "(s3://bucket/a.zarr) (default runs/<dataset>-<model>.zarr)")  # fmt: skip
    add("--no-store", action="store_true", help="write no store")
    add("--overwrite", action="store_const", const=True, help="replace an existing store")
    add(
        "--resume",
        metavar="STORE",
        help="continue the run in STORE from its last complete epoch (its settings are "
        "reused; --epochs N trains it longer; with --overwrite, changed settings start "
        "a new run there instead of being refused)",
    )
    add(
        "--no-probe",
        action="store_const",
        const=False,
        dest="probe",
        help="pass no probe set at epoch ends (so no taps are stored)",
    )
    add("--probe-size", type=int, metavar="N", help="at most N test samples probed (default 1000)")
    add(
        "--tap",
        action="append",
        metavar="MODULE",
        dest="taps",
        help="store this module's output for the probe set (name or glob; repeatable; "
        "default: the model's default taps)",
    )
    add("--csv", metavar="PATH", help="enable the csv plugin, writing metrics to PATH")
    add("--tensorboard", metavar="DIR", help="enable the tensorboard plugin, logging to DIR")
    add("--device", help="torch device: cpu (default), cuda, cuda:1")
    add(
        "--no-progress",
        action="store_const",
        const=False,
        dest="progress",
        help="no progress bar (there is none when stderr is not a terminal)",
    )
    add_storage_option(p)
    p.set_defaults(run=_run_train)


def _add_analyze(commands: Any) -> None:
    p = commands.add_parser(
        "analyze",
        help="place each stored tap on the information plane, per epoch",
        description="Apply a registered estimator to the probe taps of a run store: for each "
        "epoch and tap, I(X;T) (probe inputs X, the tap's representation T) and I(T;Y) "
        "(labels Y). The store is read one (epoch, tap) slab at a time and the results "
        "are written back as STORE/analysis/NAME (replacing an earlier run of the same NAME).",
        epilog=_ANALYZE_EPILOG,
        formatter_class=_formatter,
    )
    add = p.add_argument
    add("store", metavar="STORE", help="the run store (a .zarr folder with probe taps)")
    add("--estimator", required=True, metavar="NAME", help="estimator: kl_pairwise, binning, ...")
    add("--tap", action="append", metavar="NAME", dest="taps", help="a stored tap (repeatable; "
        "default: every tap in probe/)")  # fmt: skip
    add("--epochs", nargs="+", metavar="E", help="epoch values, or one START:STOP[:STEP] slice")
    add("--max-samples", type=int, metavar="N", help="a seeded random subset of N probe samples")
    add("--seed", type=int, default=0, metavar="N", help="seed of that subset (default 0)")
    add("--name", help="group under analysis/ (default: the estimator's name)")
    add("--option", action="append", default=[], metavar="KEY=VALUE", help="an estimator "
        "option, VALUE in TOML syntax: noise_var=0.01 (repeatable)")  # fmt: skip
    add("--no-progress", action="store_false", dest="progress", help="no progress bar")
    add_storage_option(p)
    p.set_defaults(run=_run_analyze)


def build_parser() -> argparse.ArgumentParser:
    """The ``infoshape`` argument parser with its subcommands."""
    from infoshape import __version__

    parser = argparse.ArgumentParser(
        prog="infoshape",
        description="Capture neural-network representations during training to measure and "
        "regularize information.",
        epilog="examples:\n  infoshape train --epochs 5 --store runs/a.zarr\n"
        "  infoshape analyze runs/a.zarr --estimator kl_pairwise\n  infoshape report runs/a.zarr\n"
        "  infoshape sweep --plugin cr --coefficient 0.01 --seed 0 --seed 1\n"
        "  infoshape plugins --options\n  infoshape datasets\n\n"
        "`infoshape COMMAND --help` describes each command.",
        formatter_class=_formatter,
    )
    parser.add_argument("--version", action="version", version=f"infoshape {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_train(commands)
    _add_analyze(commands)
    from infoshape.apps.sweep import add_parser as _add_sweep  # light: trains nothing at import

    _add_sweep(commands, _formatter)
    p = commands.add_parser(
        "report",
        help="draw the information planes and metric curves of a store as PNG files",
        description="Draw a run store's plots: the information plane of every analysis/NAME "
        "group (I(X;T) against I(T;Y), one curve per tap, coloured by epoch) and the metric "
        "curves over steps and epochs. Prints the files written.",
        epilog=_REPORT_EPILOG,
        formatter_class=_formatter,
    )
    p.add_argument("store", metavar="STORE", help="the run store (a .zarr folder)")
    p.add_argument("--out", metavar="DIR", help="output folder (default STORE stem + .report)")
    add_storage_option(p)
    p.set_defaults(run=_run_report)
    p = commands.add_parser(
        "plugins",
        help="list installed plugins",
        description="List the plugins installed under the infoshape.plugins entry-point "
        "group: name, version, distribution and the hooks each implements. A plugin "
        "that fails to load is listed with its error.",
        epilog=_PLUGINS_EPILOG,
        formatter_class=_formatter,
    )
    p.add_argument("--options", action="store_true", help="also list each plugin's options")
    p.set_defaults(run=_run_plugins)
    p = commands.add_parser(
        "datasets",
        help="list registered data sets",
        description="List the data sets registered by installed plugins: name, number of "
        "classes, input shape, whether files under --data-root are needed, description.",
        epilog=_DATASETS_EPILOG,
        formatter_class=_formatter,
    )
    p.set_defaults(run=_run_datasets)
    return parser


# ------------------------------------------------------------------ train
_FLAG_KEYS = (
    "model", "dataset", "data_root", "epochs", "batch_size", "lr", "optimizer", "seed",
    "store", "overwrite", "probe", "probe_size", "taps", "plugins", "device", "progress",
)  # fmt: skip


def _merged(table: Any, additions: dict[str, Any], nested: bool = False) -> Any:
    """``table`` (from the file) with ``additions`` (from flags) set key by key."""
    if not isinstance(table, dict):
        return table  # left for TrainConfig to refuse with its message
    merged = dict(table)
    for key, value in additions.items():
        inner = merged.get(key)
        merged[key] = {**inner, **value} if nested and isinstance(inner, dict) else value
    return merged


def train_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Merge the config file (if any) and the ``train`` flags into one dict; flags win."""
    settings = read_config_file(args.config) if args.config else {}
    for key in _FLAG_KEYS:
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    if args.no_store:
        settings["store"] = None
    plugins = settings.get("plugins", [])
    plugins = list(plugins) if isinstance(plugins, list | tuple) else plugins  # "x": refused
    options: dict[str, dict[str, Any]] = {}
    for text in args.option:
        plugin, key, value = parse_assignment(text, dotted=True)
        options.setdefault(str(plugin), {})[key] = value
    for plugin, key, value in (
        ("csv", "path", args.csv),
        ("tensorboard", "log_dir", args.tensorboard),
    ):
        if value is not None:
            plugins += [] if plugin in plugins or not isinstance(plugins, list) else [plugin]
            options.setdefault(plugin, {})[key] = value
    if plugins or "plugins" in settings:
        settings["plugins"] = plugins
    if options:
        settings["options"] = _merged(settings.get("options", {}), options, nested=True)
    model_options = {}
    for text in args.model_option:
        _, key, value = parse_assignment(text, dotted=False)
        model_options[key] = value
    if model_options:
        settings["model_options"] = _merged(settings.get("model_options", {}), model_options)
    return settings


def _run_train(args: argparse.Namespace) -> int:
    from infoshape.apps.trainer import TrainConfig, resume_config, train

    storage = parse_storage_options(args.storage_options)
    if args.resume:
        config, resume = resume_config(args.resume, train_settings(args), storage)
    else:
        config, resume = TrainConfig.from_mapping(train_settings(args)), False
    result = train(config, resume=resume, storage_options=storage)
    print(
        f"trained {config.model} on {config.dataset} for {config.epochs} epochs "
        f"in {result.elapsed_s:.1f} s" + (" (resumed)" if resume else "")
    )
    print(f"  train accuracy {result.train_accuracy:.4f}   loss {result.train_loss:.4f}")
    print(f"  test accuracy  {result.test_accuracy:.4f}   loss {result.test_loss:.4f}")
    if result.store is not None:
        print(f"  store          {result.store}")
        print(
            f'  open it with   import xarray; xarray.open_datatree("{result.store}", engine="zarr")'
        )
    return 0


# ------------------------------------------------------------------ analyze, report
def _run_analyze(args: argparse.Namespace) -> int:
    from infoshape.apps.analysis import analyze, format_results, parse_epochs

    own = {key: getattr(args, key) for key in ("taps", "max_samples", "seed", "name")}
    options = dict(parse_assignment(text, dotted=False)[1:] for text in args.option)
    epochs, bar = parse_epochs(args.epochs), args.progress and sys.stderr.isatty()
    storage = parse_storage_options(args.storage_options)
    result = analyze(
        args.store,
        args.estimator,
        epochs=epochs,
        progress=bar,
        storage_options=storage,
        **own,
        **options,
    )
    print(f"wrote {args.store}/analysis/{args.name or args.estimator}")
    print(format_results(result))
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from infoshape.apps.report import report

    paths = report(
        args.store, out_dir=args.out, storage_options=parse_storage_options(args.storage_options)
    )
    print("\n".join(map(str, paths)) or "nothing to draw: the store holds no metrics")
    if not any(p.name.startswith("information_plane") for p in paths):
        print(f"no analysis/ results: run `infoshape analyze {args.store} --estimator NAME`")
    return 0


# ------------------------------------------------------------------ listings
def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _summary(obj: Any) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0].replace("``", "") if doc else ""


def _config_lines(plugin: Any) -> list[str]:
    import attrs

    from infoshape.options import describe_type

    config_cls = getattr(plugin, "Config", None)
    if config_cls is None or not attrs.has(config_cls):
        return ["    (no options)"]
    try:
        attrs.resolve_types(config_cls)
    except Exception as err:  # an annotation that does not resolve: say so, go on
        return [f"    (options unreadable: {err!r})"]
    lines = []
    for field in attrs.fields(config_cls):
        if isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            default = f"{field.default.factory.__name__}()"
        else:
            default = "(required)" if field.default is attrs.NOTHING else repr(field.default)
        lines.append(f"    {field.alias or field.name}: {describe_type(field.type)} = {default}")
    return lines or ["    (no options)"]


def _run_plugins(args: argparse.Namespace) -> int:
    from infoshape.plugin_manager import build_plugin_manager, installed_plugins

    rows = [("NAME", "VERSION", "DISTRIBUTION", "HOOKS (infoshape_*)", "DESCRIPTION")]
    details: dict[str, list[str]] = {}
    for name, entry_point in sorted(installed_plugins().items()):
        dist = entry_point.dist.name if entry_point.dist else "?"
        try:
            info = build_plugin_manager(enable=[name]).infos[name]
        except Exception as err:  # listed, not fatal: one broken plugin hides no other
            rows.append((name, "?", dist, "BROKEN", f"cannot load {entry_point.value}"))
            details[name] = [f"    {line}" for line in str(err).splitlines()]
            continue
        hooks = ", ".join(h.removeprefix("infoshape_") for h in info.hooks) or "(none)"
        rows.append((name, info.version, info.distribution or dist, hooks, _summary(info.plugin)))
        if args.options:
            details[name] = _config_lines(info.plugin)
    if len(rows) == 1:
        print("no plugins installed (entry-point group infoshape.plugins)")
        return 0
    print(_table(rows))
    for name, lines in details.items():
        print(f"\n{name}:")
        print("\n".join(lines))
    return 0


def _run_datasets(args: argparse.Namespace) -> int:
    from infoshape.registry import list_datasets

    rows = [("NAME", "CLASSES", "SHAPE", "NEEDS ROOT", "DESCRIPTION")]
    for spec in list_datasets():
        shape = "x".join(map(str, spec.input_shape))
        needs = "yes" if spec.needs_root else "no"
        rows.append((spec.name, str(spec.n_classes), shape, needs, spec.description))
    print(_table(rows) if len(rows) > 1 else "no data sets registered")
    return 0


# ------------------------------------------------------------------ entry
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``infoshape`` command line; return the exit status.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        0 on success; 2 on a usage error or an :class:`~infoshape.InfoshapeError`
        (its message printed to stderr, no traceback); 130 when interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help and --version exit 0, usage errors 2
        return int(exit_.code or 0)
    try:
        with cli_syntax():  # fixes in messages name flags, not Python arguments
            return int(args.run(args))
    except InfoshapeError as err:
        print(f"infoshape: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as err:  # RunInterrupted says what was kept and how to resume
        print(f"infoshape: {err}" if str(err) else "infoshape: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
