"""Peak memory of a streaming run 1x and 10x as long: memory must stay flat.

Each run is a fresh subprocess training the zoo ``mlp`` (784-512-512-10) on seeded
MNIST-shaped batches of 128 for ``--steps`` (1x) or ``10 * --steps`` (10x) steps through a
``Session`` with a store and everything that buffers: ``relu1`` streamed every step
(128 x 512 float32, 256 KiB a step), ``relu2`` kept as a reservoir of 256 samples per epoch
projected to 64 dims, the probe set's ``relu1`` and ``relu2`` stored at each epoch end
(an epoch is 100 steps), and the step metrics. The child reports its peak resident set
size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and its RSS every 100 steps
(``/proc/self/status``). Runs are repeated, 1x and 10x alternating; the ratio is the
median of the 10x peaks over the median of the 1x peaks.

Usage: python benchmarks/memory.py [--steps 200] [--repeats 2] [--threads 1]
       [--out benchmarks/results/memory.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EPOCH = 100


def rss_mb() -> float:
    """The current resident set size in MiB (Linux), or NaN elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def child(steps: int, store: Path, threads: int) -> None:
    import torch
    import torch.nn.functional as F  # noqa: F401  (imported before measuring, as training would)

    import infoshape
    from infoshape import Stream, Tap
    from infoshape.apps.models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model("mlp", (1, 28, 28), 10, hidden=(512, 512))
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g))
        for _ in range(8)
    ]
    probe = (torch.randn(512, 1, 28, 28, generator=g), torch.randint(0, 10, (512,), generator=g))
    taps = [
        Tap("relu1", store="both"),
        Tap("relu2", store=("probe", Stream(samples=256, project=64))),
    ]
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    samples = []
    start = time.perf_counter()
    with infoshape.Session(model, store=store, taps=taps, n_train=60000) as s:
        for step in range(steps):
            x, y = batches[step % len(batches)]
            loss = s.loss(s.model(x), y, index=torch.arange(128) + 128 * (step % 8))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            s.step_end()
            if (step + 1) % EPOCH == 0:
                s.epoch_end(probe=probe)
                samples.append((step + 1, rss_mb()))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"steps": steps, "peak_rss_mb": peak, "rss_mb": samples, "seconds": seconds}))


def run_child(steps: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="infoshape-memory-") as folder:
        command = [sys.executable, __file__, "--child", str(steps), "--threads", str(threads)]
        out = subprocess.run(
            [*command, "--store", f"{folder}/run.zarr"],
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="steps of the 1x run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/memory.json"))
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.store, args.threads)
        return
    runs: dict[str, list[dict]] = {"1x": [], "10x": []}
    for _ in range(args.repeats):
        runs["1x"].append(run_child(args.steps, args.threads))
        runs["10x"].append(run_child(10 * args.steps, args.threads))
    peak = {k: statistics.median(r["peak_rss_mb"] for r in v) for k, v in runs.items()}
    ratio = peak["10x"] / peak["1x"]
    print(f"streaming run, mlp 784-512-512-10, batch 128, {args.repeats} repeats, peak RSS (MiB)")
    print(f"{'run':<5}{'steps':>7}{'peak MiB':>10}{'all peaks':>22}{'seconds':>9}")
    for k, v in runs.items():
        peaks = ", ".join(f"{r['peak_rss_mb']:.0f}" for r in v)
        seconds = statistics.median(r["seconds"] for r in v)
        print(f"{k:<5}{v[0]['steps']:>7}{peak[k]:>10.0f}{peaks:>22}{seconds:>9.1f}")
    trace = runs["10x"][0]["rss_mb"]
    print("RSS of the first 10x run every 100 steps:", ", ".join(f"{m:.0f}" for _, m in trace))
    print(f"10x / 1x peak RSS = {ratio:.3f} (goal <= 1.10: {'ok' if ratio <= 1.10 else 'NO'})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "memory",
                "steps_1x": args.steps,
                "repeats": args.repeats,
                "peak_rss_mb": peak,
                "ratio_10x_to_1x": ratio,
                "goal": 1.10,
                "runs": runs,
                "machine": {"platform": platform.platform(), "python": platform.python_version()},
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
