"""Faults with real processes and files: SIGKILL, a full disk, a failing plugin, NaN penalties."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import zarr.storage._local as zarr_local

import infoshape
from infoshape import Penalty, Tap

STREAM_CHILD = textwrap.dedent(
    """
    import sys
    import torch
    import infoshape

    g = torch.Generator().manual_seed(5)
    x, w0 = torch.randn(16, 12, generator=g), torch.randn(64, 12, generator=g)
    b = torch.randn(64, generator=g)
    model = torch.nn.Sequential()
    model.add_module("hidden", torch.nn.Linear(12, 64))
    model.add_module("out", torch.nn.Linear(64, 3))
    tap = infoshape.Tap("hidden", store="stream")
    with infoshape.Session(model, store=sys.argv[1], taps=[tap]) as s:
        for step in range(100000):
            with torch.no_grad():  # the hidden output at step k is x @ ((k+1) w0).T + b
                model.hidden.weight.copy_((step + 1) * w0)
                model.hidden.bias.copy_(b)
            s.loss(s.model(x), torch.arange(16) % 3, index=torch.arange(16)).backward()
            s.step_end()
            if step % 10 == 9:
                s.flush()
                print("FLUSHED", step, flush=True)
    """
)


def test_sigkill_while_streaming_leaves_committed_steps_intact(tmp_path):
    path = tmp_path / "stream.zarr"
    child = subprocess.Popen(
        [sys.executable, "-c", STREAM_CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    flushed = []
    try:
        while len(flushed) < 3:  # then kill it in the middle of later writes
            line = child.stdout.readline()
            assert line, f"child ended early with {child.wait()}"
            flushed.append(int(line.split()[1]))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    tree = infoshape.open_store(path)
    assert tree.attrs["status"] == "running"
    stream = tree["stream"].to_dataset()
    steps = stream["step"].values
    assert len(steps) >= flushed[-1] + 1  # everything flushed is committed
    np.testing.assert_array_equal(steps, np.arange(len(steps)))
    g = torch.Generator().manual_seed(5)
    x, w0, b = (
        torch.randn(16, 12, generator=g),
        torch.randn(64, 12, generator=g),
        torch.randn(64, generator=g),
    )
    hidden = stream["hidden"].values
    for k in steps:
        np.testing.assert_allclose(hidden[k], (x @ ((k + 1) * w0).T + b).numpy(), rtol=1e-5)
    np.testing.assert_array_equal(
        stream["label"].values, np.tile(np.arange(16) % 3, (len(steps), 1))
    )
    metrics = tree["metrics"].to_dataset()
    assert set(flushed) <= set(metrics["step"].values.tolist())


@pytest.fixture
def disk_quota(monkeypatch):
    """A file system that fills up: zarr's file writes raise ENOSPC past ``quota`` bytes."""
    state = {"quota": None, "used": 0}
    put = zarr_local._put

    def limited(path, value, exclusive=False):
        size = len(value.as_buffer_like())
        if state["quota"] is not None and state["used"] + size > state["quota"]:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        state["used"] += size
        return put(path, value, exclusive=exclusive)

    monkeypatch.setattr(zarr_local, "_put", limited)

    def fill_after(n_bytes: int) -> None:
        state["quota"], state["used"] = n_bytes, 0

    return fill_after


def test_disk_full_stops_the_run_with_path_and_free_space(tmp_path, mlp, batch, disk_quota):
    x, y = batch
    path = tmp_path / "full.zarr"
    tap = Tap("fc1", store=True)
    epochs_done = 0
    with pytest.raises(infoshape.StoreWriteError) as info:
        with infoshape.Session(mlp, store=path, taps=[tap]) as s:
            for epoch in range(50):
                s.loss(s.model(x), y).backward()
                s.step_end()
                s.epoch_end(probe=(x, y))
                s.flush()
                epochs_done = epoch + 1
                if epoch == 1:
                    disk_quota(3000)  # room for a little more, then the disk is full
    message = str(info.value)
    assert f"writing the store {path} failed" in message
    assert "No space left on device" in message and "MiB free on the file system of" in message
    assert "every epoch/step written before the failure is committed" in message
    assert s.closed and not any(m._forward_hooks for m in mlp.modules())
    disk_quota(None)
    probe = infoshape.open_store(path)["probe"].to_dataset()  # consistent: it opens
    stored = probe["epoch"].values
    assert epochs_done <= len(stored) <= epochs_done + 1
    np.testing.assert_array_equal(stored, np.arange(len(stored)))
    assert np.isfinite(probe["fc1"].values).all()


class _FailsAtStep:
    name = "fails_at_step"

    @infoshape.hookimpl
    def infoshape_penalty(self, session, captures):
        if session.step == 2:
            raise RuntimeError("estimator diverged")
        return [Penalty("ok", captures["fc1"].pow(2).mean(), 0.1)]

    @infoshape.hookimpl
    def infoshape_taps(self):
        return [Tap("fc1", store=True)]


