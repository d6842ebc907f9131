"""Every exception type's message says what was expected, what was got and the fix.

Each error is provoked through the public API, as a user would meet it.
"""

from __future__ import annotations

import attrs
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
    assert "unknown data set 'digtis' (did you mean 'digits'" in message
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
    with infoshape.Session(mlp, taps=[infoshape.Tap("relu1")], check_every=1) as s:
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
    assert "replace it with overwrite=True" in message and "--overwrite" not in message


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


# ---------------------------------------------------------------- bad input (issue 9)
def test_config_error_for_targets_of_wrong_shape(mlp, batch):
    x, y = batch
    with infoshape.Session(mlp) as s, pytest.raises(infoshape.ConfigError) as info:
        s.loss(s.model(x), y[:10])
    message = _parts(info.value)
    assert "targets do not match the batch" in message
    assert (
        "expected: class indices of shape (32,)" in message
        and "got: targets of shape (10,)" in message
    )


def test_config_error_for_an_empty_batch(mlp, batch):
    x, y = batch
    with infoshape.Session(mlp) as s, pytest.raises(infoshape.ConfigError) as info:
        s.loss(s.model(x[:0]), y[:0])
    message = _parts(info.value)
    assert "an empty batch at step 0" in message and "expected: a batch of at least one" in message
    assert "got: outputs of shape (0, 3), targets of shape (0,)" in message
    assert "drop_last=True" in message


def test_config_error_for_an_empty_probe_set(mlp, batch):
    x, y = batch
    with infoshape.Session(mlp) as s, pytest.raises(infoshape.ConfigError) as info:
        s.epoch_end(probe=(x[:0], y[:0]))
    message = _parts(info.value)
    assert "the probe set is empty" in message and "got: probe inputs of shape (0, 8)" in message


def test_config_error_for_probe_labels_of_another_length(mlp, batch):
    x, y = batch
    with infoshape.Session(mlp) as s, pytest.raises(infoshape.ConfigError) as info:
        s.epoch_end(probe=(x, y[:5]))
    message = _parts(info.value)
    assert "probe inputs and labels differ in length" in message
    assert "expected: 32 labels" in message and "got: labels of shape (5,)" in message


class _Branchy(torch.nn.Module):
    """A model with a module its forward never calls."""

    def __init__(self):
        super().__init__()
        self.used = torch.nn.Linear(8, 3)
        self.unused = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.used(x)


def test_capture_error_for_a_tap_on_a_module_never_called(batch):
    x, y = batch
    taps = [infoshape.Tap("used"), infoshape.Tap("unused", store=True)]
    with infoshape.Session(_Branchy(), taps=taps) as s:
        with pytest.raises(infoshape.CaptureError) as info:
            s.loss(s.model(x), y)
        message = _parts(info.value)
        assert "tapped module 'unused' was never called in the training forward pass" in message
        assert "got: no capture for 'unused'" in message and "forward pass uses" in message
    only_unused = [infoshape.Tap("unused", store=True)]
    with infoshape.Session(_Branchy(), taps=only_unused) as s:
        with pytest.raises(infoshape.CaptureError, match="never called in the probe pass"):
            s.epoch_end(probe=(x, y))


def test_store_error_for_probe_sets_of_different_sizes(tmp_path, mlp, batch):
    x, y = batch
    with infoshape.Session(
        mlp, store=tmp_path / "a.zarr", taps=[infoshape.Tap("fc1", store=True)]
    ) as s:
        s.epoch_end(probe=(x, y))
        with pytest.raises(infoshape.StoreError) as info:
            s.epoch_end(probe=(x[:20], y[:20]))
    message = _parts(info.value)
    assert "the probe set changed between epochs" in message
    assert (
        "expected: the same 32 probe samples every epoch" in message
        and "got: 20 samples" in message
    )


def test_store_error_for_resuming_a_store_of_another_run(tmp_path, mlp):
    with infoshape.Session(mlp, store=tmp_path / "a.zarr") as s:
        state = s.state_dict()
    infoshape.Session(mlp, store=tmp_path / "a.zarr", overwrite=True).close()  # another run
    with pytest.raises(infoshape.StoreError) as info:
        infoshape.Session(mlp, store=tmp_path / "a.zarr", resume=state)
    message = _parts(info.value)
    assert f"the store at {tmp_path / 'a.zarr'} belongs to another run" in message
    assert f"expected: run_id {state['run_id']!r}" in message and "overwrite=True" in message


def test_plugin_load_error_for_an_unknown_option(mlp):
    with pytest.raises(infoshape.PluginLoadError) as info:
        infoshape.Session(mlp, plugins=["csv"], options={"csv": {"pth": "m.csv"}})
    message = _parts(info.value)
    assert "plugin 'csv'" in message and "expected: options among: append, path" in message
    assert "got: pth='m.csv'" in message and "infoshape plugins --options" in message


def test_plugin_load_error_for_options_of_a_plugin_not_enabled(mlp):
    with pytest.raises(infoshape.PluginLoadError) as info:
        infoshape.Session(mlp, plugins=["csv"], options={"renyi": {"alpha": 2.0}})
    message = _parts(info.value)
    assert "plugin 'renyi': has options but is not enabled" in message
    assert "got: renyi" in message and 'enable it (plugins=["renyi"])' in message


