"""Outgrowing one machine: a sweep and an analysis serial vs on dask workers; S3 vs disk reads.

In one run, on this machine:

* **sweep**: the grid of ``examples/choi_rhee_sweep.toml`` (the same 5x100 ReLU MLP on
  the embedded digits, the same 12 configurations x ``--seeds`` seeds, the file's 20
  epochs unless ``--epochs``) trained serially (``run_sweep``, torch's default threads in
  this process) and on a ``LocalCluster`` of ``--workers`` worker processes
  (``--scheduler local:N``: one thread each, ``torch.set_num_threads(cores // N)``).
  The cluster's wall time is reported with the cluster's start and the workers' first
  imports (torch, infoshape) **included** (``ratio``: what a user waits for) and without
  the start (``ratio_warm``); the summaries of both must be equal.
* **analyze**: ``--runs`` of those stores (a 20-run directory), ``analyze_runs`` serial
  vs every ``(run, epoch, tap)`` slab a task of the same cluster (its workers warm from
  the sweep; the cluster's start is shown apart). The values of both must be identical.
* **S3 read**: one probe slab (the last epoch of a tap, read through
  :func:`infoshape.open_store`) from a moto S3 server on 127.0.0.1 (``ThreadedMotoServer``
  in this process: no network, but HTTP and S3's request overhead) vs from the local disk;
  median of ``--repeats`` reads, each from a freshly opened store.

Prints a table and writes JSON (``--out``). ``--quick`` runs a tiny grid (4 cells, 1
epoch, 8x8 MLP, 4 runs) to check the code path in seconds.

Usage: python benchmarks/scale.py [--epochs 20] [--seeds 2] [--workers 2] [--runs 20]
       [--estimator kl_pairwise] [--quick] [--out benchmarks/results/scale.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import time
import tomllib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import infoshape
from infoshape.apps.analysis import analyze_runs
from infoshape.apps.sweep import SweepConfig, run_sweep

ROOT = Path(__file__).resolve().parents[1]
GRID_FILE = ROOT / "examples" / "choi_rhee_sweep.toml"


def _settings(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    settings = tomllib.loads(GRID_FILE.read_text(encoding="utf-8"))
    settings["epochs"] = args.epochs = args.epochs or settings["epochs"]
    settings["sweep"]["out"] = str(out)
    settings["sweep"]["seeds"] = list(range(args.seeds))
    if args.quick:  # the same shape, tiny: 4 configurations, an 8x8 MLP
        settings["model_options"]["hidden"] = [8, 8]
        settings["taps"], settings["probe_size"] = ["relu2"], 60
        keep = ("dropout", "l1r", "cr")
        configurations = settings["sweep"]["configurations"]
        settings["sweep"]["configurations"] = {k: configurations[k] for k in keep}
    return settings


def _quiet(_: str) -> None:
    pass


def _max_rel_diff(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> float:
    """Largest relative difference of two summaries' per-cell values (NaN == NaN)."""
    worst = 0.0
    for cell, values in a.items():
        for key, x in values.items():
            y = b[cell][key]
            if math.isnan(x) and math.isnan(y):
                continue
            worst = max(worst, abs(x - y) / max(abs(x), abs(y), 1e-12))
    return worst


def bench_sweep(args: argparse.Namespace, work: Path, client: Any) -> dict[str, Any]:
    """The grid serially (at each torch thread count), then on ``client``'s cluster."""
    cluster_config = SweepConfig.from_mapping(_settings(args, work / "cluster"))
    start = time.perf_counter()
    parallel = run_sweep(cluster_config, progress=False, log=_quiet, scheduler=client)
    cluster_s = time.perf_counter() - start
    serial = {}
    default = torch.get_num_threads()
    for threads in dict.fromkeys(args.serial_threads or [default, 1]):
        torch.set_num_threads(threads)
        config = SweepConfig.from_mapping(_settings(args, work / f"serial{threads}"))
        start, cpu = time.perf_counter(), time.process_time()
        result = run_sweep(config, progress=False, log=_quiet)
        seconds = time.perf_counter() - start
        cpu_percent = 100 * (time.process_time() - cpu) / seconds  # every thread of this process
        assert not result.failed and not parallel.failed, (result.failed, parallel.failed)
        serial[threads] = {
            "serial_s": seconds,
            "serial_cpu_percent": cpu_percent,
            "max_rel_diff": _max_rel_diff(result.summary.values, parallel.summary.values),
            "stores": [str(result.out / "cells" / f"{name}.zarr") for name in result.ran],
        }
    torch.set_num_threads(default)
    return {"cells": len(cluster_config.cells()), "epochs": args.epochs, "cluster_s": cluster_s,
            "serial": serial}  # fmt: skip


