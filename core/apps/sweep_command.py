"""The ``infoshape sweep`` command: its flags, merged with a config file, and its run.

The sweep itself (grid, cells, resuming, summary) is :mod:`infoshape.apps.sweep`; the
flags of the base run are those of ``infoshape train``
(:func:`infoshape.apps.flags.add_run_flags`).
"""

from __future__ import annotations

import logging
from typing import Any

from infoshape.apps.flags import (
    RUN_FLAG_KEYS,
    add_run_flags,
    add_scheduler_option,
    add_storage_option,
    parse_assignment,
    settings_from_flags,
)
from infoshape.apps.logs import PROGRESS, QUIET, add_verbosity_flags
from infoshape.errors import ConfigError

__all__ = ["EPILOG", "add_parser", "run_command", "sweep_settings"]

EPILOG = """\
examples:
  infoshape sweep --plugin cr --plugin l1r --coefficient 0.01 --coefficient 0.1 \\
      --seed 0 --seed 1 --epochs 10 --out sweeps/demo
  infoshape sweep --config sweep.toml                 # run (or finish) the sweep in the file
  infoshape sweep --config sweep.toml --summary-only  # only rebuild summary.md / summary.csv
  infoshape sweep --config sweep.toml --scheduler local:4  # 4 cells at a time (dask)
  infoshape sweep --configuration dropout:dropout=0.5 --configuration bn:batch_norm=true

config file (TOML): the `infoshape train` keys at top level, the grid under [sweep]
  model = "mlp"    dataset = "digits"    epochs = 20
  [model_options]  hidden = [100, 100, 100, 100, 100]
  [sweep]          out = "sweeps/cr"    seeds = [0, 1, 2]
                   plugins = ["cr", "l1r", "rr"]    coefficients = [0.01, 0.1]
                   measure = ["characteristics"]
  [sweep.configurations.dropout]   model_options = {dropout = 0.5}
  [sweep.configurations.bn]        model_options = {batch_norm = true}
Flags add to the file: --plugin/--coefficient/--seed/--configuration/--measure replace
its lists, --option and --model-option set keys of the base run.

Each cell (group x seed) trains into OUT/cells/GROUP-seedK.zarr. Running the same
command again skips complete cells and retrains interrupted or failed ones. The summary
(OUT/summary.md, OUT/summary.csv) gives, per group, mean +- std over seeds of the test
error (%) and of every epoch metric of the measured plugins (--measure NAME or
[sweep] measure: enabled in every cell, their metrics NAME.* summarized at the last epoch).
"""