def test_config_error_for_an_unknown_nonfinite_policy(mlp):
    with pytest.raises(infoshape.ConfigError) as info:
        infoshape.Session(mlp, on_nonfinite="drop")
    message = _parts(info.value)
    assert 'expected: "raise", "warn", "ignore" or "skip"' in message and "got: 'drop'" in message


def test_plugin_hook_error_mid_training_names_step_and_closes(tmp_path, mlp, batch):
    x, y = batch

    class Flaky:
        name = "flaky"

        @infoshape.hookimpl
        def infoshape_step_end(self, step):
            if step == 1:
                raise KeyError("moving_average")

    s = infoshape.Session(
        mlp, plugins=[Flaky], store=tmp_path / "a.zarr", taps=[infoshape.Tap("fc1")]
    )
    s.loss(s.model(x), y)
    s.step_end()
    s.loss(s.model(x), y)
    with pytest.raises(infoshape.PluginHookError) as info:
        s.step_end()
    message = _parts(info.value)
    assert "plugin 'flaky' in hook infoshape_step_end: raised KeyError" in message
    assert "got: KeyError at step 1, epoch 0" in message
    assert s.closed and not mlp.fc1._forward_hooks
    assert infoshape.open_store(tmp_path / "a.zarr").attrs["status"] == "failed"


# ------------------------------------------------------------------ the user's syntax
def test_a_fix_is_python_in_python_and_flags_under_the_cli():
    from infoshape.syntax import cli_syntax

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))

    def message() -> str:  # no ReLU, no default_taps: characteristics needs named layers
        with pytest.raises(infoshape.InfoshapeError) as info:
            infoshape.Session(model, plugins=["characteristics"])
        return _parts(info.value)

    assert 'options={"characteristics": {"layers": ["relu3"]}}' in message()
    with cli_syntax():
        cli = message()
    assert "--option characteristics.layers='[\"relu3\"]'" in cli and "options={" not in cli


def test_plugin_load_error_for_a_value_not_among_the_choices(mlp):
    with pytest.raises(infoshape.PluginLoadError) as info:
        infoshape.Session(mlp, plugins=["shade"], options={"shade": {"p_z": "gauss"}})
    message = _parts(info.value)
    assert "plugin 'shade': option 'p_z' is not one of 'exp', 'sigmoid'" in message
    assert "got: 'gauss'" in message and "wrong type" not in message
    assert 'options={"shade": {"p_z": "exp"}}' in message


def test_tap_error_names_the_plugin_whose_default_tap_matches_nothing(mlp):
    class Head:  # taps the model's "head" unless told otherwise, as shade taps every nn.ReLU
        name = "head"

        @attrs.frozen(kw_only=True)
        class Config:
            layers: tuple[str, ...] = ()

        @infoshape.hookimpl
        def infoshape_taps(self):
            return [infoshape.Tap("head")]

    with pytest.raises(infoshape.TapError) as info:
        infoshape.Session(mlp, plugins=[Head])
    message = _parts(info.value)
    assert "plugin 'head': tap 'head' matches no module of SmallMLP" in message
    assert "got: modules fc1, relu1, fc2, relu2, out" in message
    assert 'options={"head": {"layers": ["out"]}}' in message and "disable 'head'" in message


def test_plugin_hook_error_names_the_cause_and_where_it_was_raised(mlp):
    class Unwritable:
        name = "unwritable"

        @infoshape.hookimpl
        def infoshape_sinks(self):
            raise PermissionError(13, "Permission denied", "/runs/m.csv")

    with pytest.raises(infoshape.PluginHookError) as info:
        infoshape.Session(mlp, plugins=[Unwritable])
    message = _parts(info.value)
    assert "raised PermissionError: [Errno 13] Permission denied: '/runs/m.csv'" in message
    assert "raised in test_error_messages.py:" in message and "in infoshape_sinks" in message
    assert "check that /runs/m.csv can be written" in message
    assert "traceback" not in message


def test_run_interrupted_says_what_is_kept_and_how_to_resume(tmp_path, monkeypatch):
    from infoshape.apps import trainer

    evaluated = []

    def evaluate_then_ctrl_c(*args):  # Ctrl-C while epoch 1 is evaluated
        evaluated.append(args)
        if len(evaluated) == 2:
            raise KeyboardInterrupt
        return real(*args)

    real = trainer._evaluate_splits
    monkeypatch.setattr(trainer, "_evaluate_splits", evaluate_then_ctrl_c)
    store = str(tmp_path / "a.zarr")
    config = trainer.TrainConfig(
        epochs=3, batch_size=256, probe_size=20, progress=False, store=store
    )
    with pytest.raises(infoshape.RunInterrupted) as info:
        trainer.train(config)
    message = _parts(info.value)
    assert f"interrupted in epoch 2 of 3; 1 complete epoch is kept in {store}" in message
    assert f"continue the run with train(*resume_config({store!r}))" in message
    assert isinstance(info.value, KeyboardInterrupt) and info.value.epochs_kept == 1
    assert infoshape.open_store(store).attrs["status"] == "interrupted"
