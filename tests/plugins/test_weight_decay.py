"""l1w and l2w: hand computations, the parameter selection, the plugins. Tolerance 1e-12."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

import infoshape
from infoshape.apps.models import build_model
from infoshape.errors import ConfigError, PluginHookError
from infoshape.plugins.weight_decay import l1_weights, l2_weights, select_weights
from infoshape.testing import PluginTester
from infoshape.testing.conformance import RecordingSink

TIGHT = 1e-12


def _model() -> nn.Module:
    """fc: W = [[1, −2], [3, 0]], b = (5, −6); bn: γ = (7, 8), β = 0; out: W = [[−1, 2]], b = 9."""
    model = nn.Sequential(
        OrderedDict(fc=nn.Linear(2, 2), bn=nn.BatchNorm1d(2), act=nn.ReLU(), out=nn.Linear(2, 1))
    ).double()
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.0]]))
        model.fc.bias.copy_(torch.tensor([5.0, -6.0]))
        model.bn.weight.copy_(torch.tensor([7.0, 8.0]))
        model.out.weight.copy_(torch.tensor([[-1.0, 2.0]]))
        model.out.bias.fill_(9.0)
    return model


def test_hand_computation_over_the_weight_matrices():
    params = select_weights(_model())
    assert [tuple(p.shape) for p in params] == [(2, 2), (1, 2)]  # no bias, no BN scale
    assert l1_weights(params).item() == pytest.approx(1 + 2 + 3 + 0 + 1 + 2, abs=TIGHT)
    assert l2_weights(params).item() == pytest.approx(1 + 4 + 9 + 0 + 1 + 4, abs=TIGHT)


def test_modules_and_biases_options():
    model = _model()
    fc_only = select_weights(model, modules=("fc",))
    assert l2_weights(fc_only).item() == pytest.approx(14, abs=TIGHT)
    with_biases = select_weights(model, modules=("fc", "bn"), biases=True)
    # fc W 14, fc b 25 + 36, bn γ 49 + 64, bn β 0
    assert l2_weights(with_biases).item() == pytest.approx(14 + 61 + 113, abs=TIGHT)
    assert l1_weights(select_weights(model, biases=True)).item() == pytest.approx(
        6 + 11 + 15 + 3 + 9, abs=TIGHT
    )
    with pytest.raises(infoshape.TapError, match="matches no module"):
        select_weights(model, modules=("fc9",))
    with pytest.raises(ConfigError, match="no parameter to penalize"):
        select_weights(model, modules=("act",))


def test_gradients_are_sign_and_twice_the_weight():
    model = _model()
    params = select_weights(model)
    l1_weights(params).backward()
    assert torch.equal(model.fc.weight.grad, torch.tensor([[1.0, -1.0], [1.0, 0.0]]).double())
    model.zero_grad()
    l2_weights(params).backward()
    assert torch.allclose(model.fc.weight.grad, 2 * model.fc.weight, atol=TIGHT)
    model.zero_grad()
    zero = [torch.zeros(3, 3, requires_grad=True)]
    l2_weights(zero).backward()
    assert torch.equal(zero[0].grad, torch.zeros(3, 3))  # finite at w = 0


@pytest.mark.parametrize(("name", "function"), [("l1w", l1_weights), ("l2w", l2_weights)])
def test_plugin_adds_coefficient_times_the_penalty(name, function):
    torch.manual_seed(0)
    model = build_model("mlp", (4,), 3, hidden=[5], batch_norm=True)
    x, y = torch.randn(8, 4), torch.arange(8) % 3
    sink = RecordingSink()
    options = {name: {"coefficient": 0.5}}
    with infoshape.Session(model, plugins=[name], options=options, sinks=[sink]) as s:
        out = s.model(x)
        loss = s.loss(out, y)
        s.step_end()
    expected = function([model.fc1.weight, model.out.weight]).item()
    assert sink.rows[0][2][f"penalty.{name}"] == pytest.approx(expected, rel=1e-6)
    ce = nn.functional.cross_entropy(out, y).item()
    assert loss.item() == pytest.approx(ce + 0.5 * expected, rel=1e-6)


def test_plugin_reports_a_bad_module_glob():
    with infoshape.Session(
        nn.Sequential(nn.Linear(2, 2)), plugins=["l2w"], options={"l2w": {"modules": ["conv*"]}}
    ) as s:
        with pytest.raises(PluginHookError, match="matches no module"):
            s.loss(s.model(torch.zeros(3, 2)), torch.tensor([0, 1, 0]))


@pytest.mark.parametrize("name", ["l1w", "l2w"])
def test_plugin_conforms(name):
    PluginTester(name).check_all()
    PluginTester(
        name, options={"modules": ["fc*"], "biases": True, "coefficient": 1e-3}
    ).check_all()


@pytest.mark.parametrize(
    ("function", "direct"),
    [
        (l1_weights, lambda ps: sum(p.abs().sum() for p in ps)),
        (l2_weights, lambda ps: sum(p.square().sum() for p in ps)),
    ],
)
def test_fused_penalties_match_the_direct_sum_in_value_and_gradient(function, direct):
    """Seeded random weights, with zeros; the upstream weight 0.3 scales the gradient."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(*s, generator=gen, dtype=torch.float64).round() for s in [(4, 3), (5,)]]
    params = [p.requires_grad_() for p in params]
    got, want = function(params), direct(params)
    assert got.item() == pytest.approx(want.item(), rel=TIGHT)
    for g, w in zip(
        torch.autograd.grad(0.3 * got, params), torch.autograd.grad(0.3 * want, params), strict=True
    ):
        torch.testing.assert_close(g, w, rtol=TIGHT, atol=TIGHT)
