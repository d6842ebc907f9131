"""Store throughput: infoshape's background writer beside raw numpy.save and raw zarr append.

All three write the same float32 batches (default 256 x 4096, 4 MiB each) to
the same disk in one run, so their ratio is meaningful on a noisy machine.

* ``numpy.save``: one .npy file per batch (no compression).
* ``zarr append``: ``zarr.Array.append`` of each batch to a (step, 256, 4096) array,
  one batch per chunk, zarr's default codec.
* ``infoshape writer``: ``RunStore.write_stream`` per batch (the path stream-mode taps
  use), timed until ``close()`` returns (everything written and consolidated);
  ``submit`` is the time the training thread spent handing batches over.

Usage: python benchmarks/store_throughput.py [--batches 48] [--rows 256] [--width 4096]
       [--repeats 3] [--out benchmarks/results/store_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from infoshape.store import RunStore


def bench_numpy(batches: list[np.ndarray], folder: Path) -> dict[str, float]:
    start = time.perf_counter()
    for i, batch in enumerate(batches):
        np.save(folder / f"batch{i:05d}.npy", batch)
    return {"seconds": time.perf_counter() - start}


def bench_zarr(batches: list[np.ndarray], folder: Path) -> dict[str, float]:
    start = time.perf_counter()
    rows, width = batches[0].shape
    array = zarr.create_array(
        str(folder / "raw.zarr"), shape=(0, rows, width), chunks=(1, rows, width), dtype="f4"
    )
    for batch in batches:
        array.append(batch[None])
    return {"seconds": time.perf_counter() - start}


def bench_writer(batches: list[np.ndarray], folder: Path) -> dict[str, float]:
    tensors = [torch.from_numpy(b) for b in batches]
    labels = torch.zeros(batches[0].shape[0], dtype=torch.int64)
    taps = {"t": ("layer", "post", "float32")}
    start = time.perf_counter()
    store = RunStore(folder / "run.zarr", manifest={}, flush_steps=8)
    submit = 0.0
    for step, tensor in enumerate(tensors):
        t0 = time.perf_counter()
        store.write_stream(step, {"t": tensor}, labels=labels, index=None, taps=taps)
        submit += time.perf_counter() - t0
    store.close()
    return {"seconds": time.perf_counter() - start, "submit_seconds": submit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=48)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="folder on the disk to test")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/store_throughput.json")
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    # activations-like data: ReLU of Gaussians (half zeros), so compression has work to do
    batches = [
        np.maximum(rng.standard_normal((args.rows, args.width), dtype=np.float32), 0)
        for _ in range(args.batches)
    ]
    megabytes = sum(b.nbytes for b in batches) / 2**20
    methods = {
        "numpy.save": bench_numpy,
        "zarr append": bench_zarr,
        "infoshape writer": bench_writer,
    }
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):  # interleaved repeats, best of each
        for name, bench in methods.items():
            folder = Path(tempfile.mkdtemp(dir=args.dir))
            try:
                result = bench(batches, folder)
                size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            finally:
                shutil.rmtree(folder)
            result["disk_mb"] = size / 2**20
            if name not in best or result["seconds"] < best[name]["seconds"]:
                best[name] = result
    reference = megabytes / best["numpy.save"]["seconds"]
    rows = []
    print(
        f"{megabytes:.0f} MiB in {args.batches} batches of {args.rows}x{args.width} float32, "
        f"best of {args.repeats}"
    )
    print(f"{'method':<18}{'MB/s':>10}{'vs numpy':>10}{'on disk MiB':>13}{'submit s':>10}")
    for name, result in best.items():
        rate = megabytes / result["seconds"]
        row = {"method": name, "mb_per_s": rate, "ratio_to_numpy_save": rate / reference, **result}
        rows.append(row)
        submit = f"{result['submit_seconds']:.3f}" if "submit_seconds" in result else "-"
        print(
            f"{name:<18}{rate:>10.1f}{rate / reference:>10.2f}{result['disk_mb']:>13.1f}"
            f"{submit:>10}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "store_throughput",
                "megabytes": megabytes,
                "batches": args.batches,
                "batch_shape": [args.rows, args.width],
                "repeats": args.repeats,
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