def bench_analyze(
    args: argparse.Namespace, stores: list[str], work: Path, client: Any
) -> dict[str, Any]:
    """``analyze_runs`` over ``--runs`` copies of the sweep's stores, serial vs the cluster."""
    chosen = (stores * (args.runs // len(stores) + 1))[: args.runs]
    copies = {}
    for kind in ("serial", "cluster"):
        folder = work / f"analyze-{kind}"
        folder.mkdir()
        copies[kind] = [
            shutil.copytree(s, folder / f"run{k:02d}.zarr") for k, s in enumerate(chosen)
        ]
    options = {"estimator": args.estimator, "max_samples": args.max_samples}
    with warnings.catch_warnings():  # the estimator's assumption warnings: not measured here
        warnings.simplefilter("ignore", infoshape.EstimatorAssumptionWarning)
        start = time.perf_counter()
        serial = analyze_runs(copies["serial"], **options)
        serial_s = time.perf_counter() - start
        start = time.perf_counter()
        parallel = analyze_runs(copies["cluster"], scheduler=client, **options)
        parallel_s = time.perf_counter() - start
    identical = all(
        np.array_equal(a[k].values, b[k].values)
        for a, b in zip(serial, parallel, strict=True)
        for k in ("I_XT", "I_TY", "flags")
    )
    slabs = sum(r["I_XT"].size for r in serial)
    return {
        "runs": args.runs,
        "slabs": slabs,
        "estimator": args.estimator,
        "max_samples": args.max_samples,
        "serial_s": serial_s,
        "cluster_s": parallel_s,
        "identical_values": identical,
    }


def bench_s3(args: argparse.Namespace, store: str) -> dict[str, Any]:
    """One probe slab read from a moto S3 endpoint vs from the disk (median of repeats)."""
    try:
        import s3fs
        from moto.server import ThreadedMotoServer
    except ImportError as err:
        return {"skipped": f"needs s3fs and moto[server]: {err}"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        options = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
        }
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("bench")
        fs.put(store, "bench/run.zarr", recursive=True)
        url = "s3://bench/run.zarr"
        probe = infoshape.open_store(store)["probe"].to_dataset()
        tap = next(str(n) for n in probe.data_vars if "epoch" in probe[n].dims and n != "input")
        shape = probe[tap].isel(epoch=-1).shape

        def read(path: str, storage_options: Any) -> float:
            start = time.perf_counter()
            tree = infoshape.open_store(path, storage_options=storage_options)
            np.asarray(tree["probe"][tap].isel(epoch=-1).values)
            return time.perf_counter() - start

        local, remote = [], []
        for _ in range(args.repeats):  # interleaved
            local.append(read(store, None))
            remote.append(read(url, options))
    finally:
        server.stop()
    return {
        "tap": tap,
        "slab_shape": list(shape),
        "local_ms": 1000 * statistics.median(local),
        "s3_ms": 1000 * statistics.median(remote),
        "ratio": statistics.median(remote) / statistics.median(local),
        "repeats": args.repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, help="epochs of every cell (default: the file's 20)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds of every configuration")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    parser.add_argument(
        "--serial-threads",
        type=int,
        nargs="+",
        help="torch threads of the serial sweep, one run each (default: torch's default, 1)",
    )
    parser.add_argument("--runs", type=int, default=20, help="stores that analyze reads")
    parser.add_argument("--estimator", default="kl_pairwise")
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=7, help="reads of the S3 slab")
    parser.add_argument("--quick", action="store_true", help="a tiny grid: the code path only")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/scale.json")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.seeds, args.runs, args.repeats = 1, 1, 4, 2
    from infoshape.apps.scheduler import connect

    report: dict[str, Any] = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads_serial": torch.get_num_threads(),
        "workers": args.workers,
        "quick": args.quick,
        "grid": str(GRID_FILE.relative_to(ROOT)),
    }
    with tempfile.TemporaryDirectory(prefix="infoshape-scale-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        with connect(f"local:{args.workers}") as client:  # the cluster, started once
            report["cluster_start_s"] = time.perf_counter() - start
            threads = client.run(torch.get_num_threads)
            report["torch_threads_per_worker"] = sorted(set(threads.values()))
            sweep = bench_sweep(args, work, client)
            stores = next(iter(sweep["serial"].values()))["stores"]
            analysis = bench_analyze(args, stores, work, client)
        report["s3"] = bench_s3(args, stores[0])
    start_s = report["cluster_start_s"]
    for row in sweep["serial"].values():
        row.pop("stores")
        row["ratio"] = (sweep["cluster_s"] + start_s) / row["serial_s"]
        row["ratio_warm"] = sweep["cluster_s"] / row["serial_s"]
    analysis["ratio"] = analysis["cluster_s"] / analysis["serial_s"]
    analysis["ratio_with_start"] = (analysis["cluster_s"] + start_s) / analysis["serial_s"]
    report["sweep"], report["analyze"] = sweep, analysis
    n, worker_threads = args.workers, report["torch_threads_per_worker"]
    print(f"{os.cpu_count()} CPUs; {n} workers x {worker_threads} torch threads; cluster start "
          f"{start_s:.1f} s, counted in 'local:{n} s' of the sweep")  # fmt: skip
    print(
        f"{'what':<44}{'serial s':>10}{f'local:{n} s':>12}{'ratio':>7}{'warm':>7}{'diff':>9}"
        f"{'serial cpu':>12}"
    )
    label = f"sweep: {sweep['cells']} cells x {args.epochs} epochs"
    for threads, row in sweep["serial"].items():
        print(
            f"{label + f', serial {threads} thread(s)':<44}{row['serial_s']:>10.1f}"
            f"{sweep['cluster_s'] + start_s:>12.1f}{row['ratio']:>7.2f}{row['ratio_warm']:>7.2f}"
            f"{row['max_rel_diff']:>9.1g}{row['serial_cpu_percent']:>11.0f}%"
        )
    label = f"analyze: {analysis['runs']} runs, {analysis['slabs']} slabs"
    print(
        f"{label:<44}{analysis['serial_s']:>10.1f}{analysis['cluster_s']:>12.1f}"
        f"{analysis['ratio']:>7.2f}{'':>7}{0.0 if analysis['identical_values'] else 1:>9.1g}"
    )
    print("ratio: local:N / serial, the cluster's start included; warm: without it; diff: the "
          "largest relative difference of the summaries (analysis: 0 = identical); serial cpu: "
          "the serial sweep's CPU time over its wall time (> 100 %: it already uses more "
          "than one core)")  # fmt: skip
    s3 = report["s3"]
    if "skipped" in s3:
        print(f"S3 read: skipped ({s3['skipped']})")
    else:
        print(
            f"probe slab {s3['tap']} {tuple(s3['slab_shape'])}: disk {s3['local_ms']:.1f} ms, "
            f"S3 (moto, 127.0.0.1) {s3['s3_ms']:.1f} ms, ratio {s3['ratio']:.1f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    same_threads = sweep["serial"].get(worker_threads[0])
    if not analysis["identical_values"] or (same_threads and same_threads["max_rel_diff"] != 0):
        sys.exit("the cluster's results differ from the serial ones at the same torch threads")


if __name__ == "__main__":
    main()
