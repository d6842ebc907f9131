"""The zarr run store: layout, xarray compatibility, crash safety, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

import infoshape
from infoshape import Probe, StoreError, StoreWriteError, Stream, Tap
from infoshape.store import RunStore

HERE = Path(__file__).parent


def _train(model, store, x, y, epochs=2, steps=3, taps=(), **kwargs):
    with infoshape.Session(model, store=store, taps=taps, seed=7, **kwargs) as s:
        for _ in range(epochs):
            for i in range(steps):
                s.loss(s.model(x[i * 8 : i * 8 + 8]), y[i * 8 : i * 8 + 8]).backward()
                s.step_end()
            s.log_metrics({"test.accuracy": 0.5 + s.epoch}, stage="epoch")
            s.epoch_end(probe=Probe(x=x, y=y, sample=np.arange(100, 132), split="test"))
    return s


def test_probe_store_schema_and_values(tmp_path, mlp, batch):
    x, y = batch
    path = tmp_path / "run.zarr"
    _train(mlp, path, x, y, taps=[Tap("relu1", store=True), Tap("fc2", point="pre", store=True)])
    tree = xr.open_datatree(path, engine="zarr")  # plain xarray, no infoshape involved
    probe = tree["probe"].to_dataset()
    assert probe["relu1"].dims == ("epoch", "sample", "relu1_unit")
    assert probe["fc2_pre"].dims == ("epoch", "sample", "fc2_pre_unit")
    assert list(probe["epoch"].values) == [0, 1]
    assert list(probe["sample"].values) == list(range(100, 132))
    np.testing.assert_array_equal(probe["label"].values, y.numpy())
    assert set(probe["split"].values) == {"test"}
    assert probe["relu1"].attrs["tap_module"] == "relu1"
    assert probe["fc2_pre"].attrs["tap_point"] == "pre"
    with torch.no_grad():  # the model after training = the last epoch's probe pass
        expected = torch.relu(mlp.fc1(x)).numpy()
    np.testing.assert_allclose(probe["relu1"].sel(epoch=1).values, expected, rtol=1e-6)
    # relu1 is the input of fc2: both taps hold the same numbers
    np.testing.assert_array_equal(probe["relu1"].values, probe["fc2_pre"].values)
    # the probe inputs X are stored once, for I(X;T)
    np.testing.assert_array_equal(probe["input"].values, x.numpy())
    assert probe["input"].dims == ("sample", "input_unit")
    # the plain zarr group opens with xarray too
    assert xr.open_zarr(path, group="probe")["relu1"].shape == (2, 32, 16)


def test_metrics_manifest_and_open_store(tmp_path, mlp, batch):
    x, y = batch
    path = tmp_path / "run.zarr"
    _train(mlp, path, x, y, epochs=3, steps=2, run_config={"lr": 0.1})
    tree = infoshape.open_store(path)
    metrics = tree["metrics"].to_dataset()
    assert list(metrics["step"].values) == list(range(6))
    assert list(metrics["epoch"].values) == [0, 1, 2]
    assert metrics["loss"].dims == ("step",)
    np.testing.assert_allclose(metrics["test.accuracy"].values, [0.5, 1.5, 2.5])
    assert np.isfinite(metrics["loss"].values).all()
    attrs = tree.attrs
    assert attrs["status"] == "complete" and attrs["seed"] == 7
    assert attrs["config"] == {"lr": 0.1}
    assert attrs["versions"]["torch"] == torch.__version__
    assert attrs["versions"]["zarr"] == zarr.__version__
    assert set(tree.children) == {"probe", "stream", "metrics", "analysis"}


def test_stream_mode_pads_and_keeps_labels(tmp_path, mlp):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(20, 8, generator=g), torch.randint(0, 3, (20,), generator=g)
    path = tmp_path / "run.zarr"
    tap = Tap("relu2", store=Stream(every=2, dtype="float16"))
    with infoshape.Session(mlp, store=path, taps=[tap]) as s:
        for step, (lo, hi) in enumerate([(0, 8), (8, 16), (16, 20)]):
            s.loss(s.model(x[lo:hi]), y[lo:hi], index=torch.arange(lo, hi))
            s.step_end()
            assert s.step == step + 1
    stream = infoshape.open_store(path)["stream"].to_dataset()
    assert list(stream["step"].values) == [0, 2]  # every second step
    assert stream["relu2"].dims == ("step", "sample", "relu2_unit")
    assert stream["relu2"].dtype == np.float16
    np.testing.assert_array_equal(stream["label"].values[1], [*y[16:20].tolist(), -1, -1, -1, -1])
    np.testing.assert_array_equal(stream["sample_index"].values[0], np.arange(8))
    assert np.isnan(stream["relu2"].values[1, 4:]).all()
    with torch.no_grad():
        expected = mlp.relu2(mlp.fc2(mlp.relu1(mlp.fc1(x[16:20])))).half().numpy()
    np.testing.assert_array_equal(stream["relu2"].values[1, :4], expected)


def test_existing_store_is_refused_unless_overwrite(tmp_path, mlp):
    path = tmp_path / "run.zarr"
    infoshape.Session(mlp, store=path).close()
    with pytest.raises(StoreError) as info:
        infoshape.Session(mlp, store=path)
    message = str(info.value)
    assert "a store already exists" in message and "overwrite=True" in message
    assert "resume=" in message and "--" not in message  # or continue the run, in Python
    checkpoint = tmp_path / "run.zarr.checkpoint.pt"
    checkpoint.write_bytes(b"the old run's checkpoint")
    infoshape.Session(mlp, store=path, overwrite=True).close()
    assert not checkpoint.exists()  # the replaced run's own sibling goes with it


def test_overwrite_refuses_a_folder_infoshape_did_not_write(tmp_path, mlp):
    folder = tmp_path / "notzarr"
    folder.mkdir()
    (folder / "precious.txt").write_text("a user's data")
    (folder / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    with pytest.raises(StoreError) as info:
        infoshape.Session(mlp, store=folder, overwrite=True)
    assert "infoshape did not write" in str(info.value) and "precious.txt" in str(info.value)
    assert (folder / "precious.txt").read_text() == "a user's data"
    assert (folder / "zarr.json").exists()  # a zarr group of another program stays too


def test_a_file_at_the_store_path_has_its_own_message(tmp_path, mlp):
    path = tmp_path / "run.zarr"
    path.write_text("not a store")
    for overwrite in (False, True):
        with pytest.raises(StoreError) as info:
            infoshape.Session(mlp, store=path, overwrite=overwrite)
        assert "a file is in the way" in str(info.value)
        assert "already exists" not in str(info.value)
    assert path.read_text() == "not a store"


def test_an_empty_folder_is_taken_as_the_store(tmp_path, mlp):
    (tmp_path / "run.zarr").mkdir()
    infoshape.Session(mlp, store=tmp_path / "run.zarr").close()
    assert infoshape.open_store(tmp_path / "run.zarr").attrs["status"] == "complete"


def test_cli_overwrite_keeps_a_users_folder(tmp_path):
    folder = tmp_path / "runs" / "notzarr"
    folder.mkdir(parents=True)
    (folder / "precious.txt").write_text("a user's data")
    command = [sys.executable, "-m", "infoshape", "train", "--epochs", "1"]
    result = subprocess.run(
        [*command, "--store", str(folder), "--overwrite"], capture_output=True, text=True
    )
    assert result.returncode == 2, result.stderr
    assert "infoshape did not write" in result.stderr and "Traceback" not in result.stderr
    assert (folder / "precious.txt").read_text() == "a user's data"


def test_changed_probe_set_is_refused(tmp_path, mlp, batch):
    x, y = batch
    with infoshape.Session(mlp, store=tmp_path / "r.zarr", taps=[Tap("fc1", store=True)]) as s:
        s.epoch_end(probe=(x, y))
        with pytest.raises(StoreError, match="the probe set changed between epochs"):
            s.epoch_end(probe=(x[:10], y[:10]))


def test_open_store_on_missing_path(tmp_path):
    with pytest.raises(StoreError, match="no infoshape store at"):
        infoshape.open_store(tmp_path / "nothing.zarr")


def test_writer_failure_is_reported_and_committed_rows_survive(tmp_path, monkeypatch):
    store = RunStore(tmp_path / "r.zarr", manifest={}, flush_steps=1)
    store.write("epoch", 0, {"a": 1.0})
    store.flush()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store._epoch_metrics, "append_block", disk_full)
    store.write("epoch", 1, {"a": 2.0})
    with pytest.raises(StoreWriteError) as info:
        store.flush()
    assert "No space left on device" in str(info.value)
    assert "every epoch/step written before the failure is committed" in str(info.value)
    with pytest.raises(StoreWriteError):
        store.close()
    metrics = infoshape.open_store(tmp_path / "r.zarr")["metrics"].to_dataset()
    np.testing.assert_array_equal(metrics["a"].values, [1.0])


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.35])
def test_sigkill_leaves_committed_epochs_readable(tmp_path, delay):
    sys.path.insert(0, str(HERE))
    try:
        from store_writer_child import reference
    finally:
        sys.path.remove(str(HERE))
    path = tmp_path / "killed.zarr"
    child = subprocess.Popen(
        [sys.executable, str(HERE / "store_writer_child.py"), str(path), "10000"],
        stdout=subprocess.PIPE,
        text=True,
    )
    flushed = []
    try:
        while len(flushed) < 3:
            line = child.stdout.readline()
            assert line, f"child ended early with {child.wait()}"
            flushed.append(int(line.split()[1]))
        time.sleep(delay)  # let it get into the middle of later writes
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL

    tree = infoshape.open_store(path)
    assert tree.attrs["status"] == "running"  # it never closed
    probe = tree["probe"].to_dataset()
    epochs = probe["epoch"].values
    assert list(epochs) == list(range(len(epochs)))
    assert set(flushed) <= set(epochs.tolist())
    x, y, w0, b = reference()
    hidden = probe["hidden"].values
    assert np.isfinite(hidden).all()
    for e in epochs:
        expected = (x @ ((e + 1) * w0).T + b).numpy()
        np.testing.assert_allclose(hidden[e], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(probe["label"].values, y.numpy())
    metrics = tree["metrics"].to_dataset()
    assert set(flushed) <= set(metrics["epoch"].values.tolist())
    np.testing.assert_array_equal(metrics["epoch.marker"].values, metrics["epoch"].values)
    assert list(metrics["step"].values) == list(range(len(metrics["step"])))
    assert np.isfinite(metrics["loss"].values).all()


def test_stored_and_streamed_pre_taps_of_an_inplace_module_hold_its_input(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 5), torch.nn.ReLU(inplace=True), torch.nn.Linear(5, 3)
    )
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 3
    tap = Tap("1", point="pre", store="both", name="act_in")
    with infoshape.Session(model, store=tmp_path / "r.zarr", taps=[tap]) as s:
        s.loss(s.model(x), y)  # no optimizer step: the weights stay as they are
        s.step_end()
        s.epoch_end(probe=(x, y))
    with torch.no_grad():
        expected = model[0](x).numpy()
    tree = infoshape.open_store(tmp_path / "r.zarr")
    assert expected.min() < 0
    np.testing.assert_allclose(tree["stream"]["act_in"].values[0], expected, rtol=1e-6)
    np.testing.assert_allclose(tree["probe"]["act_in"].values[0], expected, rtol=1e-6)
