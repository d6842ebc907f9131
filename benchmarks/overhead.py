"""Training-step overhead: each penalty plugin, capture and stream-to-store vs the bare step.

For each model (the zoo's ``mlp`` 784-512-512-10 and ``cnn`` with 32/64 channels, on
MNIST-shaped inputs; ``resnet18``, torchvision's ResNet-18 with 10 classes on 3×32×32
inputs; batch 128, SGD) it times, in one process and interleaved:

* ``bare``: ``loss = cross_entropy(model(x), y); loss.backward(); opt.step(); opt.zero_grad()``;
* ``session``: the same through ``Session`` with no plugin (the runtime alone);
* ``plugin <name>``: ``Session(plugins=[name])`` with the plugin's default options (on
  ``resnet18``: the Choi–Rhee family on the four stage outputs ``layer1``..``layer4``, their
  channels as units; ``shade`` on the pre-activations of the four stages' last blocks, the
  input of ``layerK.1.relu`` at its second call; ``irnn`` as by default, its classifier
  ``fc``), for every penalty plugin found through the ``infoshape.plugins`` entry points (a
  name that is not installed, or fails to start, is listed as missing with the reason);
* ``hook copy``: a plain ``register_forward_hook`` on one layer that only copies its output
  (``output.detach().clone()``), the cheapest thing a user could write by hand;
* ``capture``: ``Session(taps=[Tap(layer)])`` (held for penalties, not stored; on
  ``resnet18`` the four stage outputs);
* ``stream``: ``Session(taps=[Tap(layer, store="stream")], store=...)``: every batch of the
  layer (``resnet18``: the stage ``layer3``) to the zarr store (background writer), and two
  budgeted variants.

The machine is shared, so every repeat times a block of ``--steps`` steps of every
configuration one after the other (fewer steps, at least one, for a configuration many
times slower than bare), and the reported ratio is the median over repeats of
(configuration / bare of the same repeat); ``min``-``max`` of those ratios shows the noise,
and ``fastest`` is the ratio of each configuration's fastest block to bare's fastest (the
least disturbed measurement).
A plugin that fails to start or to step (or exceeds ``--max-memory-gb``) is listed with
the reason.
Data are seeded random tensors: step time does not depend on the pixel values.

Usage: python benchmarks/overhead.py [--models mlp cnn resnet18] [--steps 20] [--repeats 7]
       [--plugins shade cr ...] [--threads 1] [--quick] [--out benchmarks/results/overhead.json]
       python benchmarks/overhead.py --model resnet18 --threads 2  # the README's ResNet table
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from steps import seconds_per_step, train_step  # benchmarks/steps.py

import infoshape
from infoshape import Stream, Tap
from infoshape.apps.models import build_model

PENALTIES = [
    "shade",
    "cr",
    "cw_cr",
    "vr",
    "cw_vr",
    "l1r",
    "rr",
    "cw_rr",
    "l1w",
    "l2w",
    "irnn",
    "mi_ce",
    "information_dropout",
]
CHOI_RHEE = ("cr", "cw_cr", "vr", "cw_vr", "l1r", "rr", "cw_rr")
GOALS = {name: 1.10 for name in ("shade", *CHOI_RHEE)}
GOALS |= {"irnn": 1.10, "stream": 1.15, "mi_ce epoch 1": 1.5}
STAGES = tuple(f"layer{k}" for k in range(1, 5))


@dataclass(frozen=True)
class ModelSpec:
    """A benchmarked model: how to build it, its input, the layers it taps and its goals."""

    build: Callable[[], torch.nn.Module]
    shape: tuple[int, ...]
    layer: str  # the one layer of ``hook copy`` and ``stream``
    capture: tuple[str, ...]  # the layers of ``capture``
    describe: dict
    options: dict[str, dict] = field(default_factory=dict)  # plugin -> options
    goals: dict[str, float] = field(default_factory=lambda: GOALS)


def _zoo(name: str, options: dict, layer: str) -> ModelSpec:
    shape = (1, 28, 28)
    return ModelSpec(
        lambda: build_model(name, shape, 10, **options), shape, layer, (layer,), options | {}
    )


def _resnet18() -> torch.nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=10)


MODELS = {
    "mlp": _zoo("mlp", {"hidden": (512, 512)}, "relu2"),
    "cnn": _zoo("cnn", {"channels": (32, 64)}, "pool2"),
    "resnet18": ModelSpec(
        _resnet18,
        (3, 32, 32),
        "layer3",
        STAGES,
        {"torchvision": "resnet18(num_classes=10)", "taps": list(STAGES)},
        options={name: {"layers": list(STAGES)} for name in CHOI_RHEE}
        | {"shade": {"layers": [f"{stage}.1.relu" for stage in STAGES], "call": 1}},
        goals={name: 1.05 for name in CHOI_RHEE} | {"irnn": 1.05, "shade": 1.15, "stream": 1.05},
    ),
}

Step = Callable[[torch.Tensor, torch.Tensor], None]


class Runner:
    """One configuration: a model copy, its optimizer, its step and its cleanup."""

    def __init__(self, model, session=None, hook=None) -> None:
        self.model = session.model if session is not None else model
        self.session = session
        self.hook = hook
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        train_step(self.model, self.session, self.opt, x, y)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
        if self.hook is not None:
            self.hook.remove()


def _copying_hook(model, layer):
    kept: list[torch.Tensor] = []

    def hook(module, args, output):
        kept.clear()  # keep one batch, like a capture between steps
        kept.append(output.detach().clone())

    return dict(model.named_modules())[layer].register_forward_hook(hook)


def make_runners(name: str, model, spec: ModelSpec, plugins: list[str], folder: Path):
    """Every configuration for one model; a plugin that cannot start maps to its reason."""
    runners: dict[str, Runner] = {}
    missing: dict[str, str] = {}
    layer = spec.layer

    def fresh():
        return copy.deepcopy(model)

    def session(plugin: str) -> infoshape.Session:
        options = {plugin: spec.options[plugin]} if plugin in spec.options else None
        return infoshape.Session(fresh(), plugins=[plugin], options=options, n_train=60000)

    runners["bare"] = Runner(fresh())
    runners["session"] = Runner(None, infoshape.Session(fresh(), n_train=60000))
    for plugin in plugins:
        try:
            runners[f"plugin {plugin}"] = Runner(None, session(plugin))
        except Exception as err:  # not installed yet, or needs options this model lacks
            missing[plugin] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
            continue
        if plugin == "mi_ce":  # f(0) = 1 is plain CE: from epoch 1 on, the MI term is on
            later = session(plugin)
            later.epoch_end()
            runners["plugin mi_ce epoch 1"] = Runner(None, later)
    m = fresh()
    runners["hook copy"] = Runner(m, hook=_copying_hook(m, layer))
    taps = [Tap(t) for t in spec.capture]
    runners["capture"] = Runner(None, infoshape.Session(fresh(), taps=taps))
    streams = {
        "stream": Tap(layer, store="stream"),
        "stream every=10": Tap(layer, store=Stream(every=10)),
        "stream project=64 float16": Tap(layer, store=Stream(project=64, dtype="float16")),
    }
    for label, tap in streams.items():
        path = folder / f"{name}-{label.replace(' ', '_')}.zarr"
        runners[label] = Runner(None, infoshape.Session(fresh(), taps=[tap], store=path))
    return runners, missing


def time_block(runner: Runner, batches, steps: int) -> float:
    return seconds_per_step(runner.step, batches, steps)


def bench_model(name: str, args, folder: Path) -> tuple[list[dict], dict[str, str]]:
    spec = MODELS[name]
    shape = spec.shape
    torch.manual_seed(0)
    model = spec.build()
    g = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randn(args.batch, *shape, generator=g),
            torch.randint(0, 10, (args.batch,), generator=g),
        )
        for _ in range(4)
    ]
    runners, missing = make_runners(name, model, spec, args.plugins, folder)
    failed: dict[str, str] = {}
    times: dict[str, list[float]] = {k: [] for k in runners}
    warm: dict[str, float] = {}
    for label, runner in list(runners.items()):  # warm-up, and drop what fails to step
        try:
            time_block(runner, batches, 1)
            warm[label] = time_block(runner, batches, 2)
            print(f"{name} {label}: {1e3 * warm[label]:.0f} ms/step", file=sys.stderr, flush=True)
        except Exception as err:  # a plugin's bug, or out of memory (see --max-memory-gb)
            failed[label] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
            runner.close()
            del runners[label], times[label]
    # blocks of about --block-seconds of bare steps; a configuration much slower than bare
    # times fewer steps per block (at least 1), so that one slow plugin does not take the run
    base = max(args.steps, round(args.block_seconds / warm["bare"]))
    steps = {k: max(1, min(base, round(base * warm["bare"] / w))) for k, w in warm.items()}
    for _ in range(args.repeats):
        for label, runner in runners.items():
            times[label].append(time_block(runner, batches, steps[label]))
    for runner in runners.values():
        runner.close()
    rows = []
    for label, block in times.items():
        ratios = [t / b for t, b in zip(block, times["bare"], strict=True)]
        of_min = min(block) / min(times["bare"])
        key = label.removeprefix("plugin ") if label.startswith("plugin ") else label
        goal = spec.goals.get(key)
        ratio = statistics.median(ratios)
        rows.append(
            {
                "model": name,
                "config": label,
                "ms_per_step": 1e3 * statistics.median(block),
                "ratio_to_bare": ratio,
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "ratio_of_fastest_blocks": of_min,
                "steps_per_block": steps[label],
                "goal": goal,
                "meets_goal": None if goal is None else ratio <= goal,
            }
        )
    hook = statistics.median(times["hook copy"])
    for row in rows:
        if row["config"] in ("capture", "stream"):
            row["ratio_to_hook_copy"] = 1e-3 * row["ms_per_step"] / hook
    return rows, {**missing, **failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", "--model", nargs="+", default=["mlp", "cnn"], choices=list(MODELS)
    )
    parser.add_argument("--plugins", nargs="*", default=PENALTIES)
    parser.add_argument("--steps", type=int, default=10, help="least steps per timed block")
    parser.add_argument(
        "--block-seconds", type=float, default=1.0, help="least seconds of bare steps per block"
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)"
    )
    parser.add_argument("--quick", action="store_true", help="2 repeats of 3 steps (smoke run)")
    parser.add_argument(
        "--max-memory-gb",
        type=float,
        default=8.0,
        help="address-space limit: a plugin allocating more fails (and is listed) instead of "
        "driving the machine out of memory",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/overhead.json"))
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats, args.block_seconds = 3, 2, 0.0
    torch.set_num_threads(args.threads)
    load = os.getloadavg()  # the machine is shared: the JSON records how busy it was
    limit = int(args.max_memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    folder = Path(tempfile.mkdtemp(prefix="infoshape-overhead-"))
    rows, missing = [], {}
    try:
        for name in args.models:
            model_rows, model_missing = bench_model(name, args, folder)
            rows += model_rows
            missing |= {f"{name}: {k}": v for k, v in model_missing.items()}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(
        f"batch {args.batch}, {args.repeats} repeats of blocks >= {args.block_seconds} s, threads "
        f"{torch.get_num_threads()}; ratio = median over repeats of config/bare (min-max)"
    )
    print(
        f"{'model':<8} {'config':<28}{'ms/step':>9}{'ratio':>8}{'min-max':>13}{'fastest':>9}"
        f"{'goal':>10}"
    )
    for r in rows:
        goal = (
            "" if r["goal"] is None else f"{r['goal']:.2f}" + (" ok" if r["meets_goal"] else " NO")
        )
        spread = f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}"
        print(
            f"{r['model']:<8} {r['config']:<28}{r['ms_per_step']:>9.2f}{r['ratio_to_bare']:>8.3f}"
            f"{spread:>13}{r['ratio_of_fastest_blocks']:>9.3f}{goal:>10}"
        )
    for r in rows:
        if "ratio_to_hook_copy" in r:
            print(f"{r['model']}: {r['config']} / hook copy = {r['ratio_to_hook_copy']:.3f}")
    for name, why in missing.items():
        print(f"missing {name}: {why}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "overhead",
                "batch": args.batch,
                "steps": args.steps,
                "repeats": args.repeats,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "models": {
                    k: MODELS[k].describe
                    | {"input": MODELS[k].shape, "layer": MODELS[k].layer}
                    | {"options": MODELS[k].options}
                    for k in args.models
                },
                "machine": {
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(),
                    "cpus": os.cpu_count(),
                    "load_average_1_5_15_min_at_start": load,
                    "load_average_1_5_15_min_at_end": os.getloadavg(),
                },
                "results": rows,
                "missing": missing,
            },
            indent=2,
            default=list,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
