"""Outgrowing one machine: a sweep and an analysis serial vs on dask workers; S3 vs disk reads.

In one run, on this machine:

* **sweep**: the grid of ``examples/choi_rhee_sweep.toml`` (the same 5x100 ReLU MLP on
  the embedded digits, the same 12 configurations x ``--seeds`` seeds; ``--epochs``
  instead of the file's 20) trained serially (``run_sweep``, torch's default threads in
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

Usage: python benchmarks/scale.py [--epochs 2] [--seeds 2] [--workers 2] [--runs 20]
       [--estimator kl_pairwise] [--quick] [--out benchmarks/results/scale.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import time
import tomllib
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
    settings["epochs"] = args.epochs
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


def bench_sweep(args: argparse.Namespace, work: Path, client: Any) -> dict[str, Any]:
    """The grid serially, then on ``client``'s cluster; wall times and equality."""
    serial_config = SweepConfig.from_mapping(_settings(args, work / "serial"))
    cells = len(serial_config.cells())
    start = time.perf_counter()
    serial = run_sweep(serial_config, progress=False, log=_quiet)
    serial_s = time.perf_counter() - start
    cluster_config = SweepConfig.from_mapping(_settings(args, work / "cluster"))
    start = time.perf_counter()
    parallel = run_sweep(cluster_config, progress=False, log=_quiet, scheduler=client)
    parallel_s = time.perf_counter() - start
    assert not serial.failed and not parallel.failed, (serial.failed, parallel.failed)
    return {
        "cells": cells,
        "epochs": args.epochs,
        "serial_s": serial_s,
        "cluster_s": parallel_s,
        "identical_summaries": serial.summary.rows == parallel.summary.rows,
        "stores": [str(work / "serial" / "cells" / f"{name}.zarr") for name in serial.ran],
    }


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
    parser.add_argument("--epochs", type=int, default=2, help="epochs of every cell")
    parser.add_argument("--seeds", type=int, default=2, help="seeds of every configuration")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
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
            analysis = bench_analyze(args, sweep.pop("stores"), work, client)
            stores = sorted(str(p) for p in (work / "serial" / "cells").glob("*.zarr"))
        report["s3"] = bench_s3(args, stores[0])
    sweep["ratio"] = (sweep["cluster_s"] + report["cluster_start_s"]) / sweep["serial_s"]
    sweep["ratio_warm"] = sweep["cluster_s"] / sweep["serial_s"]
    analysis["ratio"] = analysis["cluster_s"] / analysis["serial_s"]
    analysis["ratio_with_start"] = (analysis["cluster_s"] + report["cluster_start_s"]) / analysis[
        "serial_s"
    ]
    report["sweep"], report["analyze"] = sweep, analysis
    n = args.workers
    print(f"{os.cpu_count()} CPUs; serial torch threads {torch.get_num_threads()}; "
          f"{n} workers x {report['torch_threads_per_worker']} threads; cluster start "
          f"{report['cluster_start_s']:.1f} s (counted in the sweep's ratio)")  # fmt: skip
    print(f"{'what':<34}{'serial s':>10}{f'local:{n} s':>12}{'ratio':>8}{'same':>6}")
    print(
        f"{'sweep: ' + str(sweep['cells']) + ' cells x ' + str(args.epochs) + ' epochs':<34}"
        f"{sweep['serial_s']:>10.1f}{sweep['cluster_s'] + report['cluster_start_s']:>12.1f}"
        f"{sweep['ratio']:>8.2f}{sweep['identical_summaries']!s:>6}"
    )
    print(
        f"{'  without the cluster start':<34}{sweep['serial_s']:>10.1f}{sweep['cluster_s']:>12.1f}"
        f"{sweep['ratio_warm']:>8.2f}"
    )
    label = f"analyze: {analysis['runs']} runs, {analysis['slabs']} slabs"
    print(
        f"{label:<34}{analysis['serial_s']:>10.1f}{analysis['cluster_s']:>12.1f}"
        f"{analysis['ratio']:>8.2f}{analysis['identical_values']!s:>6}"
    )
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
    if not (sweep["identical_summaries"] and analysis["identical_values"]):
        sys.exit("the cluster's results differ from the serial ones")


if __name__ == "__main__":
    main()
