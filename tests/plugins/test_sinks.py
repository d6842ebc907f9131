"""The csv and tensorboard plugins: rows and event files hold every emitted scalar."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import infoshape
from infoshape.plugins.sinks import CSVSink
from infoshape.testing import PluginTester


def _train(session, batch, steps=2):
    x, y = batch
    opt = torch.optim.SGD(session.model.parameters(), lr=0.1)
    for _ in range(steps):
        loss = session.loss(session.model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        session.step_end()
    session.log_metrics({"custom.accuracy": 0.75, "custom.hist": np.arange(4.0)}, stage="epoch")
    return session.epoch_end(probe=(x, y))


def test_csv_rows_are_long_format_and_skip_arrays(tmp_path, mlp, batch):
    path = tmp_path / "out" / "metrics.csv"
    with infoshape.Session(mlp, plugins=["csv"], options={"csv": {"path": str(path)}}) as s:
        _train(s, batch)
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["stage", "index", "name", "value"]
    body = [(stage, int(index), name, float(value)) for stage, index, name, value in rows[1:]]
    steps = [r for r in body if r[0] == "step" and r[2] == "loss"]
    assert [r[1] for r in steps] == [0, 1]
    assert all(np.isfinite(r[3]) and r[3] > 0 for r in steps)
    assert ("epoch", 0, "custom.accuracy", 0.75) in body
    assert not any(r[2] == "custom.hist" for r in body)  # arrays go to the store, not the CSV


def test_csv_append_keeps_earlier_rows(tmp_path):
    path = tmp_path / "m.csv"
    first = CSVSink(path)
    first.write("epoch", 0, {"a": 1.0})
    first.close()
    second = CSVSink(path, append=True)
    second.write("epoch", 1, {"a": 2.0})
    second.close()
    lines = path.read_text().splitlines()
    assert lines == ["stage,index,name,value", "epoch,0,a,1.0", "epoch,1,a,2.0"]


def test_csv_default_path_is_beside_the_store(tmp_path, mlp, batch):
    store = tmp_path / "run.zarr"
    with infoshape.Session(mlp, plugins=["csv"], store=store) as s:
        _train(s, batch, steps=1)
    assert (tmp_path / "run.metrics.csv").is_file()


def test_tensorboard_event_files_hold_the_scalars(tmp_path, mlp, batch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = tmp_path / "tb"
    options = {"tensorboard": {"log_dir": str(log_dir)}}
    with infoshape.Session(mlp, plugins=["tensorboard"], options=options) as s:
        _train(s, batch)
    events = list(log_dir.glob("events.out.tfevents.*"))
    assert events, "no event file written"
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "loss" in tags["scalars"] and "epoch/custom/accuracy" in tags["scalars"]
    assert [e.step for e in acc.Scalars("loss")] == [0, 1]
    assert acc.Scalars("epoch/custom/accuracy")[0].value == pytest.approx(0.75)
    assert "epoch/custom/hist" in tags["histograms"]


@pytest.mark.parametrize("name", ["csv", "tensorboard"])
def test_sink_plugins_pass_the_conformance_checks(name):
    PluginTester(name).check_all()
