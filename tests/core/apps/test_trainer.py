"""The built-in training loop: a real digits run, its store, config validation."""

from __future__ import annotations

import numpy as np
import pytest
import xarray

import infoshape
from infoshape.apps.models import build_model
from infoshape.apps.trainer import TrainConfig, evaluate, train
from infoshape.datasets import load_digits


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two epochs of the default mlp on digits, 120 probe samples, lr 0.01.

    Why > 50 % test accuracy is reachable: the 8x8 digits are nearly linearly
    separable (a linear classifier reaches ~95 %); 2 epochs are 46 Adam steps at
    lr 0.01, which take this mlp to ~88 % (seed 0), far from the 10 % of chance.
    """
    store = tmp_path_factory.mktemp("runs") / "digits.zarr"
    config = TrainConfig(epochs=2, lr=0.01, probe_size=120, store=store, progress=False)
    return train(config)


def test_two_epochs_learn_the_digits(run):
    assert run.test_accuracy > 0.5
    assert run.train_accuracy > 0.5
    assert run.test_loss < 2.302  # below chance cross-entropy ln(10)
    assert len(run.history) == 2
    assert run.history[-1]["test.accuracy"] == run.test_accuracy
    assert run.config.taps == ("relu1", "relu2")  # the mlp's default taps, resolved
    assert run.elapsed_s > 0


def test_store_holds_probe_taps_and_metrics(run):
    tree = xarray.open_datatree(run.store, engine="zarr")
    probe = tree["probe"].to_dataset()
    assert probe["relu1"].dims == ("epoch", "sample", "relu1_unit")
    assert probe["relu1"].shape == (2, 120, 64)
    assert probe["relu2"].shape == (2, 120, 32)
    assert bool((probe["relu1"] >= 0).all())  # post-ReLU
    sample = probe["sample"].values
    assert len(set(sample)) == 120 and sample.min() >= 0 and sample.max() < 360
    assert np.all(np.diff(sample) > 0)  # drawn by permutation, stored in index order
    test_labels = load_digits("test").targets.numpy()
    np.testing.assert_array_equal(probe["label"].values, test_labels[sample])
    assert set(probe["split"].values.tolist()) == {"test"}
    metrics = tree["metrics"].to_dataset()
    accuracy = metrics["test.accuracy"]
    assert accuracy.dims == ("epoch",)
    np.testing.assert_allclose(accuracy.values, [h["test.accuracy"] for h in run.history])
    for name in ("test.loss", "train.accuracy", "train.loss"):
        assert metrics[name].sizes == {"epoch": 2}
    assert metrics["loss"].sizes == {"step": 46}  # ceil(1437 / 64) = 23 steps an epoch
    config = tree.attrs["config"]
    assert config["model"] == "mlp" and config["taps"] == ["relu1", "relu2"]
    assert config["lr"] == 0.01 and config["seed"] == 0


def test_probe_is_the_test_split_when_small(tmp_path):
    result = train(TrainConfig(epochs=1, store=tmp_path / "r.zarr", progress=False))
    probe = xarray.open_zarr(result.store, group="probe")
    np.testing.assert_array_equal(probe["sample"].values, np.arange(360))


def test_same_seed_same_run_other_seed_other_run():
    def final_loss(seed: int) -> float:
        config = TrainConfig(epochs=1, seed=seed, store=None, probe=False, progress=False)
        return train(config).test_loss

    assert final_loss(1) == final_loss(1)
    assert final_loss(1) != final_loss(2)


def test_evaluate_restores_train_mode():
    model = build_model("mlp", (1, 8, 8), 10)
    model.train()
    accuracy, loss = evaluate(model, load_digits("test"))
    assert model.training and 0 <= accuracy <= 1 and loss > 0


def test_default_store_path():
    assert TrainConfig().store == "runs/digits-mlp.zarr"
    assert TrainConfig(model="cnn", dataset="mnist").store == "runs/mnist-cnn.zarr"
    assert TrainConfig(store=None).store is None


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"epochs": 0}, "'epochs' is invalid"),
        ({"lr": "0.1"}, "expected: a float > 0"),
        ({"optimizer": "rmsprop"}, "'adam' or 'sgd'"),
        ({"options": {"csv": 1}}, "'options' is invalid"),
        ({"device": "gpu0"}, "a torch device name"),
        ({"epoch": 3}, "did you mean 'epochs'"),
        ({"amp": "fp8"}, "'off', 'bf16' or 'fp16'"),
        ({"log_every": 0}, "'log_every' is invalid"),
        ({"compile": ""}, "a torch.compile backend name"),
    ],
)
def test_invalid_settings_name_the_field(settings, match):
    with pytest.raises(infoshape.ConfigError, match=match):
        TrainConfig.from_mapping(settings)


def test_lists_and_ints_are_normalised():
    config = TrainConfig(plugins=["csv"], taps="relu1", lr=1)
    assert config.plugins == ("csv",) and config.taps == ("relu1",) and config.lr == 1.0


def test_dataset_needing_a_root_without_one():
    with pytest.raises(infoshape.DatasetNotFoundError, match="needs its files") as info:
        train(TrainConfig(dataset="mnist", store=None))
    assert "data_root=DIR" in str(info.value) and "--data-root" not in str(info.value)


def test_unknown_model_and_plugin_fail_before_training(tmp_path):
    with pytest.raises(infoshape.UnknownNameError, match="unknown model 'nope'"):
        train(TrainConfig(model="nope", store=None))
    with pytest.raises(infoshape.PluginLoadError, match="'nope': is not installed"):
        train(TrainConfig(plugins=("nope",), store=tmp_path / "x.zarr"))


def _quick(tmp_path, **settings):
    return train(
        TrainConfig(
            epochs=1,
            store=tmp_path / f"{len(list(tmp_path.iterdir()))}.zarr",
            probe=False,
            progress=False,
            model_options={"hidden": [32]},
            **settings,
        )
    )


def test_device_auto_runs_on_this_machine_and_records_the_device(tmp_path):
    result = _quick(tmp_path)
    assert TrainConfig().device == "auto"
    assert infoshape.open_store(result.store).attrs["config"]["device"] == "cpu"  # no CUDA here


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_close_to_float32_with_finite_losses(tmp_path, amp):
    exact = _quick(tmp_path, plugins=("cr",))
    mixed = _quick(tmp_path, plugins=("cr",), amp=amp)
    losses = infoshape.open_store(mixed.store)["metrics"]["loss"].values
    assert np.isfinite(losses).all()
    # one epoch of 1437 digits in half precision: the end point moves a little
    assert mixed.test_loss == pytest.approx(exact.test_loss, rel=0.05)


def test_compiled_training_matches_eager_and_log_every_keeps_every_step(tmp_path):
    eager = _quick(tmp_path, plugins=("cr",))
    compiled = _quick(tmp_path, plugins=("cr",), compile="aot_eager", log_every=7)
    loss = [infoshape.open_store(r.store)["metrics"]["loss"].values for r in (eager, compiled)]
    assert len(loss[1]) == len(loss[0]) == 23  # ceil(1437 / 64) steps, each its own row
    np.testing.assert_allclose(loss[1], loss[0], rtol=1e-4)
