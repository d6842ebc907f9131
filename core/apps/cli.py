"""The ``infoshape`` command line: train, analyze, sweep, report, plugins, datasets.

This module dispatches: each command's flags sit beside its application
(``train``: :mod:`infoshape.apps.train_command`, ``sweep``:
:mod:`infoshape.apps.sweep_command`, the flags they share: :mod:`infoshape.apps.flags`);
``analyze``, ``report`` and the listings are small enough to live here. Every error
infoshape raises (:class:`~infoshape.InfoshapeError`) is printed without a traceback and
exits with status 2; so does a usage error. ``--quiet`` and ``--verbose`` (train, sweep,
analyze, report) set what the ``infoshape`` loggers print (:mod:`infoshape.apps.logs`).
``python -m infoshape.cli`` runs the same program as the ``infoshape`` script.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from infoshape.apps.flags import (
    add_scheduler_option,
    add_storage_option,
    formatter,
    parse_assignment,
    parse_toml_value,
    read_config_file,
)
from infoshape.apps.logs import QUIET, add_verbosity_flags, configure_logging
from infoshape.apps.sweep_command import add_parser as _add_sweep
from infoshape.apps.train_command import add_parser as _add_train
from infoshape.apps.train_command import train_settings
from infoshape.errors import InfoshapeError
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

_ANALYZE_EPILOG = """\
examples:
  infoshape analyze runs/digits-mlp.zarr --estimator kl_pairwise
  infoshape analyze runs/a.zarr --estimator binning --tap relu1 --epochs ::2 --max-samples 500
  infoshape analyze runs/a.zarr --estimator kl_pairwise --option noise_var=0.001 --name kl2
  infoshape analyze sweeps/demo --estimator binning --scheduler local:4  # every cell, 4 workers

