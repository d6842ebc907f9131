"""Store throughput: infoshape's writer beside raw ``numpy.save`` and raw zarr append, per codec.

All write the same float32 batches (default 64 batches of 256 x 4096, 4 MiB each:
ReLU of Gaussians, half zeros, so compressors have something to do) to the same disk
in one process:

* ``numpy.save``: one .npy file per batch (no compression): the reference.
* ``zarr append <codec>``: ``zarr.Array.append`` of each batch to a ``(step, 256, 4096)``
  array chunked one batch per chunk (zarr's defaults otherwise).
* ``infoshape <codec>``: ``RunStore(codec=...).write_stream`` per batch, the path of a
  ``Tap(store="stream")``, timed from the first batch until ``flush()`` returns (every
  batch written and committed); ``submit ms`` is the training thread's time per batch.

``MB/s`` and ``ratio`` time the writes; ``with open/close`` adds creating the store or
array and, for infoshape, ``close()`` (trim and consolidate metadata): a fixed cost of a
few tenths of a second on a busy machine, which a long run pays once.

Codecs: ``none``; ``lz4`` = Blosc-LZ4 level 5 with byte shuffle; ``zstd`` = zstd level 0
(zarr's default). The machine is shared, so every repeat runs every method once, in a
rotated order, each after an untimed ``os.sync()`` (so none pays for the previous one's
dirty pages; times are to the page cache, as a training run sees them) and an untimed
warm-up run of the same method (``--warmup``): on this VM the first few hundred MiB
written after another method ran go to the page cache 2-5x slower, for ``numpy.save``
and the writer alike, and a long training run streams in the steady state. The ratio is
the median over repeats of (method MB/s / numpy.save MB/s of that repeat), with its
min-max.

Usage: python benchmarks/store.py [--batches 64] [--rows 256] [--width 4096] [--repeats 5]
       [--warmup 1] [--codecs none lz4 zstd] [--dir FOLDER] [--out benchmarks/results/store.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from infoshape import Tap
from infoshape.store import RunStore
from infoshape.store.layout import CODECS


def bench_numpy(batches: list[np.ndarray], folder: Path, codec: str) -> dict[str, float]:
    start = time.perf_counter()
    for i, batch in enumerate(batches):
        np.save(folder / f"batch{i:05d}.npy", batch)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "seconds_total": seconds}


def bench_zarr(batches: list[np.ndarray], folder: Path, codec: str) -> dict[str, float]:
    start = time.perf_counter()
    rows, width = batches[0].shape
    array = zarr.create_array(
        str(folder / "raw.zarr"),
        shape=(0, rows, width),
        chunks=(1, rows, width),
        dtype="f4",
        compressors=CODECS[codec],
    )
    first = time.perf_counter()
    for batch in batches:
        array.append(batch[None])
    end = time.perf_counter()
    return {"seconds": end - first, "seconds_total": end - start}


def bench_writer(batches: list[np.ndarray], folder: Path, codec: str) -> dict[str, float]:
    tensors = [torch.from_numpy(b) for b in batches]
    labels = torch.zeros(batches[0].shape[0], dtype=torch.int64)
    taps = {"t": ("layer", "post", Tap("layer", store="stream"))}
    start = time.perf_counter()
    store = RunStore(folder / "run.zarr", manifest={}, codec=codec, queue_size=8)
    first = time.perf_counter()
    submit = 0.0
    for step, tensor in enumerate(tensors):
        t0 = time.perf_counter()
        store.write_stream(step, {"t": tensor}, labels=labels, index=None, taps=taps)
        submit += time.perf_counter() - t0
    store.flush()  # every batch written and committed
    written = time.perf_counter()
    store.close()
    return {
        "seconds": written - first,
        "seconds_total": time.perf_counter() - start,
        "submit_ms": 1e3 * submit / len(batches),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=64)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--codecs", nargs="+", default=list(CODECS), choices=list(CODECS))
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed runs of a method before each timed one"
    )
    parser.add_argument("--dir", type=Path, default=None, help="folder on the disk to test")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/store.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    batches = [
        np.maximum(rng.standard_normal((args.rows, args.width), dtype=np.float32), 0)
        for _ in range(args.batches)
    ]
    megabytes = sum(b.nbytes for b in batches) / 2**20
    methods = {("numpy.save", "none"): bench_numpy}
    for codec in args.codecs:
        methods[("zarr append", codec)] = bench_zarr
    for codec in args.codecs:
        methods[("infoshape", codec)] = bench_writer
    runs: dict[tuple[str, str], list[dict[str, float]]] = {key: [] for key in methods}
    keys = list(methods)
    for repeat in range(args.repeats):  # interleaved: every method once per repeat
        for key in keys[repeat % len(keys) :] + keys[: repeat % len(keys)]:  # rotated order
            bench = methods[key]
            for _ in range(args.warmup + 1):  # the warm-up runs, then the timed one (kept)
                os.sync()  # untimed: no method pays for the previous one's dirty pages
                folder = Path(tempfile.mkdtemp(dir=args.dir))
                try:
                    result = bench(batches, folder, key[1])
                    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
                finally:
                    shutil.rmtree(folder)
            runs[key].append({**result, "disk_mb": size / 2**20})
    reference = [megabytes / r["seconds"] for r in runs[("numpy.save", "none")]]
    rows = []
    print(
        f"{megabytes:.0f} MiB in {args.batches} batches of {args.rows}x{args.width} float32, "
        f"{args.repeats} interleaved repeats after {args.warmup} warm-up run(s) each; ratio = "
        "median of per-repeat MB/s / numpy.save"
    )
    print(
        f"{'method':<13}{'codec':<7}{'MB/s':>8}{'ratio':>8}{'min-max':>12}{'with open/close':>17}"
        f"{'disk MiB':>10}{'submit ms':>11}"
    )
    for (method, codec), results in runs.items():
        rates = [megabytes / r["seconds"] for r in results]
        ratios = [r / ref for r, ref in zip(rates, reference, strict=True)]
        total = [
            megabytes / r["seconds_total"] / ref for r, ref in zip(results, reference, strict=True)
        ]
        row = {
            "method": method,
            "codec": codec,
            "mb_per_s": statistics.median(rates),
            "ratio_to_numpy_save": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "ratio_with_open_close": statistics.median(total),
            "disk_mb": results[0]["disk_mb"],
        }
        if "submit_ms" in results[0]:
            row["submit_ms_per_batch"] = statistics.median(r["submit_ms"] for r in results)
        rows.append(row)
        submit = f"{row['submit_ms_per_batch']:.2f}" if "submit_ms_per_batch" in row else "-"
        spread = f"{row['ratio_min']:.2f}-{row['ratio_max']:.2f}"
        print(
            f"{method:<13}{codec:<7}{row['mb_per_s']:>8.0f}{row['ratio_to_numpy_save']:>8.2f}"
            f"{spread:>12}{row['ratio_with_open_close']:>17.2f}{row['disk_mb']:>10.1f}{submit:>11}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "store",
                "megabytes": megabytes,
                "batches": args.batches,
                "batch_shape": [args.rows, args.width],
                "repeats": args.repeats,
                "warmup": args.warmup,
                "goal": "infoshape none >= 0.80 x numpy.save",
                "machine": {
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "zarr": zarr.__version__,
                    "torch": torch.__version__,
                },
                "results": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
