"""Capture under ``torch.compile``, one hook per tapped module, one plugin call per batch.

The compiled runs use ``backend="aot_eager"``: dynamo traces the model with the capture
hooks inlined and AOTAutograd builds the joint forward/backward graph, as with the
default inductor backend, but without generating C++ (inductor needs a compiler and
about a minute per graph on this 2-core CI machine; it was checked by hand to give the
same results (README, "Benchmarks").
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo

import infoshape
from infoshape import Penalty, Tap


class _Energy:
    """A penalty plugin: mean squared activation of fc1 and relu2; counts its calls."""

    name = "energy"

    def __init__(self) -> None:
        self.calls = 0

    @infoshape.hookimpl
    def infoshape_taps(self, session):
        return [Tap("fc1"), Tap("relu2")]

    @infoshape.hookimpl
    def infoshape_penalty(self, session, captures, outputs, targets):
        self.calls += 1
        return [
            Penalty("energy.fc1", captures["fc1"].pow(2).mean(), 0.1),
            Penalty("energy.relu2", captures["relu2"].pow(2).mean(), 0.2),
        ]


def _train(make_mlp, path, compile_backend=None, steps=4):
    model = make_mlp(0)
    plugin = _Energy()
    taps = [Tap("relu1", store="stream")]
    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(steps * 8, 8, generator=g), torch.randint(0, 3, (steps * 8,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses, penalties = [], []
    with infoshape.Session(model, plugins=[plugin], store=path, taps=taps) as s:
        # hooks are registered by the session first, then the model is compiled
        forward = (
            s.model if compile_backend is None else torch.compile(s.model, backend=compile_backend)
        )
        for i in range(steps):
            loss = s.loss(forward(x[i * 8 : i * 8 + 8]), y[i * 8 : i * 8 + 8])
            penalties.append(float(s._pending["penalty.energy.relu2"]))
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(float(loss.detach()))
            s.step_end()
    stream = infoshape.open_store(path)["stream"].to_dataset()["relu1"].values
    return model, plugin, losses, penalties, stream


def test_compiled_model_matches_eager(tmp_path, make_mlp):
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    eager = _train(make_mlp, tmp_path / "eager.zarr")
    compiled = _train(make_mlp, tmp_path / "compiled.zarr", compile_backend="aot_eager")
    assert counters["stats"]["unique_graphs"] >= 1  # it really compiled
    assert not counters["graph_break"], dict(counters["graph_break"])  # hooks break no graph
    np.testing.assert_allclose(compiled[2], eager[2], rtol=1e-5)  # losses, step by step
    np.testing.assert_allclose(compiled[3], eager[3], rtol=1e-5)  # a penalty's values
    np.testing.assert_allclose(compiled[4], eager[4], rtol=1e-5, atol=1e-6)  # stored captures
    for p_compiled, p_eager in zip(compiled[0].parameters(), eager[0].parameters(), strict=True):
        torch.testing.assert_close(p_compiled, p_eager, rtol=1e-5, atol=1e-6)  # same training
    assert compiled[1].calls == eager[1].calls == 4  # the penalty hook: once per batch


def test_one_forward_hook_per_tapped_module_called_once_per_batch(make_mlp):
    model = make_mlp(0)
    plugin = _Energy()
    taps = [Tap("fc1", store="stream"), Tap("fc1", point="pre"), Tap("relu1", store=True)]
    with infoshape.Session(model, plugins=[plugin], taps=taps) as s:
        hooked = {n: len(m._forward_hooks) for n, m in model.named_modules() if m._forward_hooks}
        # three taps of fc1, one hook; the model's own hook ends each forward pass
        assert hooked == {"": 1, "fc1": 1, "relu1": 1, "relu2": 1}
        calls = {"fc1": 0, "relu1": 0}
        for name in calls:
            (hook,) = getattr(model, name)._forward_hooks.values()

            def counting(module, args, output, hook=hook, name=name):
                calls[name] += 1
                return hook(module, args, output)

            handle = next(iter(getattr(model, name)._forward_hooks))
            getattr(model, name)._forward_hooks[handle] = counting
        for _ in range(3):
            s.loss(s.model(torch.randn(5, 8)), torch.zeros(5, dtype=torch.long)).backward()
            s.step_end()
        assert calls == {"fc1": 3, "relu1": 3}
        assert plugin.calls == 3
        assert set(s.captures) == set()  # cleared at step end: graphs are freed
    assert not any(m._forward_hooks for m in model.modules())


def _first_party_step(compiled: bool, plugins=("shade", "cr", "cw_cr", "irnn")):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    for name, layer in [
        ("fc1", torch.nn.Linear(8, 32)),
        ("relu1", torch.nn.ReLU(inplace=True)),  # SHADE taps its input: a copying pre-hook
        ("fc2", torch.nn.Linear(32, 32)),
        ("relu2", torch.nn.ReLU()),
        ("out", torch.nn.Linear(32, 3)),
    ]:
        model.add_module(name, layer)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
    taps = [Tap("relu2", store=False)]
    with infoshape.Session(model, plugins=list(plugins), taps=taps, n_train=64) as s:
        forward = (
            torch.compile(s.model, backend="aot_eager", fullgraph=True) if compiled else s.model
        )
        loss = s.loss(forward(x), y)
        loss.backward()
        values = {k: v.item() for k, v in s._pending.items() if k.startswith(("loss", "penalty"))}
        s.step_end()
    return values, [p.grad.clone() for p in model.parameters()]


def test_first_party_penalties_with_a_fullgraph_compiled_model_match_eager():
    """fullgraph=True: capture hooks (pre-hooks copying in-place inputs included) never break."""
    eager_values, eager_grads = _first_party_step(compiled=False)
    compiled_values, compiled_grads = _first_party_step(compiled=True)
    assert compiled_values == pytest.approx(eager_values, rel=1e-5)
    for a, b in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["cr", "cw_cr", "vr", "cw_vr", "l1r", "rr", "cw_rr"])
def test_penalty_math_compiles_to_one_graph(name):
    from infoshape.plugins.choi_rhee import functional

    torch._dynamo.reset()
    function = getattr(functional, name)
    g = torch.Generator().manual_seed(4)
    z, y = torch.randn(48, 16, generator=g), torch.randint(0, 4, (48,), generator=g)
    args = (z, y, 4) if name.startswith("cw_") else (z,)
    explained = torch._dynamo.explain(function)(*args)
    assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
    compiled = torch.compile(function, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*args), function(*args), rtol=1e-5, atol=1e-7)
