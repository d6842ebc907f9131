"""Taps and forward-hook capture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import infoshape
from infoshape import CaptureError, NonFiniteError, Tap, TapError
from infoshape.capture import Capture


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_taps_of_one_module_share_its_hooks(mlp, batch):
    x, _ = batch
    taps = [
        Tap("relu1", point="pre"),
        Tap("relu1", point="pre", name="again"),
        Tap("relu1"),
        Tap("fc2", name="hidden"),
    ]
    with Capture(mlp, taps) as capture:
        # relu1's pre-hook and forward hook, fc2's (not one per tap), and the model's pre-hook
        # and hook that start and end each forward pass
        assert _hook_count(mlp) == 5
        mlp(x)
        pre = mlp.fc1(x)
        torch.testing.assert_close(capture.tensors["relu1_pre"], pre)
        torch.testing.assert_close(capture.tensors["again"], pre)
        torch.testing.assert_close(capture.tensors["relu1"], pre.clamp_min(0))
        torch.testing.assert_close(capture.tensors["hidden"], mlp.fc2(pre.clamp_min(0)))
    assert _hook_count(mlp) == 0


def test_captures_keep_the_graph(mlp, batch):
    x, _ = batch
    with Capture(mlp, [Tap("relu1")]) as capture:
        mlp(x)
        capture.tensors["relu1"].sum().backward()
    assert mlp.fc1.weight.grad is not None and mlp.fc1.weight.grad.abs().sum() > 0
    assert mlp.fc2.weight.grad is None


def test_glob_and_class_selection(mlp):
    assert Tap("fc*").select(mlp) == ["fc1", "fc2"]
    assert Tap(nn.ReLU).select(mlp) == ["relu1", "relu2"]
    capture = Capture(mlp, [Tap(nn.ReLU, name="act")])
    assert capture.names_of[Tap(nn.ReLU, name="act")] == ["act.relu1", "act.relu2"]


def test_tap_matching_nothing_lists_close_names(mlp):
    with pytest.raises(TapError) as info:
        Capture(mlp, [Tap("fc3")])
    message = str(info.value)
    assert "tap 'fc3' matches no module of SmallMLP" in message
    assert "closest module names: " in message
    assert {"fc1", "fc2"} <= set(message.split("closest module names: ")[1].split(", "))


def test_two_taps_claiming_one_name(mlp):
    with pytest.raises(TapError, match="two taps claim the capture name 'h'"):
        Capture(mlp, [Tap("fc1", name="h"), Tap("fc2", name="h")])


def test_same_tap_from_two_plugins_is_one_capture(mlp):
    capture = Capture(mlp, [Tap("fc1"), Tap("fc1")])
    assert [r.name for r in capture.resolved] == ["fc1"]


def test_hooks_removed_when_forward_raises(mlp):
    capture = Capture(mlp, [Tap("fc1")])
    with pytest.raises(RuntimeError), capture:
        mlp(torch.randn(4, 5))  # wrong width: Linear raises inside forward
    assert _hook_count(mlp) == 0


def test_nonfinite_capture_raises_naming_the_tap(mlp):
    x = torch.randn(4, 8)
    x[0, 0] = float("nan")
    with Capture(mlp, [Tap("fc1")]), pytest.raises(NonFiniteError) as info:
        mlp(x)
    assert "tap 'fc1' (fc1, post) holds 16 NaN/Inf values" in str(info.value)
    assert _hook_count(mlp) == 0


def test_nonfinite_capture_can_warn(mlp):
    x = torch.randn(4, 8)
    x[1] = float("inf")
    with Capture(mlp, [Tap("fc1")], on_nonfinite="warn") as capture:
        with pytest.warns(RuntimeWarning, match="tap 'fc1'"):
            mlp(x)
        assert capture.tensors["fc1"].shape == (4, 16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_finite_values_whose_sum_overflows_pass_and_opposite_infinities_do_not(dtype):
    big = torch.finfo(dtype).max
    tap = nn.Sequential()
    tap.add_module("id", nn.Identity())
    with Capture(tap, [Tap("id")]) as capture:
        tap(torch.full((8, 4), big, dtype=dtype))  # every value finite: no error
        assert capture.tensors["id"].dtype == dtype
        for bad, count in ((float("inf"), 1), (float("nan"), 1)):
            x = torch.zeros(8, 4, dtype=dtype)
            x[2, 1] = bad
            with pytest.raises(NonFiniteError, match=f"holds {count} NaN/Inf"):
                tap(x)
        x = torch.zeros(8, 4, dtype=dtype)
        x[0, 0], x[5, 3] = float("inf"), float("-inf")  # a sum of NaN
        with pytest.raises(NonFiniteError, match="holds 2 NaN/Inf"):
            tap(x)


def test_tuple_outputs_use_the_first_tensor():
    lstm = nn.Sequential()
    lstm.add_module("rnn", nn.GRU(3, 5, batch_first=True))
    with Capture(lstm, [Tap("rnn")]) as capture:
        out, _ = lstm.rnn(torch.randn(2, 4, 3))
        torch.testing.assert_close(capture.tensors["rnn"], out)


def test_non_tensor_output_is_a_clear_error():
    class ReturnsDict(nn.Module):
        def forward(self, x):
            return {"y": x}

    model = nn.Sequential()
    model.add_module("d", ReturnsDict())
    with Capture(model, [Tap("d")]), pytest.raises(CaptureError, match="found no tensor"):
        model(torch.randn(2, 2))


def test_bad_store_value():
    with pytest.raises(TapError, match=r"Tap\.store has an unknown value"):
        Tap("fc1", store="sometimes")


def _inplace_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(inplace=True), nn.Linear(5, 3))


def test_pre_tap_on_an_inplace_module_holds_its_true_input():
    model, x = _inplace_mlp(), torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    with Capture(model, [Tap("1", point="pre"), Tap("1")]) as capture:
        model(x)
        pre, post = capture.tensors["1_pre"], capture.tensors["1"]
        expected = model[0](x)
        assert pre.min() < 0  # not the ReLU's output
        torch.testing.assert_close(pre, expected)
        torch.testing.assert_close(post, expected.clamp_min(0))
        pre.sum().backward()  # a penalty's gradient reaches fc as d(sum fc(x))/dW
    torch.testing.assert_close(model[0].weight.grad, torch.ones(16, 5).T @ x)
    assert model[1].inplace is True  # the model is left as it is


def test_pre_tap_on_resnet18_inplace_relu():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    tap = Tap("layer1.0.relu", point="pre", call=1)  # the second call: after the residual sum
    with Capture(model, [tap]) as capture, torch.no_grad():
        model(x)
        got = capture.tensors["layer1.0.relu_pre"]
        stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        block = model.layer1[0]
        hidden = block.bn1(block.conv1(stem)).clamp_min(0)
        expected = block.bn2(block.conv2(hidden)) + stem  # the input of the block's last ReLU
    assert got.min() < 0, "the capture is relu(input): the in-place ReLU overwrote it"
    torch.testing.assert_close(got, expected)


# ------------------------------------------------- modules called more than once per forward
def _resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def test_each_call_of_a_module_called_twice_is_its_own_capture_on_resnet18(tmp_path):
    model = _resnet18()
    block = model.layer1[0]
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.arange(4)
    tap = infoshape.Tap("layer1.0.relu", store=True)
    with infoshape.Session(model, taps=[tap], store=tmp_path / "r.zarr") as s:
        s.loss(s.model(x), y)
        assert s.capture_names(tap) == ["layer1.0.relu#0", "layer1.0.relu#1"]
        first, second = (s.captures[n].detach() for n in s.capture_names(tap))
        s.step_end()
        s.epoch_end(probe=(x, y))
    with torch.no_grad():
        stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        torch.testing.assert_close(first, torch.relu(block.bn1(block.conv1(stem))))
        torch.testing.assert_close(second, block(stem))  # the block's output
    probe = infoshape.open_store(tmp_path / "r.zarr")["probe"]
    assert {"layer1.0.relu#0", "layer1.0.relu#1"} <= set(probe.data_vars)
    np.testing.assert_allclose(probe["layer1.0.relu#1"].isel(epoch=0).values, second.numpy())


def test_call_k_keeps_only_that_call_under_the_plain_name():
    model = _resnet18()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    taps = [infoshape.Tap("layer1.0.relu", call=1, name="out"), infoshape.Tap("layer1.0.relu")]
    with infoshape.Session(model, taps=taps) as s:
        s.loss(s.model(x), torch.arange(2))
        assert s.capture_names(taps[0]) == ["out"]
        torch.testing.assert_close(s.captures["out"], s.captures["layer1.0.relu#1"])


def test_a_module_reused_across_positions_is_captured_per_call():
    shared = torch.nn.Linear(4, 4)

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = shared
            self.head = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.head(self.shared(torch.relu(self.shared(x))))

    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    with infoshape.Session(Twice(), taps=[infoshape.Tap("shared")]) as s:
        for _ in range(2):  # the second step knows from the start: no renaming
            s.loss(s.model(x), torch.zeros(5, dtype=torch.long))
            assert sorted(s.captures) == ["shared#0", "shared#1"]
            expected = torch.nn.functional.linear(x, shared.weight, shared.bias)  # no hook
            torch.testing.assert_close(s.captures["shared#0"], expected)
            s.step_end()


def test_call_must_be_a_nonnegative_int():
    with pytest.raises(ValueError, match="call"):
        infoshape.Tap("fc1", call=-1)
