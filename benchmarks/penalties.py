"""Penalty math alone: forward + backward of each penalty on one layer, eager vs compiled.

``overhead.py`` times whole training steps; this script isolates the penalty's own cost
(the tensors a step hands it, forward and backward, nothing else) to show how far each is
from the step it rides on, and what ``torch.compile`` would buy. For each model of
``overhead.py`` (batch 128, 1 torch thread) and each penalty it times:

* ``library``: the infoshape function as the plugin calls it (``shade_penalty``, the
  Choi–Rhee functions, ``irnn.logit_penalty``), then ``backward()``;
* ``compiled``: ``torch.compile`` (inductor, ``dynamic=False``, compiled once before
  timing) of the same math written with plain autograd ops (``PLAIN``; checked against
  the library value first), then ``backward()``: what fusing the passes into generated
  kernels gives on this machine;
* ``one pass``: ``z.sum().backward()`` on the same tensor, the floor of any penalty (one
  read and one gradient write).

``of step`` divides each time by the bare training step of that model (``overhead.py``'s
``bare``, timed here too): a penalty meets a 1.10× step goal only if this is under 0.10
with everything else (session, capture) free. Inputs are seeded: the pre-activations and
ReLU outputs of the models' layers on random data; SHADE's moving averages are those of
the batch.

Usage: python benchmarks/penalties.py [--models mlp cnn] [--no-compile] [--repeats 7]
       [--out benchmarks/results/penalties.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from infoshape.apps.models import build_model
from infoshape.plugins import irnn
from infoshape.plugins.choi_rhee import functional as choi_rhee
from infoshape.plugins.shade import p_active, shade_penalty

MODELS = {  # (zoo options, SHADE's layers, the Choi–Rhee layer, conv maps): the defaults
    "mlp": ({"hidden": (512, 512)}, ("fc1", "fc2"), "relu2", False),
    "cnn": ({"channels": (32, 64)}, ("conv1", "conv2"), "pool2", True),
}
N_CLASSES = 10


def _shade_plain(y: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Eq. 11 with autograd's own graph: ``Σ_u mean Σ_z p(z|y)(y − μ^z)²``."""
    shape = [1, -1] + [1] * (y.ndim - 2)
    p = p_active(y)
    mu0, mu1 = mu[0].view(shape), mu[1].view(shape)
    n = y.numel() // y.shape[1]
    return ((1 - p) * (y - mu0).square() + p * (y - mu1).square()).sum() / n


def _rows(z: torch.Tensor) -> torch.Tensor:
    return z.movedim(1, -1).reshape(-1, z.shape[1]) if z.ndim > 2 else z


def _cr_plain(z: torch.Tensor) -> torch.Tensor:
    rows = _rows(z)
    c = rows - rows.mean(0)
    if len(c) < c.shape[1]:  # the N x N Gram form, as the library takes for N < u
        v = c.square().sum(0) / len(c)
        return ((c @ c.T).square().sum() / len(c) ** 2 - v.square().sum()) / 2
    return torch.triu(c.T @ c / len(c), diagonal=1).square().sum()


def _vr_plain(z: torch.Tensor) -> torch.Tensor:
    rows = _rows(z)
    return (rows - rows.mean(0)).square().sum() / len(rows)


def _rr_plain(z: torch.Tensor) -> torch.Tensor:
    rows = _rows(z)
    return rows.square().sum() / (rows.abs().sum(0).max() * rows.abs().sum(1).max())


