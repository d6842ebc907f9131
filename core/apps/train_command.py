"""The ``infoshape train`` command: its flags, merged with a config file, and its run.

The loop itself is :func:`infoshape.apps.trainer.train`; the flags it shares with
``infoshape sweep`` are :func:`infoshape.apps.flags.add_run_flags`.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from infoshape.apps.flags import (
    RUN_FLAG_KEYS,
    add_run_flags,
    add_storage_option,
    settings_from_flags,
)
from infoshape.apps.logs import QUIET, add_verbosity_flags

__all__ = ["EPILOG", "add_parser", "run", "train_settings"]

EPILOG = """\
examples:
  infoshape train                                   # mlp on the embedded digits, 10 epochs
  infoshape train --model cnn --epochs 5 --plugin csv --option csv.path=runs/cnn.csv
  infoshape train --plugin tensorboard --option tensorboard.log_dir=runs/tb
  infoshape train --dataset mnist --data-root ~/data --model cnn --device cuda
  infoshape train --plugin csv --option csv.path="m.csv" --tap 'fc*' --overwrite
  infoshape train --model mlp --model-option hidden=[128,64] --no-probe
  infoshape train --config run.toml --epochs 3      # flags override the file
  infoshape train --resume runs/a.zarr              # continue a killed run
  infoshape train --resume runs/a.zarr --epochs 20  # train a finished run longer
  infoshape train --nproc 2 --store runs/ddp.zarr   # DDP on 2 processes (via torchrun)
  torchrun --nproc-per-node 2 -m infoshape train    # the same, started by torchrun

data parallel: --batch-size is the global batch, split across the ranks (gloo on
the CPU, nccl on CUDA); each rank writes its own store (a.zarr, a.rank1.zarr), which
infoshape.open_store merges. A distributed run writes no checkpoint.

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


def add_parser(commands: Any, formatter: Any) -> None:
    """Add the ``train`` subcommand to the ``infoshape`` parser's ``commands``."""
    p = commands.add_parser(
        "train",
        help="train a zoo model on a registered data set, capturing and storing taps",
        description="Train a zoo model on a registered data set through an infoshape "
        "Session: enabled plugins add penalties and metrics, and the probe set's taps are "
        "stored at each epoch end in a zarr store that xarray opens.",
        epilog=EPILOG,
        formatter_class=formatter,
    )
    add = p.add_argument
    add("--config", metavar="FILE.toml", help="read settings from a TOML file (flags override)")
    add_run_flags(p)
    add("--optimizer", choices=["adam", "sgd"], help="adam (default) or sgd (no momentum)")
    add("--seed", type=int, metavar="N", help="seed of torch, numpy, shuffling, probe (default 0)")
    add("--plugin", action="append", metavar="NAME", dest="plugins",
        help="enable a plugin (repeatable; `infoshape plugins` lists them)")  # fmt: skip
    add("--store", metavar="PATH", help="zarr store to write, a path or an fsspec URL "
        "(s3://bucket/a.zarr) (default runs/<dataset>-<model>.zarr)")  # fmt: skip
    add_storage_option(p)
    add("--no-store", action="store_true", help="write no store")
    add("--overwrite", action="store_const", const=True, help="replace an existing store")
    add(
        "--resume",
        metavar="STORE",
        help="continue the run in STORE from its last complete epoch (its settings are "
        "reused; --epochs N trains it longer; with --overwrite, changed settings start "
        "a new run there instead of being refused)",
    )
    add("--no-probe", action="store_const", const=False, dest="probe",
        help="pass no probe set at epoch ends (so no taps are stored)")  # fmt: skip
    add("--probe-size", type=int, metavar="N", help="at most N test samples probed (default 1000)")
    add(
        "--tap",
        action="append",
        metavar="MODULE",
        dest="taps",
        help="store this module's output for the probe set (name or glob; repeatable; "
        "default: the model's default taps)",
    )
    add("--no-progress", action="store_const", const=False, dest="progress",
        help="no progress bar (there is none when stderr is not a terminal: then one line "
        "per epoch)")  # fmt: skip
    add("--nproc", type=int, metavar="N", help="train with DDP on N processes of this "
        "machine (runs torchrun; --batch-size is the global batch)")  # fmt: skip
    add_verbosity_flags(p)
    p.set_defaults(run=run)


_FLAG_KEYS = (
    *RUN_FLAG_KEYS, "optimizer", "seed", "store", "overwrite", "probe", "probe_size", "taps",
    "plugins", "progress",
)  # fmt: skip


def train_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Merge the config file (if any) and the ``train`` flags into one dict; flags win."""
    settings = settings_from_flags(args, _FLAG_KEYS)
    if args.no_store:
        settings["store"] = None
    return settings


def run(args: argparse.Namespace) -> int:
    """Run ``infoshape train``: train (or resume) the run the flags describe."""
    from infoshape.apps.parallel import launch, launched_by_torchrun
    from infoshape.apps.trainer import TrainConfig, resume_config, train
    from infoshape.store.location import parse_storage_options

    if args.nproc is not None:
        return launch(args.nproc, getattr(args, "argv", ["train"]))
    storage = parse_storage_options(args.storage_options)
    settings = train_settings(args)
    quiet = getattr(args, "verbosity", 0) <= QUIET
    if quiet:
        settings["progress"] = False
    if args.resume:
        config, resume = resume_config(args.resume, settings, storage)
    else:
        config, resume = TrainConfig.from_mapping(settings), False
    result = train(config, resume=resume, storage_options=storage)
    if launched_by_torchrun() and os.environ["RANK"] != "0":  # one report, from rank 0
        return 0
    if quiet:  # the one result line
        store = f", store {result.store}" if result.store is not None else ""
        print(
            f"trained {config.model} on {config.dataset} for {config.epochs} epochs in "
            f"{result.elapsed_s:.1f} s: test accuracy {result.test_accuracy:.4f}{store}"
        )
        return 0
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
