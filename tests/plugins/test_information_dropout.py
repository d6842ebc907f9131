"""information_dropout: closed-form KL, α range, noise law, penalty scaling, wrap/restore, store."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

import infoshape
from infoshape.apps.models import build_model
from infoshape.errors import ConfigError, PluginHookError
from infoshape.plugins.information_dropout import (
    InformationDropoutLayer,
    kl_log_normal,
    kl_log_uniform,
    log_normal_noise,
)
from infoshape.testing import PluginTester, small_mlp
from infoshape.testing.conformance import hook_counts

TIGHT = 1e-6  # float32 round-off on O(1..10) nats
A_MID = 0.001 + 0.7 * 0.5  # α where g = 0: α_min + α_max·sigmoid(0) = 0.351


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("cnn", (1, 16, 16), 4)  # pool1: 16x8x8, pool2: 32x4x4


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return small_mlp((8,), 3)


def _zero_g(module: nn.Module, bias: float = 0.0) -> None:
    """Make g output the constant ``bias``: α = α_min + α_max·sigmoid(bias) everywhere."""
    layer = module.information_dropout.alpha_layer
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.fill_(bias)


class _Holder(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.information_dropout = layer


# ----------------------------------------------------------------- closed forms
def test_kl_log_uniform_hand_values():
    alpha = torch.tensor([0.701, 0.351, 0.001, 0.1])
    expected = [0.0, math.log(0.701 / 0.351), math.log(701.0), math.log(7.01)]
    got = kl_log_uniform(alpha, 0.001, 0.7)
    assert got.shape == alpha.shape  # per unit, no reduction
    torch.testing.assert_close(got, torch.tensor(expected), rtol=0, atol=TIGHT)


def test_kl_log_normal_hand_value_and_zero_at_the_prior():
    # (α² + (μ − μ₁)²)/(2σ₁²) + log(σ₁/α) − ½ with α=0.5, μ=0.2, μ₁=−0.1, σ₁=2:
    # (0.25 + 0.09)/8 + log 4 − 0.5 = 0.0425 + 1.3862944 − 0.5 = 0.9287944
    got = kl_log_normal(torch.tensor([0.5]), torch.tensor([0.2]), -0.1, 2.0)
    assert got.item() == pytest.approx(0.9287944, abs=TIGHT)
    same = kl_log_normal(torch.tensor([1.3, 0.2]), torch.tensor([0.4, -2.0]), 0.4, 1.3)
    assert same[0].item() == pytest.approx(0.0, abs=TIGHT)  # q = p: no information
    assert same[1].item() > 0


def test_kl_log_normal_is_the_kl_of_two_normals():
    g = torch.Generator().manual_seed(0)
    alpha = torch.rand(50, generator=g, dtype=torch.float64) + 0.01
    mu = torch.randn(50, generator=g, dtype=torch.float64)
    prior = torch.distributions.Normal(torch.tensor(0.3, dtype=torch.float64), 1.7)
    reference = torch.distributions.kl_divergence(torch.distributions.Normal(mu, alpha), prior)
    torch.testing.assert_close(kl_log_normal(alpha, mu, 0.3, 1.7), reference, rtol=1e-12, atol=0)


# ----------------------------------------------------------------- the layer
@pytest.mark.parametrize("alpha_max", [0.7, 0.499])
def test_alpha_stays_within_its_range(alpha_max):
    g = nn.Linear(4, 6)
    layer = InformationDropoutLayer(g, "input", 0.001, alpha_max, "log_uniform")
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(0)) * 50  # saturates sigmoid
    with torch.no_grad():
        alpha = layer.alpha(x, torch.ones(500, 6))
    assert float(alpha.min()) >= 0.001 and float(alpha.max()) <= 0.001 + alpha_max
    assert float(alpha.min()) < 0.002 and float(alpha.max()) > alpha_max  # both ends reached
    if alpha_max == 0.499:
        assert float(alpha.max()) <= 0.5  # the paper's cap (sigmoid saturates to 1 in float32)


def test_noise_is_log_normal_with_std_alpha():
    n, alpha = 200_000, 0.351
    torch.manual_seed(0)
    eps = log_normal_noise(torch.full((n,), alpha))
    log_eps = eps.double().log()
    # standard errors: mean α/√n = 7.8e-4, std α/√(2n) = 5.5e-4; tolerances ≈ 5 of them
    assert abs(float(log_eps.mean())) < 4e-3
    assert float(log_eps.std()) == pytest.approx(alpha, abs=3e-3)
    assert float(eps.double().mean()) == pytest.approx(math.exp(alpha**2 / 2), abs=4e-3)
    torch.manual_seed(0)
    assert torch.equal(log_normal_noise(torch.full((n,), alpha)), eps)  # seeded


def test_training_noise_multiplies_f_and_eval_is_identity():
    layer = InformationDropoutLayer(nn.Linear(3, 5), "input", 0.001, 0.7, "log_uniform")
    _zero_g(_Holder(layer))
    x, f = torch.randn(40_000, 3), torch.full((40_000, 5), 2.0)
    torch.manual_seed(1)
    z = layer(x, f)
    ratio = (z / f).detach().log()
    assert float(ratio.std()) == pytest.approx(A_MID, abs=3e-3)  # SE 0.351/√(2·2e5) = 5.5e-4
    layer.eval()
    assert torch.equal(layer(x, f), f)


# ----------------------------------------------------------------- the session
def test_eval_is_deterministic_and_equals_the_plain_model():
    model, x = _cnn(), torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = model(x)
    with infoshape.Session(model, plugins=["information_dropout"], n_train=100) as s:
        s.model.eval()
        with torch.no_grad():
            a, b = s.model(x), s.model(x)
        assert torch.equal(a, b) and torch.equal(a, plain)
        s.model.train()
        with torch.no_grad():
            assert not torch.equal(s.model(x), s.model(x))


def test_default_wraps_pooling_and_strided_convs_and_g_matches_f():
    model = _cnn()
    with infoshape.Session(model, plugins=["information_dropout"], n_train=10) as s:
        plugin = s.plugins["information_dropout"].plugin
        assert list(plugin.layers) == ["pool1", "pool2"]
        assert plugin.layers["pool1"].alpha_from == "output"  # pooling: g on f(x), 3x3
        assert plugin.layers["pool2"].alpha_layer.in_channels == 32
    strided = nn.Sequential(
        OrderedDict(
            c1=nn.Conv2d(1, 4, 3, padding=1),
            down=nn.Conv2d(4, 6, 3, stride=2, padding=1),
            relu=nn.ReLU(),
            flat=nn.Flatten(),
            fc=nn.Linear(6 * 4 * 4, 3),
        )
    )
    with infoshape.Session(strided, plugins=["information_dropout"], n_train=10) as s:
        layer = s.plugins["information_dropout"].plugin.layers["down"]
        assert layer.alpha_from == "input"  # parallel conv on the same input, as in the paper
        assert (layer.alpha_layer.stride, layer.alpha_layer.out_channels) == ((2, 2), 6)
        s.model(torch.randn(2, 1, 8, 8))
        kl = s.captures["information_dropout.kl.down"]
        assert kl.shape == (2, 6, 4, 4)


def test_penalty_is_beta_times_kl_sum_over_n_train():
    x, y = torch.randn(10, 8), torch.arange(10) % 3
    kl_unit = math.log(0.701 / A_MID)  # α = 0.351 in every unit
    for n_train, beta in [(100, 3.0), (400, 3.0), (100, 0.5)]:
        options = {"information_dropout": {"layers": ["fc1", "fc2"], "beta": beta}}
        model = _mlp()
        with infoshape.Session(model, ["information_dropout"], options, n_train=n_train) as s:
            _zero_g(model.fc1)
            _zero_g(model.fc2)
            loss = s.loss(s.model(x), y)
            penalty = s._pending["penalty.information_dropout"].item()
            objective = s._pending["loss.objective"].item()
        # Σ_units KL: 16 units in fc1 and 16 in fc2, the same for every sample
        assert penalty == pytest.approx(32 * kl_unit / n_train, rel=1e-5)
        assert loss.item() == pytest.approx(objective + beta * 32 * kl_unit / n_train, rel=1e-5)


def test_missing_n_train_is_an_explained_error():
    with pytest.raises(PluginHookError, match="n_train") as err:
        infoshape.Session(_cnn(), plugins=["information_dropout"])
    cause = err.value.__cause__
    assert isinstance(cause, ConfigError) and "n_train=len(train_set)" in cause.fix


def test_closing_restores_the_model():
    model, x = _cnn(), torch.randn(4, 1, 16, 16)
    keys, hooks = list(model.state_dict()), hook_counts(model)
    with torch.no_grad():
        before = model(x)
    session = infoshape.Session(model, plugins=["information_dropout"], n_train=50)
    assert "pool1.information_dropout.alpha_layer.weight" in session.model.state_dict()
    session.close()
    assert list(model.state_dict()) == keys and hook_counts(model) == hooks
    assert not any("information_dropout" in n for n, _ in model.named_modules())
    with torch.no_grad():
        model.train()
        assert torch.equal(model(x), before)  # no noise is left, even in training mode


def test_added_parameters_are_trained_by_an_optimizer_on_session_model():
    x, y = torch.randn(16, 8), torch.arange(16) % 3
    options = {"information_dropout": {"layers": ["fc1"]}}
    with infoshape.Session(_mlp(), ["information_dropout"], options, n_train=16) as s:
        g = s.model.fc1.information_dropout.alpha_layer.weight
        assert any(p is g for p in s.model.parameters())
        before = g.detach().clone()
        opt = torch.optim.SGD(s.model.parameters(), lr=0.1)
        s.loss(s.model(x), y).backward()
        opt.step()
        assert not torch.equal(g.detach(), before)


def test_log_normal_prior_kl_and_learned_prior():
    options = {"information_dropout": {"layers": ["relu1"], "prior": "log_normal"}}
    model, x = _mlp(), torch.randn(5, 8, generator=torch.Generator().manual_seed(3))
    with infoshape.Session(model, ["information_dropout"], options, n_train=5) as s:
        layer = model.relu1.information_dropout
        assert isinstance(layer.alpha_layer, nn.Linear) and layer.alpha_from == "output"
        _zero_g(model.relu1)
        s.model.eval()
        s.model(x)
        kl = s.captures["information_dropout.kl.relu1"]
        f = torch.relu(model.fc1(x))
        mu = torch.log(torch.clamp(f, min=1e-4))
        expected = (A_MID**2 + mu**2) / 2 + math.log(1 / A_MID) - 0.5  # μ₁ = 0, σ₁ = 1
        torch.testing.assert_close(kl, expected, rtol=1e-5, atol=1e-5)
        s.model.train()
        s.loss(s.model(x), torch.arange(5) % 3).backward()
        assert layer.prior_mu.grad is not None and layer.prior_log_sigma.grad is not None


def test_kl_map_reaches_the_store_with_its_dims(tmp_path):
    model = _cnn()
    x, y = torch.randn(8, 1, 16, 16), torch.arange(8) % 4
    with infoshape.Session(
        model, ["information_dropout"], n_train=8, store=tmp_path / "run.zarr"
    ) as s:
        _zero_g(model.pool2)
        s.loss(s.model(x), y).backward()
        s.step_end()
        s.epoch_end()  # no probe: no map
        s.epoch_end(probe=(x, y))
    metrics = infoshape.open_store(tmp_path / "run.zarr")["metrics"].to_dataset()
    kl_map = metrics["information_dropout.kl_map.pool2"]
    assert kl_map.dims == ("epoch", "sample", "pool2_channel", "pool2_y", "pool2_x")
    assert kl_map.shape == (1, 8, 32, 4, 4) and list(kl_map.epoch.values) == [1]  # probe epoch
    expected = math.log(0.701 / A_MID)  # g = 0: the same KL at every location
    assert float(abs(kl_map.isel(epoch=0) - expected).max()) < TIGHT
    pool1 = metrics["information_dropout.kl_map.pool1"]
    assert pool1.dims[1:] == ("sample", "pool1_channel", "pool1_y", "pool1_x")
    total = float(metrics["information_dropout.kl.pool2"].isel(epoch=0))
    assert total == pytest.approx(32 * 4 * 4 * expected, rel=1e-5)


def test_default_layers_of_a_model_without_downsampling_are_its_activations():
    model = _mlp()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    with infoshape.Session(model, ["information_dropout"], n_train=4) as s:
        assert names and sorted(s.plugins["information_dropout"].plugin.layers) == sorted(names)


@pytest.mark.parametrize(
    ("model", "options", "fragment"),
    [
        (lambda: nn.Sequential(OrderedDict(fc=nn.Linear(2, 2))), {}, "no layer to wrap"),
        (_cnn, {"layers": ["features"]}, "matches no module"),
        (
            lambda: nn.Sequential(OrderedDict(b=nn.Sequential(nn.Linear(2, 2)))),
            {"layers": ["b"]},
            "container",
        ),
    ],
)
def test_bad_layer_choices_are_explained(model, options, fragment):
    with pytest.raises(PluginHookError, match=fragment):
        infoshape.Session(
            model(), ["information_dropout"], {"information_dropout": options}, n_train=4
        )


@pytest.mark.parametrize(
    ("options", "kwargs"),
    [
        ({"layers": ["fc1", "fc2"]}, {}),
        ({"layers": ["relu1"], "prior": "log_normal", "beta": 0.5}, {}),
        (
            {},
            {
                "model": build_model("cnn", (1, 8, 8), 4, channels=(4, 8)),
                "input_shape": (1, 8, 8),
                "n_classes": 4,
            },
        ),
    ],
    ids=["mlp-linear", "mlp-softplus-prior", "cnn-default"],
)
def test_plugin_conformance(options, kwargs):
    PluginTester("information_dropout", options=options, **kwargs).check_all()