def _configuration(text: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = text.partition(":")
    if not name.strip():
        raise ConfigError(
            "cannot read a configuration",
            expected="NAME or NAME:KEY=VALUE[;KEY=VALUE] (model options)",
            got=repr(text),
            fix="e.g. --configuration dropout:dropout=0.5",
        )
    options = dict(parse_assignment(p, dotted=False)[1:] for p in rest.split(";") if p.strip())
    return name.strip(), ({"model_options": options} if options else {})


def sweep_settings(args: Any) -> dict[str, Any]:
    """Merge the config file (if any) and the ``sweep`` flags into one mapping; flags win."""
    from infoshape.apps.sweep import _merge

    settings = settings_from_flags(args, RUN_FLAG_KEYS)
    grid = dict(settings.get("sweep", {}) or {})
    if args.base_plugins:
        settings = _merge(settings, {"plugins": args.base_plugins})
    for key, value in (
        ("out", args.out),
        ("plugins", args.plugins),
        ("coefficients", args.coefficients),
        ("seeds", args.seeds),
        ("measure", args.measure),
    ):
        if value is not None:
            grid[key] = value
    if args.configurations:
        grid["configurations"] = dict(map(_configuration, args.configurations))
    if args.no_baseline:
        grid["baseline"] = False
    settings["sweep"] = grid
    return settings


def add_parser(commands: Any, formatter: Any) -> None:
    """Add the ``sweep`` subcommand to the ``infoshape`` parser's ``commands``."""
    p = commands.add_parser(
        "sweep",
        help="train a grid of configurations x seeds (one store each) and summarize it",
        description="Run a grid of training runs (one after the other, or as tasks of a "
        "dask cluster with --scheduler): a baseline, named "
        "configurations (model options such as dropout or batch norm), and plugins x "
        "coefficients, each for every seed, with the built-in trainer. Resumable: complete "
        "cells are not rerun. Writes OUT/summary.md and OUT/summary.csv: test error and "
        "every epoch metric of the measured plugins, mean +- std over seeds.",
        epilog=EPILOG,
        formatter_class=formatter,
    )
    add = p.add_argument
    add("--config", metavar="FILE.toml", help="read the base run and the [sweep] grid from TOML")
    add("--out", metavar="DIR", help="output folder (default sweeps/sweep)")
    add("--plugin", action="append", dest="plugins", metavar="NAME", help="a swept plugin, one "
        "group per coefficient (repeatable)")  # fmt: skip
    add("--coefficient", action="append", type=float, dest="coefficients", metavar="X",
        help="a value of each swept plugin's weight option: the one the plugin declares "
        "(shade: beta, irnn: alpha2, cr: coefficient) (repeatable)")  # fmt: skip
    add("--seed", action="append", type=int, dest="seeds", metavar="N", help="a seed "
        "(repeatable; default 0)")  # fmt: skip
    add("--configuration", action="append", dest="configurations", metavar="NAME[:K=V;...]",
        help="a named group of model options, e.g. dropout:dropout=0.5 (repeatable)")  # fmt: skip
    add("--no-baseline", action="store_true", help="leave out the unchanged base run")
    add("--base-plugin", action="append", dest="base_plugins", metavar="NAME",
        help="a plugin enabled in every cell (repeatable)")  # fmt: skip
    add("--measure", action="append", metavar="NAME", help="a plugin enabled in every cell "
        "whose epoch metrics (NAME.*) the summary reports, e.g. characteristics "
        "(repeatable)")  # fmt: skip
    add_run_flags(p)  # the base run of every cell, as for infoshape train
    add("--summary-only", action="store_true", help="train nothing; rebuild the summary")
    add_storage_option(p, "an --out")
    add_scheduler_option(p, "each cell")
    add("--no-progress", action="store_false", dest="progress", help="no progress bar")
    add_verbosity_flags(p)
    p.set_defaults(run=run_command)


def _log_line(message: str) -> None:
    """A sweep's per-cell line on the ``infoshape.progress`` logger (a failure: ERROR)."""
    level = logging.ERROR if ": FAILED " in message else logging.INFO
    logging.getLogger(PROGRESS).log(level, message)


def run_command(args: Any) -> int:
    """Run ``infoshape sweep``; exit status 1 when a cell failed."""
    from infoshape.apps.sweep import SweepConfig, run_sweep, summarize
    from infoshape.store import location

    config = SweepConfig.from_mapping(sweep_settings(args))
    storage = location.parse_storage_options(getattr(args, "storage_options", []))
    if args.summary_only:
        summary = summarize(config.out, storage)
        print(summary.to_markdown(), end="")
        return 0
    quiet = getattr(args, "verbosity", 0) <= QUIET
    result = run_sweep(
        config,
        progress=args.progress and not quiet,
        log=_log_line,
        storage_options=storage,
        scheduler=args.scheduler,
    )
    if quiet:  # the one result line
        print(
            f"sweep {result.out}: {len(result.ran)} cells trained, {len(result.skipped)} "
            f"already complete, {len(result.failed)} failed"
        )
        return 1 if result.failed else 0
    print(
        f"sweep {result.out}: {len(result.ran)} cells trained, {len(result.skipped)} already "
        f"complete, {len(result.failed)} failed"
    )
    print(result.summary.to_markdown(), end="")
    md, csv_ = (location.join(result.out, n) for n in ("summary.md", "summary.csv"))
    print(f"summary: {md}, {csv_}")
    return 1 if result.failed else 0