--epochs takes epoch values (0 5 9) or one slice of the stored epochs by position
(::2 every other; --epochs=-1: the last). Results go to STORE/analysis/NAME (I_XT,
I_TY over epoch and tap): xarray.open_datatree(STORE, engine="zarr")["analysis/NAME"].
Several stores (or a sweep's folder, or a quoted glob) are analysed with the same settings;
with --scheduler each (run, epoch, tap) slab is a task of a dask cluster.
"""

_REPORT_EPILOG = """\
examples:
  infoshape report runs/a.zarr          # runs/a.report/information_plane_NAME.png, metrics.png
  infoshape report runs/a.zarr --out figures/
  infoshape report sweeps/a             # a sweep: sweeps/a/report/index.md, metrics.png
"""

_COMPARE_EPILOG = """\
examples:
  infoshape compare sweeps/a --metric test.accuracy          # a sweep's folder
  infoshape compare 'runs/*.zarr' --metric train.loss --by plugin,coefficient
  infoshape compare runs/a.zarr runs/b.zarr --metric I_TY --analysis kl_pairwise
  infoshape compare sweeps/a --metric test.accuracy --metric test.loss --csv t.csv

Each group's runs (its seeds) give mean ± std (ddof=1) of each run's value at its
last epoch. The figure (default SWEEP/compare/METRIC.png, or compare/ beside the
stores) draws each metric over the epochs, one colour per group (mean line, ±std
band), and with --analysis the information-plane trajectories per tap.
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


def _add_analyze(commands: Any) -> None:
    p = commands.add_parser(
        "analyze",
        help="place each stored tap on the information plane, per epoch",
        description="Apply a registered estimator to the probe taps of a run store: for each "
        "epoch and tap, I(X;T) (probe inputs X, the tap's representation T) and I(T;Y) "
        "(labels Y). The store is read one (epoch, tap) slab at a time and the results "
        "are written back as STORE/analysis/NAME (replacing an earlier run of the same NAME).",
        epilog=_ANALYZE_EPILOG,
        formatter_class=formatter,
    )
    add = p.add_argument
    add("stores", nargs="+", metavar="STORE", help="a run store (a .zarr folder with probe "
        "taps), several, a sweep's --out folder or a quoted glob 'runs/*.zarr'")  # fmt: skip
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
    add_verbosity_flags(p)
    add_scheduler_option(p, "each (run, epoch, tap) slab")
    p.set_defaults(run=_run_analyze)


def _add_compare(commands: Any) -> None:
    p = commands.add_parser(
        "compare",
        help="compare groups of runs: mean ± std over seeds, and their curves in one figure",
        description="Group runs by configuration (plugin, coefficient, ...) and print, per "
        "group, the mean ± std over its runs (seeds) of metrics at the last epoch; draw "
        "their curves over the epochs (or information-plane trajectories) in one PNG.",
        epilog=_COMPARE_EPILOG,
        formatter_class=formatter,
    )
    add = p.add_argument
    add("runs", nargs="+", metavar="RUNS", help="stores, globs ('runs/*.zarr') or sweep folders")
    add("--metric", action="append", metavar="NAME", dest="metrics", help="an epoch "
        "metric (test.accuracy) or I_XT/I_TY of --analysis (repeatable; default "
        "test.accuracy)")  # fmt: skip
    add("--by", default="plugin,coefficient", metavar="A,B", help="run coordinates making "
        "a group: plugin, coefficient, model, dataset, seed, ... (default "
        "plugin,coefficient)")  # fmt: skip
    add("--analysis", metavar="NAME", help="an analysis/NAME group of the runs (I_XT, I_TY)")
    add("--out", metavar="FIG.png", help="the figure's file")
    add("--no-figure", action="store_false", dest="figure", help="print the table only")
    add("--csv", metavar="PATH", help="also write the table as CSV")
    add("--json", metavar="PATH", help="also write the table as JSON")
    add_storage_option(p)
    p.set_defaults(run=_run_compare)


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
        "  infoshape compare sweeps/a --metric test.accuracy\n"
        "  infoshape plugins --options\n  infoshape datasets\n\n"
        "`infoshape COMMAND --help` describes each command.",
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"infoshape {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_train(commands, formatter)
    _add_analyze(commands)
    _add_sweep(commands, formatter)
    _add_compare(commands)
    p = commands.add_parser(
        "report",
        help="draw the information planes and metric curves of a store as PNG files",
        description="Draw a run store's plots: the information plane of every analysis/NAME "
        "group (I(X;T) against I(T;Y), one curve per tap, coloured by epoch) and the metric "
        "curves over steps and epochs. Prints the files written.",
        epilog=_REPORT_EPILOG,
        formatter_class=formatter,
    )
    p.add_argument("store", metavar="STORE", help="the run store (a .zarr folder)")
    p.add_argument("--out", metavar="DIR", help="output folder (default STORE stem + .report)")
    add_storage_option(p)
    add_verbosity_flags(p)
    p.set_defaults(run=_run_report)
    p = commands.add_parser(
        "plugins",
        help="list installed plugins",
        description="List the plugins installed under the infoshape.plugins entry-point "
        "group: name, version, distribution and the hooks each implements. A plugin "
        "that fails to load is listed with its error.",
        epilog=_PLUGINS_EPILOG,
        formatter_class=formatter,
    )
    p.add_argument("--options", action="store_true", help="also list each plugin's options")
    p.set_defaults(run=_run_plugins)
    p = commands.add_parser(
        "datasets",
        help="list registered data sets",
        description="List the data sets registered by installed plugins: name, number of "
        "classes, input shape, whether files under --data-root are needed, description.",
        epilog=_DATASETS_EPILOG,
        formatter_class=formatter,
    )
    p.set_defaults(run=_run_datasets)
    return parser


# ------------------------------------------------------------------ analyze, report
def _run_analyze(args: argparse.Namespace) -> int:
    from infoshape.apps.analysis import analyze_runs, format_results, parse_epochs
    from infoshape.apps.runs import find_runs
    from infoshape.store.location import parse_storage_options

    own = {key: getattr(args, key) for key in ("taps", "max_samples", "seed", "name")}
    options = dict(parse_assignment(text, dotted=False)[1:] for text in args.option)
    quiet = args.verbosity <= QUIET
    epochs, bar = parse_epochs(args.epochs), args.progress and not quiet and sys.stderr.isatty()
    storage = parse_storage_options(args.storage_options)
    stores = [store for text in args.stores for store in find_runs(text, storage)]
    results = analyze_runs(
        stores,
        args.estimator,
        epochs=epochs,
        progress=bar,
        storage_options=storage,
        scheduler=args.scheduler,
        **own,
        **options,
    )
    for store, result in zip(stores, results, strict=True):
        print(f"wrote {store}/analysis/{args.name or args.estimator}")
        if not quiet:
            print(format_results(result))
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from infoshape.apps.report import report
    from infoshape.store.location import parse_storage_options

    paths = report(
        args.store, out_dir=args.out, storage_options=parse_storage_options(args.storage_options)
    )
    if args.verbosity <= QUIET:  # the one result line
        print(f"wrote {len(paths)} files: {', '.join(map(str, paths))}")
        return 0
    print("\n".join(map(str, paths)) or "nothing to draw: the store holds no metrics")
    sweep = Path(args.store, "sweep.json").is_file()
    if not sweep and not any(p.name.startswith("information_plane") for p in paths):
        print(f"no analysis/ results: run `infoshape analyze {args.store} --estimator NAME`")
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from infoshape.apps.compare import compare
    from infoshape.store.location import parse_storage_options

    comparison, written = compare(
        args.runs,
        args.metrics or ["test.accuracy"],
        by=[b.strip() for b in args.by.split(",") if b.strip()],
        analysis=args.analysis,
        out=args.out,
        storage_options=parse_storage_options(args.storage_options),
        figure=args.figure,
    )
    print(comparison.to_text())
    for path, text in ((args.csv, comparison.to_csv), (args.json, comparison.to_json)):
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text(), encoding="utf-8")
            written.append(Path(path))
    for path in written:
        print(f"wrote {path}")
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
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # for train --nproc
    try:
        # fixes in messages name flags, not Python arguments; the loggers print per --quiet,
        # --verbose (infoshape.apps.logs)
        with cli_syntax(), configure_logging(getattr(args, "verbosity", 0)):
            return int(args.run(args))
    except InfoshapeError as err:
        print(f"infoshape: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as err:  # RunInterrupted says what was kept and how to resume
        print(f"infoshape: {err}" if str(err) else "infoshape: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
