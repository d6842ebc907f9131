"""Every exception type's message says what was expected, what was got and the fix.

Each error is provoked through the public API, as a user would meet it.
"""

from __future__ import annotations

import pytest
import torch

import infoshape
from infoshape import errors


def _parts(err: BaseException) -> str:
    message = str(err)
    assert "expected:" in message or "fix:" in message, message
    return message


def test_every_error_type_is_exported_and_documented():
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert getattr(infoshape, name) is cls
        assert cls.__doc__ and cls.__doc__.strip()


def test_config_error_for_logits_of_wrong_shape(mlp):
    with infoshape.Session(mlp) as s, pytest.raises(infoshape.ConfigError) as info:
        s.loss(torch.randn(4, 3, 2), torch.zeros(4, dtype=torch.long))
    message = _parts(info.value)
    assert (
        "logits of shape (batch, classes)" in message
        and "got: outputs of shape (4, 3, 2)" in message
    )


def test_config_error_for_labels_out_of_range(mlp, batch):
    x, _ = batch
    with infoshape.Session(mlp) as s, pytest.raises(infoshape.ConfigError) as info:
        s.loss(s.model(x), torch.full((32,), 7))
    message = _parts(info.value)
    assert "expected: labels in [0, 2]" in message and "got: labels in [7, 7]" in message
    assert "number of classes" in message


def test_unknown_name_error_lists_known_names():
    with pytest.raises(infoshape.UnknownNameError) as info:
        infoshape.get_dataset("digtis")
    message = _parts(info.value)
    assert "unknown data set 'digtis' (did you mean 'digits'?)" in message
    assert "digits" in message.split("expected:")[1]
    with pytest.raises(infoshape.UnknownNameError, match="unknown estimator 'nope'"):
        infoshape.get_estimator("nope")


def test_plugin_load_error_for_missing_plugin(mlp):
    with pytest.raises(infoshape.PluginLoadError) as info:
        infoshape.Session(mlp, plugins=["no_such_plugin"])
    message = _parts(info.value)
    assert "plugin 'no_such_plugin': is not installed" in message
    assert "`infoshape plugins` lists what is installed" in message


def test_plugin_hook_error_names_plugin_and_hook(mlp):
    class Broken:
        name = "broken"

        @infoshape.hookimpl
        def infoshape_taps(self):
            raise ValueError("no taps today")

    with pytest.raises(infoshape.PluginHookError) as info:
        infoshape.Session(mlp, plugins=[Broken])
    message = _parts(info.value)
    assert "plugin 'broken' in hook infoshape_taps: raised ValueError: no taps today" in message
    assert "disable 'broken'" in message


def test_tap_error_for_a_tap_matching_no_module(mlp):
    with pytest.raises(infoshape.TapError) as info:
        infoshape.Session(mlp, taps=[infoshape.Tap("fc_1")])
    message = _parts(info.value)
    assert "tap 'fc_1' matches no module" in message and "closest module names" in message


def test_capture_error_for_a_module_returning_no_tensor():
    class Dict(torch.nn.Module):
        def forward(self, x):
            return {"x": x}

    model = torch.nn.Sequential()
    model.add_module("d", Dict())
    with infoshape.Session(model, taps=[infoshape.Tap("d")]) as s:
        with pytest.raises(infoshape.CaptureError) as info:
            s.model(torch.zeros(1))
    assert "tap 'd' found no tensor at the post point of 'd'" in _parts(info.value)


def test_nonfinite_error_names_the_tap(mlp):
    with infoshape.Session(mlp, taps=[infoshape.Tap("relu1")]) as s:
        with pytest.raises(infoshape.NonFiniteError) as info:
            s.model(torch.full((2, 8), float("nan")))
    message = _parts(info.value)
    assert "tap 'relu1' (relu1, post) holds 32 NaN/Inf values" in message
    assert "on_nonfinite='warn'" in message


def test_store_error_for_an_existing_store(tmp_path, mlp):
    infoshape.Session(mlp, store=tmp_path / "a.zarr").close()
    with pytest.raises(infoshape.StoreError) as info:
        infoshape.Session(mlp, store=tmp_path / "a.zarr")
    message = _parts(info.value)
    assert f"a store already exists at {tmp_path / 'a.zarr'}" in message
    assert "overwrite=True (CLI: --overwrite)" in message


def test_store_write_error_keeps_the_cause(tmp_path):
    from infoshape.store import RunStore

    store = RunStore(tmp_path / "a.zarr", manifest={})

    def fail():
        raise PermissionError(13, "Permission denied")

    store._submit(fail)
    with pytest.raises(infoshape.StoreWriteError) as info:
        store.flush()
    message = _parts(info.value)
    assert "PermissionError" in message and "Permission denied" in message
    assert "committed and readable with infoshape.open_store" in message
    with pytest.raises(infoshape.StoreWriteError):
        store.close()


def test_dataset_not_found_error_names_the_files(tmp_path):
    with pytest.raises(infoshape.DatasetNotFoundError) as info:
        infoshape.get_dataset("mnist").load("train", root=tmp_path)
    message = _parts(info.value)
    assert str(tmp_path) in message
    assert "train-images-idx3-ubyte" in message
