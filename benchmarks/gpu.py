"""GPU step time and host syncs: ResNet-18 and a small ViT, each penalty plugin vs the bare step.

One self-contained script for a CUDA machine (under 8 minutes on one H200; ``--budget-s``
skips what would not fit, listing it). For two models,

* ``resnet18``: torchvision ``resnet18(num_classes=10)`` on 3×32×32 inputs, batch 256;
* ``vit``: ``torchvision.models.VisionTransformer(image_size=32, patch_size=4, num_layers=6,
  num_heads=6, hidden_dim=384, mlp_dim=1536, num_classes=10)``, batch 256,

it times the training step (SGD, bf16 autocast of the forward and the loss) as ``bare``
PyTorch, through ``Session`` with no plugin, with each penalty plugin, capturing the tapped
layers, and streaming one layer to a zarr store, first eager, then with ``torch.compile``
(inductor) of the model (the session is created first, then ``session.model`` is compiled:
the penalties themselves run eagerly on the captured tensors).

Plugin options. ResNet-18: the Choi–Rhee family (``cr`` ... ``cw_rr``) on the four stage
outputs ``layer1``..``layer4`` (channels as units); ``shade`` on the pre-activations of the
stages' last blocks (the input of ``layerK.1.relu`` at its second call); ``irnn`` on its
classifier ``fc``; capture taps the four stages, stream taps ``layer3``. ViT: the encoder
blocks' outputs are ``(batch, tokens, width)``; the Choi–Rhee family reads every token ×
feature entry of each block's output as a unit (``conv_units="flatten"``: CR then uses the
``batch × batch`` Gram form, no ``units²`` covariance); ``shade`` regularizes the input of
each block's MLP ``GELU`` (``mlp.1``) with the width as units (``channel_dim=-1``, tokens
as samples); ``irnn`` the classifier ``heads.head`` (the class token); capture taps the six
blocks, stream taps the last. Other plugins run with their defaults; one that cannot start
or step on a model is listed with the reason.

Timing: ``--repeats`` blocks of ``--log-every`` steps after warm-up steps (which include
the compilation), ``torch.cuda.synchronize()`` outside each timed block; the ratio is to
the bare step of the same model and mode. Host syncs: over ``--log-every`` steps after a
flush, each step under ``torch.cuda.set_sync_debug_mode("warn")``, counting the warnings
"called a synchronizing CUDA operation" per step; on the CPU (no CUDA), the calls of
:data:`infoshape.testing.HOST_SYNC_METHODS` on the training thread
(:func:`infoshape.testing.count_host_syncs`) stand for them. The runtime reads the step
metrics back once per ``log_every`` steps: the goal is at most 1 sync per window.

``--dry-run`` runs tiny sizes on the CPU in seconds (ResNet-18 at batch 4, a 1-layer ViT of
width 32, 2 steps per block) to check the code path; the test suite runs it.

Usage: python benchmarks/gpu.py [--out benchmarks/results/gpu.json] [--budget-s 420]
       python benchmarks/gpu.py --dry-run --out /tmp/gpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from steps import seconds_per_step, synchronize, train_step  # benchmarks/steps.py

import infoshape
from infoshape import Tap
from infoshape.testing import count_host_syncs

CHOI_RHEE = ("cr", "cw_cr", "vr", "cw_vr", "l1r", "rr", "cw_rr")
PENALTIES = ("shade", *CHOI_RHEE, "irnn", "l1w", "l2w", "mi_ce", "information_dropout")
GOALS = {"eager": 1.10, "compiled": 1.05}  # each penalty plugin's step / the bare step
SYNC_WARNING = "called a synchronizing CUDA operation"


@dataclass
class Spec:
    """A benchmarked model: builder, input, batch, plugin options and tapped layers."""

    name: str
    build: Callable[[], torch.nn.Module]
    shape: tuple[int, ...]
    batch: int
    capture: tuple[str, ...]
    stream: str
    options: dict[str, dict] = field(default_factory=dict)
    describe: dict = field(default_factory=dict)


def resnet18_spec(dry: bool) -> Spec:
    import torchvision

    stages = tuple(f"layer{k}" for k in range(1, 5))
    return Spec(
        "resnet18",
        lambda: torchvision.models.resnet18(num_classes=10),
        (3, 32, 32),
        4 if dry else 256,
        stages,
        "layer3",
        {name: {"layers": list(stages)} for name in CHOI_RHEE}
        | {"shade": {"layers": [f"{s}.1.relu" for s in stages], "call": 1}},
        {"torchvision": "resnet18(num_classes=10)"},
    )


def vit_spec(dry: bool) -> Spec:
    import torchvision

    size = (
        {"num_layers": 1, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64}
        if dry
        else {"num_layers": 6, "num_heads": 6, "hidden_dim": 384, "mlp_dim": 1536}
    )
    kwargs = {"image_size": 32, "patch_size": 4, "num_classes": 10} | size
    blocks = tuple(f"encoder.layers.encoder_layer_{i}" for i in range(size["num_layers"]))
    return Spec(
        "vit",
        lambda: torchvision.models.VisionTransformer(**kwargs),
        (3, 32, 32),
        4 if dry else 256,
        blocks,
        blocks[-1],
        {name: {"layers": list(blocks), "conv_units": "flatten"} for name in CHOI_RHEE}
        | {"shade": {"layers": [f"{b}.mlp.1" for b in blocks], "channel_dim": -1}},
        {"torchvision": f"VisionTransformer({kwargs})"},
    )


@dataclass
class Config:
    """One configuration of a model: the plugins, taps and store of its session."""

    label: str
    session: bool = True
    plugins: tuple[str, ...] = ()
    taps: tuple[Tap, ...] = ()
    stream: bool = False


def configs(spec: Spec, plugins: list[str]) -> list[Config]:
    out = [Config("bare", session=False), Config("session")]
    out += [Config(f"plugin {p}", plugins=(p,)) for p in plugins]
    out.append(Config("capture", taps=tuple(Tap(layer) for layer in spec.capture)))
    out.append(Config("stream", taps=(Tap(spec.stream, store="stream"),), stream=True))
    return out


class Runner:
    """A model copy on the device, its session, optimizer and (compiled) forward."""

    def __init__(self, spec: Spec, model, config: Config, args, folder: Path) -> None:
        self.session = None
        model = copy.deepcopy(model).to(args.device)
        if config.session:
            options = {p: spec.options[p] for p in config.plugins if p in spec.options}
            mode = "compiled" if args.compiled else "eager"
            store = folder / f"{spec.name}-{mode}-{config.label.replace(' ', '_')}.zarr"
            self.session = infoshape.Session(
                model,
                plugins=list(config.plugins),
                options=options or None,
                taps=list(config.taps),
                store=store if config.stream else None,
                n_train=50000,
                log_every=args.log_every,
            )
            model = self.session.model
        self.model = model
        self.forward = torch.compile(model, backend=args.backend) if args.compiled else model
        self.opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        self.device_type = torch.device(args.device).type

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        train_step(self.forward, self.session, self.opt, x, y, autocast=self.device_type)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


def time_block(runner: Runner, batches, steps: int, device: str) -> float:
    """Seconds per step over ``steps`` steps, the device drained before and after."""
    return seconds_per_step(runner.step, batches, steps, device)


def count_syncs(runner: Runner, batches, steps: int, device: str) -> list[int]:
    """Host syncs in each of ``steps`` steps that start right after a metrics flush."""
    if runner.session is not None:
        runner.session.flush_steps()  # the window holds exactly one flush, at its end
    synchronize(device)
    per_step = []
    cuda = torch.device(device).type == "cuda"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counter = contextlib.nullcontext({}) if cuda else count_host_syncs()
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            with counter as calls:
                for i in range(steps):
                    before = len(caught), sum(calls.values())
                    runner.step(*batches[i % len(batches)])
                    if cuda:
                        found = [w for w in caught[before[0] :] if SYNC_WARNING in str(w.message)]
                        per_step.append(len(found))
                    else:
                        per_step.append(sum(calls.values()) - before[1])
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
    return per_step


def bench_config(spec: Spec, model, config: Config, batches, args, folder: Path) -> dict:
    if args.compiled:
        torch._dynamo.reset()  # each configuration compiles its own model copy
    runner = Runner(spec, model, config, args, folder)
    try:
        start = time.perf_counter()
        time_block(runner, batches, args.warmup, args.device)  # includes the compilation
        warmup_s = time.perf_counter() - start
        times = [
            time_block(runner, batches, args.log_every, args.device) for _ in range(args.repeats)
        ]
        syncs = count_syncs(runner, batches, args.log_every, args.device)
    finally:
        runner.close()
        del runner
        gc.collect()
    return {
        "ms_per_step": 1e3 * statistics.median(times),
        "ms_min": 1e3 * min(times),
        "warmup_s": warmup_s,
        "syncs_per_window": sum(syncs),
        "syncs_by_step": syncs,
    }


FIRST = ("bare", "session", "plugin shade", "plugin cr", "plugin irnn", "capture", "stream")


def jobs(specs: list[Spec], modes: list[str], plugins: list[str]):
    """``(mode, spec, config)`` in the order they run: eager first; under a time budget the
    compiled rows of both models start with ``FIRST``, the other plugins after them."""
    for mode in modes:
        ranks = (0, 1) if mode == "compiled" else (None,)
        for rank in ranks:
            for spec in specs:
                for config in configs(spec, plugins):
                    if rank is None or (config.label in FIRST) == (rank == 0):
                        yield mode, spec, config


def run(args) -> dict:
    specs = [resnet18_spec(args.dry_run), vit_spec(args.dry_run)]
    specs = [s for s in specs if s.name in args.models]
    modes = ["eager", "compiled"] if args.compile else ["eager"]
    started = time.perf_counter()
    rows, skipped = [], {}
    folder = Path(tempfile.mkdtemp(prefix="infoshape-gpu-"))
    models, batches, bare = {}, {}, {}
    for spec in specs:
        torch.manual_seed(0)
        models[spec.name] = spec.build()
        g = torch.Generator().manual_seed(1)
        batches[spec.name] = [
            (
                torch.randn(spec.batch, *spec.shape, generator=g).to(args.device),
                torch.randint(0, 10, (spec.batch,), generator=g).to(args.device),
            )
            for _ in range(4)
        ]
    for mode, spec, config in jobs(specs, modes, args.plugins):
        args.compiled = mode == "compiled"
        key = f"{spec.name} {mode} {config.label}"
        elapsed = time.perf_counter() - started
        if elapsed > args.budget_s:
            skipped[key] = f"time budget: {elapsed:.0f} s > --budget-s {args.budget_s}"
            continue
        try:
            result = bench_config(spec, models[spec.name], config, batches[spec.name], args, folder)
        except Exception as err:  # a plugin that cannot start or step on this model
            skipped[key] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            print(f"[{elapsed:5.0f} s] {key}: skipped, {skipped[key]}", flush=True)
            continue
        if config.label == "bare":
            bare[spec.name, mode] = result["ms_per_step"]
        plugin = config.plugins[0] if config.plugins else None
        goal = GOALS[mode] if plugin in PENALTIES else None
        base = bare.get((spec.name, mode))
        ratio = result["ms_per_step"] / base if base else None
        row = {
            "model": spec.name,
            "mode": mode,
            "config": config.label,
            **result,
            "ratio_to_bare": ratio,
            "goal": goal,
            "meets_goal": None if goal is None or ratio is None else ratio <= goal,
            "sync_goal_met": result["syncs_per_window"] <= 1,
        }
        rows.append(row)
        print(
            f"[{elapsed:5.0f} s] {key}: {row['ms_per_step']:.2f} ms/step, "
            f"ratio {ratio if ratio is None else round(ratio, 3)}, "
            f"{row['syncs_per_window']} syncs / {args.log_every} steps",
            flush=True,
        )
    shutil.rmtree(folder, ignore_errors=True)
    return {"rows": rows, "skipped": skipped, "seconds": time.perf_counter() - started}


def print_table(result: dict, log_every: int) -> None:
    print(
        f"{'model':<9}{'mode':<10}{'config':<29}{'ms/step':>9}{'ratio':>8}{'goal':>9}"
        f"{f'syncs/{log_every}':>11}"
    )
    for r in result["rows"]:
        ratio = "" if r["ratio_to_bare"] is None else f"{r['ratio_to_bare']:.3f}"
        mark = " ok" if r["meets_goal"] else " NO"
        goal = "" if r["goal"] is None else f"{r['goal']:.2f}{mark}"
        print(
            f"{r['model']:<9}{r['mode']:<10}{r['config']:<29}{r['ms_per_step']:>9.2f}"
            f"{ratio:>8}{goal:>9}{r['syncs_per_window']:>11}"
        )
    for key, why in result["skipped"].items():
        print(f"skipped {key}: {why}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, eager")
    parser.add_argument("--models", nargs="+", default=["resnet18", "vit"])
    parser.add_argument("--plugins", nargs="*", default=list(PENALTIES))
    parser.add_argument("--log-every", type=int, default=50, help="Session(log_every=...)")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks of log_every steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (compilation)")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time torch.compile'd models (default: on CUDA; --dry-run: off)",
    )
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip configs past this")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu.json"))
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device, args.compile = "cpu", bool(args.compile)
        args.log_every, args.repeats, args.warmup = 2, 1, 1
        args.budget_s = float("inf")
        torch.set_num_threads(1)  # seconds on a shared CPU; threads only add contention
    elif not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or pass --dry-run")
    else:
        args.device = "cuda"
        args.compile = args.compile is not False
        torch.backends.cudnn.benchmark = True
    result = run(args)
    print_table(result, args.log_every)
    report = {
        "benchmark": "gpu",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "dry_run": args.dry_run,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "autocast": "bfloat16",
        "backend": args.backend if args.compile else None,
        "log_every": args.log_every,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "goals": {"penalty_ratio": GOALS, "syncs_per_log_every_steps": 1},
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out} in {result['seconds']:.0f} s", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
