"""Resumable runs: kill a real `infoshape train` process, resume it, compare with a clean run.

The ``killer`` test plugin (installed as a real distribution with an entry point)
counts the steps it has seen (resumable plugin state, emitted as the metric
``killer.seen``) and, once, flushes the store and SIGKILLs its own process at a
chosen step or epoch end, so the store holds rows past the last checkpoint that
the resume must drop. The resumed store must then equal, value for value, the
store of a run that was never interrupted.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import infoshape
from infoshape.apps.cli import main
from infoshape.apps.trainer import TrainConfig, train
from infoshape.store import RunStore
from infoshape.store.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint

KILLER = '''
    """A test plugin: counts steps; SIGKILLs its process once at a chosen point."""
    import os
    import signal
    from pathlib import Path

    import attrs

    from infoshape import hookimpl


    class Killer:
        name = "killer"

        @attrs.frozen(kw_only=True)
        class Config:
            step: int = -1
            epoch: int = -1
            marker: str = ""

        def __init__(self):
            self.seen = 0
            self.config = self.Config()

        @hookimpl
        def infoshape_configure(self, config):
            self.config = config

        @hookimpl
        def infoshape_metrics(self, stage):
            return {"killer.seen": float(self.seen)} if stage == "step" else {}

        @hookimpl
        def infoshape_step_end(self, session, step):
            self.seen += 1
            if step == self.config.step:
                self._kill(session)

        @hookimpl
        def infoshape_epoch_end(self, session, epoch):
            if epoch == self.config.epoch:
                self._kill(session)

        def _kill(self, session):
            marker = Path(self.config.marker)
            if marker.exists():
                return
            marker.touch()
            session.flush()  # the store now holds rows past the last checkpoint
            os.kill(os.getpid(), signal.SIGKILL)

        @hookimpl
        def infoshape_state_dict(self):
            return {"seen": self.seen}

        @hookimpl
        def infoshape_load_state_dict(self, state):
            self.seen = int(state["seen"])
'''

ARGS = ["--epochs", "3", "--batch-size", "128", "--probe-size", "40", "--no-progress"]
STEPS_PER_EPOCH = 12  # ceil(1437 / 128)


@pytest.fixture(scope="module")
def killer_site(tmp_path_factory):
    """A real installed distribution with the ``killer`` entry point, on sys.path."""
    site = tmp_path_factory.mktemp("site")
    info = site / "killer_dist-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: killer-dist\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[infoshape.plugins]\nkiller = killer_plugin:Killer\n")
    (site / "killer_plugin.py").write_text(textwrap.dedent(KILLER))
    sys.path.insert(0, str(site))
    yield site
    sys.path.remove(str(site))
    sys.modules.pop("killer_plugin", None)


@pytest.fixture(scope="module")
def reference(killer_site, tmp_path_factory):
    """The store of the same run, never interrupted."""
    folder = tmp_path_factory.mktemp("reference")
    (folder / "marker").touch()  # the killer never fires
    config = TrainConfig(
        epochs=3,
        batch_size=128,
        probe_size=40,
        progress=False,
        plugins=("killer",),
        options={"killer": {"step": 16, "marker": str(folder / "marker")}},
        store=str(folder / "ref.zarr"),
    )
    train(config)
    return infoshape.open_store(folder / "ref.zarr")


@pytest.mark.parametrize(
    ("where", "resumes_at"),
    # mid epoch 1; at the end of epoch 1, before its checkpoint is written
    [("step=16", 1), ("epoch=1", 1)],
)
def test_kill_and_resume_stores_every_epoch_once(
    killer_site, reference, tmp_path, where, resumes_at
):
    store = tmp_path / "run.zarr"
    marker = f"killer.marker={tmp_path / 'marker'}"
    option = ["--plugin", "killer", "--option", f"killer.{where}", "--option", marker]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(killer_site), *sys.path])}
    # the child computes epoch 0, this process the rest and the reference: bitwise equal only
    # with the same number of threads (reductions split differently), whatever tests ran before
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(torch.get_num_threads())
    child = subprocess.run(
        [sys.executable, "-m", "infoshape", "train", *ARGS, "--store", str(store), *option],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -9, child.stderr  # SIGKILL

    killed = infoshape.open_store(store)  # a killed store opens
    assert killed.attrs["status"] == "running"
    checkpoint = load_checkpoint(checkpoint_path(store))
    assert checkpoint["session"]["epoch"] == resumes_at
    assert checkpoint["session"]["plugins"] == {"killer": {"seen": resumes_at * STEPS_PER_EPOCH}}
    # the flushed store runs past the checkpoint: those rows must be dropped on resume
    assert killed["metrics"]["step"].size > resumes_at * STEPS_PER_EPOCH

    assert main(["train", "--resume", str(store)]) == 0

    resumed = infoshape.open_store(store)
    assert resumed.attrs["status"] == "complete"
    assert resumed.attrs["run_id"] == killed.attrs["run_id"]
    assert [r["epoch"] for r in resumed.attrs["resumed"]] == [resumes_at]
    metrics, expected = resumed["metrics"].to_dataset(), reference["metrics"].to_dataset()
    np.testing.assert_array_equal(metrics["epoch"].values, [0, 1, 2])  # each epoch once
    np.testing.assert_array_equal(metrics["step"].values, np.arange(3 * STEPS_PER_EPOCH))
    # plugin state continued across the resume: it saw every step exactly once
    np.testing.assert_array_equal(metrics["killer.seen"].values, np.arange(3 * STEPS_PER_EPOCH))
    # metrics continuous: the same numbers as the run that was never killed
    for name in ("loss", "loss.objective", "test.accuracy", "train.loss"):
        np.testing.assert_array_equal(metrics[name].values, expected[name].values)
    probe, probe_expected = resumed["probe"].to_dataset(), reference["probe"].to_dataset()
    np.testing.assert_array_equal(probe["epoch"].values, [0, 1, 2])
    for name in probe_expected.data_vars:
        np.testing.assert_array_equal(probe[name].values, probe_expected[name].values)


def test_sigint_keeps_the_complete_epochs_and_says_how_to_resume(tmp_path):
    store = tmp_path / "run.zarr"
    args = [*ARGS[2:], "--epochs", "50", "--seed", "1", "--store", str(store)]
    child = subprocess.Popen(
        [sys.executable, "-m", "infoshape.cli", "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not checkpoint_path(store).exists() and child.poll() is None:  # epoch 0 committed
        assert time.monotonic() < deadline, "no epoch was committed in time"
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)

    assert child.returncode == 130 and "Traceback" not in err, err
    found = re.search(
        r"interrupted in epoch (\d+) of 50; (\d+) complete epochs? (is|are) kept", err
    )
    assert found is not None, err
    kept = int(found[2])
    assert kept >= 1 and int(found[1]) == kept + 1
    assert f"--resume {store}" in err
    interrupted = infoshape.open_store(store)
    assert interrupted.attrs["status"] == "interrupted"
    assert interrupted["metrics"]["epoch"].size >= kept
    assert load_checkpoint(checkpoint_path(store))["session"]["epoch"] == kept

    assert main(["train", "--resume", str(store), "--epochs", str(kept + 1)]) == 0
    resumed = infoshape.open_store(store)
    assert resumed.attrs["status"] == "complete"
    np.testing.assert_array_equal(resumed["metrics"]["epoch"].values, np.arange(kept + 1))


def _metric_store(path, epochs, steps_per_epoch=4):
    """A store whose metrics ``value`` equals ``10 * epoch + k`` at step ``steps_per_epoch*e+k``."""
    with infoshape.Session(torch.nn.Linear(2, 2), store=path) as s:
        for epoch in range(epochs):
            for k in range(steps_per_epoch):
                s.store.write("step", epoch * steps_per_epoch + k, {"value": 10 * epoch + k})
            s.store.write("epoch", epoch, {"epoch.value": float(epoch)})
        return s.state_dict()


def test_reopen_drops_rows_after_the_cut_and_never_shows_stale_values(tmp_path):
    path = tmp_path / "r.zarr"
    run_id = _metric_store(path, epochs=5)["run_id"]
    store = RunStore(path, manifest={}, resume={"epoch": 2, "step": 8, "run_id": run_id})
    store.write("step", 8, {"other": 1.0})  # a metric row without "value"
    store.write("epoch", 2, {"epoch.value": 20.0})
    store.close()
    metrics = infoshape.open_store(path)["metrics"].to_dataset()
    np.testing.assert_array_equal(metrics["step"].values, np.arange(9))
    np.testing.assert_array_equal(metrics["value"].values[:8], [0, 1, 2, 3, 10, 11, 12, 13])
    assert np.isnan(metrics["value"].values[8])  # the old step-8 value (20) is gone
    np.testing.assert_array_equal(metrics["epoch.value"].values, [0.0, 1.0, 20.0])


def test_resume_refuses_the_store_of_another_run(tmp_path):
    _metric_store(tmp_path / "a.zarr", epochs=1)
    with pytest.raises(infoshape.StoreError) as info:
        RunStore(tmp_path / "a.zarr", manifest={}, resume={"epoch": 1, "step": 4, "run_id": "x"})
    message = str(info.value)
    assert "belongs to another run" in message and "expected: run_id 'x'" in message


def test_session_resume_restores_counters_and_plugin_state(tmp_path):
    class Counter:
        name = "counter"

        def __init__(self):
            self.n = 0

        @infoshape.hookimpl
        def infoshape_step_end(self):
            self.n += 1

        @infoshape.hookimpl
        def infoshape_state_dict(self):
            return {"n": self.n}

        @infoshape.hookimpl
        def infoshape_load_state_dict(self, state):
            self.n = state["n"]

    model = torch.nn.Linear(2, 2)
    first = Counter()
    with infoshape.Session(model, plugins=[first], store=tmp_path / "a.zarr") as s:
        for _ in range(3):
            s.step_end()
        s.epoch_end()
        state = s.state_dict()
    second = Counter()
    with infoshape.Session(model, plugins=[second], store=tmp_path / "a.zarr", resume=state) as s:
        assert (s.step, s.epoch, second.n) == (3, 1, 3)


def test_checkpoint_write_failure_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "a.zarr.checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})

    def disk_full(obj, file):
        file.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(infoshape.StoreWriteError) as info:
        save_checkpoint(path, {"epoch": 2})
    message = str(info.value)
    assert f"cannot write the checkpoint {path}" in message and "MiB free on" in message
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left


def test_cli_resume_refuses_changed_settings_unless_overwrite(tmp_path, capsys):
    store = tmp_path / "a.zarr"
    common = ["--epochs", "1", "--batch-size", "256", "--probe-size", "20", "--no-progress"]
    assert main(["train", *common, "--store", str(store)]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(store), "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "the settings differ from those of the run in" in err
    assert "expected: lr=0.001" in err and "got: lr=0.1" in err and "--overwrite" in err
    old_id = infoshape.open_store(store).attrs["run_id"]
    assert main(["train", "--resume", str(store), "--lr", "0.1", "--overwrite"]) == 0
    tree = infoshape.open_store(store)
    assert tree.attrs["run_id"] != old_id and tree.attrs["config"]["lr"] == 0.1
    assert "resumed" not in tree.attrs


def test_cli_resume_without_checkpoint(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "none.zarr")]) == 2
    err = capsys.readouterr().err
    assert f"no checkpoint at {tmp_path / 'none.zarr.checkpoint.pt'}" in err
    assert "--overwrite" in err


def test_resumed_finished_run_trains_longer(tmp_path):
    store = tmp_path / "a.zarr"
    common = ["--batch-size", "256", "--probe-size", "20", "--no-progress"]
    assert main(["train", *common, "--epochs", "1", "--store", str(store)]) == 0
    assert main(["train", "--resume", str(store), "--epochs", "2"]) == 0
    metrics = infoshape.open_store(store)["metrics"].to_dataset()
    np.testing.assert_array_equal(metrics["epoch"].values, [0, 1])
    np.testing.assert_array_equal(metrics["step"].values, np.arange(12))  # ceil(1437/256)=6


def test_checkpoint_path_is_beside_the_store():
    assert checkpoint_path("runs/a.zarr") == Path("runs/a.zarr.checkpoint.pt")


def test_ctrl_c_waits_until_the_checkpoint_and_the_kept_epochs_agree():
    """The trainer's race: SIGINT right after the checkpoint but before ``kept`` was updated."""
    from infoshape.apps.resume import deferred_interrupt

    kept = 0
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)  # "the checkpoint of epoch 1 is written"
            time.sleep(0.05)  # the handler ran (Python runs it between bytecodes)
            kept = 1  # still reached: the interrupt waits for the block's end
    assert kept == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    with deferred_interrupt():  # no signal: nothing raised
        kept = 2
    assert kept == 2