def test_plugin_raising_in_a_hook_closes_the_session(tmp_path, mlp, batch):
    x, y = batch
    s = infoshape.Session(mlp, plugins=[_FailsAtStep], store=tmp_path / "a.zarr")
    s.epoch_end(probe=(x, y))
    with pytest.raises(infoshape.PluginHookError) as info:
        for _ in range(5):  # a user loop without `with`
            s.loss(s.model(x), y).backward()
            s.step_end()
    message = str(info.value)
    assert "plugin 'fails_at_step' in hook infoshape_penalty" in message
    assert "raised RuntimeError: estimator diverged" in message
    assert "got: RuntimeError at step 2, epoch 1" in message
    assert "the session is closed, its store marked failed" in message
    assert s.closed
    assert not any(m._forward_hooks for m in mlp.modules())
    tree = infoshape.open_store(tmp_path / "a.zarr")
    assert tree.attrs["status"] == "failed"
    assert list(tree["probe"]["epoch"].values) == [0]


class _NaNAtStep:
    name = "nan_at_step"

    @infoshape.hookimpl
    def infoshape_penalty(self, session, outputs):
        value = outputs.pow(2).mean()
        return [Penalty("square", value * float("nan") if session.step == 1 else value, 0.5)]


def test_nan_penalty_stops_with_step_and_plugin(mlp, batch):
    x, y = batch
    with infoshape.Session(mlp, plugins=[_NaNAtStep], check_every=1) as s:
        s.loss(s.model(x), y)
        s.step_end()
        with pytest.raises(infoshape.NonFiniteError) as info:
            s.loss(s.model(x), y)
    message = str(info.value)
    assert "the loss is not finite at step 1 (penalty.square of plugin 'nan_at_step')" in message
    assert "got: penalty.square=nan" in message and "on_nonfinite='skip'" in message


def test_nan_penalty_skipped_by_option(tmp_path, mlp, batch):
    x, y = batch
    path = tmp_path / "a.zarr"
    with infoshape.Session(mlp, plugins=[_NaNAtStep], on_nonfinite="skip", store=path) as s:
        losses = []
        for _ in range(3):
            if s.step == 1:
                with pytest.warns(RuntimeWarning, match="step 1: left penalty.square of plugin"):
                    loss = s.loss(s.model(x), y)
            else:
                loss = s.loss(s.model(x), y)
            loss.backward()
            losses.append(loss.detach())
            s.step_end()
    assert all(torch.isfinite(v) for v in losses)
    with torch.no_grad():
        objective = torch.nn.functional.cross_entropy(mlp(x), y)
    torch.testing.assert_close(losses[1], objective)  # step 1: the objective alone
    metrics = infoshape.open_store(path)["metrics"].to_dataset()
    np.testing.assert_array_equal(metrics["nonfinite.skipped"].values, [0.0, 1.0, 0.0])


def test_nan_objective_raises_even_when_skipping(mlp, batch):
    x, y = batch
    with infoshape.Session(mlp, on_nonfinite="skip") as s:
        logits = s.model(x)
        with pytest.raises(infoshape.NonFiniteError, match=r"at step 0 \(the objective"):
            s.loss(logits * float("inf"), y)


class _BrokenSink:
    """A metric sink whose ``write`` raises at the second epoch's row."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int]] = []

    def write(self, stage, index, metrics):
        if stage == "epoch" and index == 1:
            raise OSError("the tracking server went away")
        self.rows.append((stage, index))

    def close(self):
        pass


class _SinkPlugin:
    name = "broken_sink"

    def __init__(self) -> None:
        self.sink = _BrokenSink()

    @infoshape.hookimpl
    def infoshape_sinks(self):
        return [self.sink]


def _run_epochs(s, x, y, epochs=3):
    for _ in range(epochs):
        s.loss(s.model(x), y).backward()
        s.step_end()
        s.log_metrics({"accuracy": 0.5}, stage="epoch")
        s.epoch_end(probe=(x, y))


def test_a_sink_raising_mid_run_names_plugin_and_hook_and_keeps_the_store(tmp_path, mlp, batch):
    x, y = batch
    plugin = _SinkPlugin()
    with pytest.raises(infoshape.PluginHookError) as info:
        with infoshape.Session(
            mlp, [plugin], store=tmp_path / "a.zarr", taps=[Tap("fc1", store=True)], log_every=1
        ) as s:
            _run_epochs(s, x, y)
    message = str(info.value)
    assert "plugin 'broken_sink' in hook infoshape_sinks" in message
    assert "_BrokenSink.write raised OSError: the tracking server went away" in message
    assert "writing the epoch row 1" in message and "disable 'broken_sink'" in message
    assert isinstance(info.value.__cause__, OSError)
    assert s.closed and not any(m._forward_hooks for m in mlp.modules())
    assert ("epoch", 0) in plugin.sink.rows
    tree = infoshape.open_store(tmp_path / "a.zarr")
    assert tree.attrs["status"] == "failed"
    # the store keeps what it was given before the sink failed: epoch 1's row went to the
    # store first, then to the sink; epoch 2 never ran
    assert list(tree["probe"]["epoch"].values) == [0, 1]
    metrics = tree["metrics"].to_dataset()
    assert list(metrics["epoch"].values) == [0, 1]
    np.testing.assert_array_equal(metrics["accuracy"].values, [0.5, 0.5])


def test_a_user_sink_raising_is_named_too(mlp, batch):
    x, y = batch
    with pytest.raises(infoshape.PluginHookError) as info:
        with infoshape.Session(mlp, sinks=[_BrokenSink()], log_every=1) as s:
            _run_epochs(s, x, y)
    assert "plugin '_BrokenSink' in hook Session(sinks=...)" in str(info.value)
    assert "fix or remove the sink" in str(info.value)
