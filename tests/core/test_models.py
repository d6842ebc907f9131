"""The model zoo: output shapes on each input size, stable names, default taps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import infoshape
from infoshape.models import MODELS, build_model

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
    assert "expected: one of cnn, mlp, resnet18" in message
    assert set(MODELS) == {"mlp", "cnn", "resnet18"}


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
