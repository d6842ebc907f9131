"""Host synchronizations per training step: calls that make the host wait for the device.

On a GPU each of ``.item()``, ``float(t)``, ``int(t)``, ``bool(t)``, ``.tolist()``, ``.cpu()``
and ``.numpy()`` on a step's tensors stalls the queue until the device catches up. This
script counts those calls on the CPU (where they are cheap but the same calls happen) by
wrapping the tensor methods, during ``--steps`` steady-state steps (after ``--warmup``) of a
session with capture (a stored and a streamed tap) and each penalty plugin, then all of
``shade``, ``cr`` and ``irnn`` together. Only calls made by the training thread count: the
store's writer thread reads host copies, which never waits for the device.

Usage: python benchmarks/syncs.py [--steps 100] [--log-every 50]
       [--out benchmarks/results/syncs.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from collections import Counter
from pathlib import Path

import torch

import infoshape
from infoshape import Tap
from infoshape.testing import count_host_syncs


class Net(torch.nn.Sequential):
    def __init__(self) -> None:
        super().__init__()
        self.add_module("fc1", torch.nn.Linear(64, 128))
        self.add_module("relu1", torch.nn.ReLU())
        self.add_module("fc2", torch.nn.Linear(128, 64))
        self.add_module("relu2", torch.nn.ReLU())
        self.add_module("fc3", torch.nn.Linear(64, 10))


def run(
    plugins: list[str], steps: int, warmup: int, log_every: int, store: Path
) -> tuple[int, Counter, list[float]]:
    """Syncs counted in ``steps`` steps after ``warmup``; the losses the loop saw."""
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g))
        for _ in range(8)
    ]
    taps = [Tap("relu1", store="stream"), Tap("relu2", store=True)]
    losses: list[torch.Tensor] = []
    with infoshape.Session(
        model, plugins=plugins, store=store, n_train=256, taps=taps, overwrite=True
    ) as s:
        counts: Counter = Counter()
        for step in range(warmup + steps):
            x, y = data[step % len(data)]
            ctx = count_host_syncs() if step >= warmup else contextlib.nullcontext(Counter())
            with ctx as c:
                loss = s.loss(s.model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad()
                s.step_end()
            counts.update(c)
            losses.append(loss.detach())
        s.epoch_end()
    return sum(counts.values()), counts, [float(v) for v in losses]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument(
        "--plugins",
        nargs="*",
        default=["shade", "cr", "cw_cr", "vr", "cw_vr", "l1r", "rr", "cw_rr", "irnn", "l1w", "l2w"],
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/syncs.json"))
    args = parser.parse_args(argv)
    rows = {}
    configs = (
        {"capture": []}
        | {p: [p] for p in args.plugins}
        | {"shade+cr+irnn": ["shade", "cr", "irnn"]}
    )
    with tempfile.TemporaryDirectory() as tmp:
        for label, plugins in configs.items():
            total, counts, _ = run(
                plugins, args.steps, args.warmup, args.log_every, Path(tmp) / f"{label}.zarr"
            )
            rows[label] = {"syncs": total, "by_method": dict(counts)}
            print(f"{label:16s} {total:6d}  {dict(counts)}")
    result = {"steps": args.steps, "log_every": args.log_every, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
