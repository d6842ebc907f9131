"""The model zoo: output shapes on each input size, stable names, default taps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import infoshape
from infoshape.apps.models import MODELS, build_model

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_forward_shape_and_default_taps(name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, 10)
    assert model(torch.rand(4, *shape)).shape == (4, 10)
    modules = dict(model.named_modules())
    assert model.default_taps and all(tap in modules for tap in model.default_taps)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_resnet18_small_inputs(shape):
    torch.manual_seed(0)
    model = build_model("resnet18", shape, 7)
    model.eval()
    assert model(torch.rand(2, *shape)).shape == (2, 7)
    assert model.conv1.in_channels == shape[0]
    assert (model.conv1.kernel_size, model.conv1.stride) == ((3, 3), (1, 1))
    assert isinstance(model.maxpool, nn.Identity)
    modules = dict(model.named_modules())
    assert all(tap in modules for tap in model.default_taps)
    captured = {}
    model.layer4.register_forward_hook(lambda m, a, out: captured.update(out=out))
    model(torch.rand(1, *shape))
    side = math.ceil(shape[1] / 8)  # three stride-2 stages (each ceil(n / 2)) after a stride-1 stem
    assert captured["out"].shape == (1, 512, side, side)


def test_mlp_names_and_widths():
    model = build_model("mlp", (1, 8, 8), 10, hidden=[20, 10, 5])
    names = [n for n, _ in model.named_children()]
    assert names == ["flatten", "fc1", "relu1", "fc2", "relu2", "fc3", "relu3", "out"]
    assert (model.fc1.in_features, model.fc3.out_features, model.out.out_features) == (64, 5, 10)
    assert model.default_taps == ["relu1", "relu2", "relu3"]


@pytest.mark.parametrize(
    ("shape", "pooled"),
    [((1, 8, 8), (32, 4, 4)), ((1, 28, 28), (32, 7, 7)), ((3, 32, 32), (32, 8, 8))],
)
def test_cnn_pools_only_large_maps(shape, pooled):
    model = build_model("cnn", shape, 10)
    names = [n for n, _ in model.named_children()]
    assert names == ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc"]
    assert model[: names.index("pool2") + 1](torch.rand(2, *shape)).shape == (2, *pooled)
    assert model.default_taps == ["pool1", "pool2"]


def test_unknown_model_lists_the_zoo():
    with pytest.raises(infoshape.UnknownNameError) as info:
        build_model("mpl", (1, 8, 8), 10)
    message = str(info.value)
    assert "unknown model 'mpl'" in message and "did you mean 'mlp'" in message
    assert f"expected: one of {', '.join(sorted(MODELS))}" in message
    assert {"mlp", "cnn", "resnet18", "shallow_cnn"} <= set(MODELS)


@pytest.mark.parametrize(
    ("name", "shape", "options", "match"),
    [
        ("mlp", (1, 8, 8), {"hiden": [8]}, "has no option 'hiden'"),
        ("mlp", (1, 8, 8), {"hidden": [8, 0]}, "option 'hidden' is invalid"),
        ("cnn", (1, 8, 8), {"channels": [8]}, "list of 2 positive integers"),
        ("cnn", (64,), {}, "needs image inputs"),
        ("resnet18", (1, 8, 8), {"width": 2}, "expected: options among: \\(none\\)"),
    ],
)
def test_bad_options_and_shapes(name, shape, options, match):
    with pytest.raises(infoshape.ConfigError, match=match):
        build_model(name, shape, 10, **options)


def test_construction_is_seeded():
    torch.manual_seed(3)
    a = build_model("cnn", (1, 8, 8), 10)
    torch.manual_seed(3)
    b = build_model("cnn", (1, 8, 8), 10)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


# ------------------------------------------------------------------ dropout and batch norm
SWITCHED = {
    "mlp": (
        (1, 8, 8),
        {"hidden": [12, 6]},
        ["flatten", "fc1", "bn1", "relu1", "drop1", "fc2", "bn2", "relu2", "drop2", "out"],
    ),
    "cnn": (
        (1, 8, 8),
        {"channels": [4, 6]},
        [
            *["conv1", "bn1", "relu1", "pool1", "drop1"],
            *["conv2", "bn2", "relu2", "pool2", "drop2", "flatten", "fc"],
        ],
    ),
}


@pytest.mark.parametrize("name", list(SWITCHED))
def test_dropout_and_batch_norm_add_modules_and_keep_the_other_names(name):
    shape, options, names = SWITCHED[name]
    torch.manual_seed(0)
    plain = build_model(name, shape, 10, **options)
    torch.manual_seed(0)
    model = build_model(name, shape, 10, **options, dropout=0.25, batch_norm=True)
    assert [n for n, _ in model.named_children()] == names
    assert model.default_taps == plain.default_taps
    assert isinstance(model.drop1, nn.Dropout) and model.drop1.p == 0.25
    assert isinstance(model.bn2, nn.BatchNorm1d if name == "mlp" else nn.BatchNorm2d)
    for key, value in plain.state_dict().items():  # same names, same seeded weights
        assert torch.equal(model.state_dict()[key], value)
    assert [n for n, _ in plain.named_children()] == [n for n in names if n[:2] not in ("bn", "dr")]


@pytest.mark.parametrize("name", list(SWITCHED))
def test_switched_models_train_one_step_and_are_deterministic_in_eval(name):
    shape, options, _ = SWITCHED[name]
    torch.manual_seed(1)
    model = build_model(name, shape, 10, **options, dropout=0.5, batch_norm=True)
    x, y = torch.rand(16, *shape), torch.arange(16) % 10
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    assert torch.isfinite(loss)
    # a bias right before a BatchNorm in training mode shifts the batch mean that the
    # norm subtracts: its gradient is zero (up to rounding), so it need not change
    children = list(model.named_children())
    before_norm = {
        f"{children[i - 1][0]}.bias"
        for i, (_, m) in enumerate(children)
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }
    assert before_norm and before_norm <= set(before)
    for name in before_norm:
        assert grads[name].abs().max() < 1e-6, name
    moved = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert set(before) - before_norm <= set(moved), "every other parameter takes the step"
    assert float(model.bn1.running_mean.abs().sum()) > 0  # batch statistics were tracked
    model.eval()
    assert torch.equal(model(x), model(x))  # no dropout, running statistics


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"dropout": 1.0}, "option 'dropout' is invalid"),
        ({"dropout": -0.1}, "a drop probability in \\[0, 1\\)"),
        ({"dropout": True}, "option 'dropout' is invalid"),
        ({"batch_norm": "yes"}, "option 'batch_norm' is invalid"),
    ],
)
@pytest.mark.parametrize("name", list(SWITCHED))
def test_bad_dropout_and_batch_norm(name, options, match):
    with pytest.raises(infoshape.ConfigError, match=match):
        build_model(name, (1, 8, 8), 10, **options)


# ------------------------------------------------------------------ shallow_cnn (MI-CE paper)
def test_shallow_cnn_has_the_papers_44k_parameters_and_stable_names():
    model = build_model("shallow_cnn", (1, 28, 28), 10)
    names = [n for n, _ in model.named_children()]
    assert names == [
        "conv1", "relu1", "pool1", "conv2", "relu2", "pool2",
        "flatten", "fc1", "relu3", "fc2", "relu4", "out",
    ]  # fmt: skip
    # conv 1·6·25+6, conv 6·16·25+16, fc 256·120+120, fc 120·84+84, out 84·10+10
    count = sum(p.numel() for p in model.parameters())
    assert count == 156 + 2416 + 30840 + 10164 + 850 == 44426  # the paper: "approximately 44K"
    assert model.default_taps == ["pool1", "pool2", "relu3", "relu4"]
    assert model[: names.index("pool2") + 1](torch.rand(2, 1, 28, 28)).shape == (2, 16, 4, 4)
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_shallow_cnn_options_and_small_inputs():
    model = build_model("shallow_cnn", (3, 32, 32), 5, channels=[4, 8], hidden=[32, 16])
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    assert model.fc1.in_features == 8 * 5 * 5  # 32 → 28 → 14 → 10 → 5
    with pytest.raises(infoshape.ConfigError, match="at least 16x16"):
        build_model("shallow_cnn", (1, 8, 8), 10)
    with pytest.raises(infoshape.ConfigError, match="list of 2 positive integers"):
        build_model("shallow_cnn", (1, 28, 28), 10, hidden=[64])