def _logit_plain(w: torch.Tensor, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (w.norm(dim=1)[y] * f.norm(dim=1)).mean()


def cases(layers: dict[str, torch.Tensor], model, spec, y) -> dict[str, tuple[Callable, ...]]:
    """Penalty name -> (library call, plain formula, its arguments), for one model."""
    _, shade_layers, cr_layer, maps = spec
    out: dict[str, tuple[Callable, ...]] = {}
    for name in shade_layers:
        pre = layers[name]
        values = pre.detach()
        p = p_active(values)
        dims = [0, *range(2, pre.ndim)]
        mu0 = ((1 - p) * values).sum(dims) / (1 - p).sum(dims)  # E[y | Z=0], E[y | Z=1]
        mu1 = (p * values).sum(dims) / p.sum(dims)
        out[f"shade {name}"] = (shade_penalty, _shade_plain, (pre, torch.stack((mu0, mu1))))
    z = layers[cr_layer]
    for name, plain in (("cr", _cr_plain), ("vr", _vr_plain), ("rr", _rr_plain)):
        function = getattr(choi_rhee, name)
        out[f"{name} {cr_layer}"] = (lambda a, f=function: f(a, channels=maps), plain, (z,))
    classifier, linear = irnn.find_classifier(model)
    names = list(layers)
    features = layers[names[names.index(classifier) - 1]]  # the classifier's input
    out["irnn logit"] = (irnn.logit_penalty, _logit_plain, (linear.weight, features, y))
    return out


def activations(model, x) -> dict[str, torch.Tensor]:
    """Every named module's output on ``x``, as fresh leaves that require grad."""
    kept: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(lambda m, a, o, n=name: kept.__setitem__(n, o.detach()))
        for name, module in model.named_modules()
        if name
    ]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return {k: v.clone().requires_grad_() for k, v in kept.items()}


def timed(step: Callable[[], None], seconds: float, repeats: int) -> float:
    """Median over ``repeats`` blocks of about ``seconds`` of one call's time, in seconds."""
    step()
    start = time.perf_counter()
    step()
    once = max(time.perf_counter() - start, 1e-6)
    calls = max(1, round(seconds / once))
    blocks = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            step()
        blocks.append((time.perf_counter() - start) / calls)
    return statistics.median(blocks)


def backward_of(function: Callable, args: tuple) -> Callable[[], None]:
    def step() -> None:
        function(*args).backward()
        for a in args:
            if isinstance(a, torch.Tensor) and a.grad is not None:
                a.grad = None

    return step


def bench_model(name: str, args) -> list[dict]:
    spec = MODELS[name]
    torch.manual_seed(0)
    model = build_model(name, (1, 28, 28), N_CLASSES, **spec[0])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 1, 28, 28, generator=g)
    y = torch.randint(0, N_CLASSES, (args.batch,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def bare() -> None:
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step = timed(bare, args.block_seconds, args.repeats)
    layers = activations(model, x)
    rows = []
    for label, (library, plain, inputs) in cases(layers, model, spec, y).items():
        row = {"model": name, "penalty": label, "shape": list(inputs[0].shape)}
        row["library_s"] = timed(backward_of(library, inputs), args.block_seconds, args.repeats)
        row["one_pass_s"] = timed(
            backward_of(torch.sum, inputs[:1]), args.block_seconds, args.repeats
        )
        if args.compile:
            try:
                compiled = torch.compile(plain, dynamic=False)
                got, want = compiled(*inputs), library(*inputs)
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
                row["compiled_s"] = timed(
                    backward_of(compiled, inputs), args.block_seconds, args.repeats
                )
            except Exception as err:  # no C++ compiler, or inductor cannot take it
                row["compile_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:100]}"
        row["bare_step_s"] = step
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--block-seconds", type=float, default=0.3)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/penalties.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [row for name in args.models for row in bench_model(name, args)]
    print(
        f"batch {args.batch}, 1 thread, median of {args.repeats} blocks; times of forward + "
        "backward in ms, and as a fraction of the bare step"
    )
    print(
        f"{'model':<5} {'penalty':<14}{'library':>9}{'of step':>9}{'compiled':>10}{'of step':>9}"
        f"{'one pass':>10}{'bare step':>11}"
    )
    for r in rows:
        step = r["bare_step_s"]
        compiled = (
            f"{1e3 * r['compiled_s']:>10.3f}{r['compiled_s'] / step:>9.3f}"
            if "compiled_s" in r
            else f"{'-':>10}{'-':>9}"
        )
        print(
            f"{r['model']:<5} {r['penalty']:<14}{1e3 * r['library_s']:>9.3f}"
            f"{r['library_s'] / step:>9.3f}{compiled}{1e3 * r['one_pass_s']:>10.3f}"
            f"{1e3 * step:>11.2f}"
        )
    for r in rows:
        if "compile_error" in r:
            print(f"{r['model']} {r['penalty']}: not compiled ({r['compile_error']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "penalties",
                "batch": args.batch,
                "repeats": args.repeats,
                "machine": {
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(),
                },
                "results": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
