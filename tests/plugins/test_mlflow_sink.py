"""The ``mlflow`` sink plugin: an ``infoshape train`` run read back with ``MlflowClient``."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import infoshape
from infoshape.errors import PluginError

mlflow = pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

FLAGS = ["--epochs", "2", "--lr", "0.01", "--seed", "3", "--tap", "fc1", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("mlflow")
    uri = (work / "tracking").as_uri()
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    args = ["train", *FLAGS, "--store", "run.zarr", "--plugin", "mlflow"]
    args += ["--option", f'mlflow.tracking_uri="{uri}"', "--option", 'mlflow.experiment="exp"']
    done = subprocess.run(
        [sys.executable, "-m", "infoshape", *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("exp")
    (found,) = client.search_runs([experiment.experiment_id])
    return work, client, found


def _history(client, run_id, key) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def test_every_metric_equals_the_store(run):
    work, client, found = run
    metrics = infoshape.open_store(work / "run.zarr")["metrics"].to_dataset()
    logged = set(found.data.metrics)
    compared = 0
    for name, variable in metrics.data_vars.items():
        if variable.ndim != 1 or variable.dims[0] not in ("step", "epoch"):
            continue
        dim = variable.dims[0]
        key = name if dim == "step" else f"epoch/{name}"
        values = variable.values.astype(np.float64)
        index = metrics[dim].values
        expected = {
            int(i): float(v) for i, v in zip(index, values, strict=True) if math.isfinite(v)
        }
        if not expected:
            continue
        assert key in logged, f"{key} not in the MLflow run"
        got = _history(client, found.info.run_id, key)
        assert got.keys() == expected.keys(), key
        np.testing.assert_allclose(
            [got[i] for i in sorted(got)], [expected[i] for i in sorted(expected)], rtol=1e-6
        )
        compared += 1
    assert compared >= 5  # loss, loss.objective, and epoch metrics at least
    assert {"loss", "epoch/test.accuracy"} <= logged


def test_manifest_and_artifacts(run):
    work, client, found = run
    attrs = infoshape.open_store(work / "run.zarr").attrs
    assert found.data.tags["infoshape.run_id"] == attrs["run_id"]
    assert found.data.tags["infoshape.store"].endswith("run.zarr")
    assert found.data.params["seed"] == "3"
    assert found.info.status == "FINISHED"
    paths = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert "infoshape_store.txt" in paths
    report = {a.path for a in client.list_artifacts(found.info.run_id, "report")}
    assert "report/metrics.png" in report


def test_without_mlflow_enabling_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    with pytest.raises(PluginError, match=r'pip install "infoshape\[mlflow\]"'):
        infoshape.Session(torch.nn.Linear(2, 2), plugins=["mlflow"])


def test_an_active_run_is_used_and_left_open(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "tracking").as_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run() as active:
            session = infoshape.Session(torch.nn.Linear(2, 2), plugins=["mlflow"], seed=1)
            session.log_metrics({"x": 2.5}, stage="step")
            session.step_end()
            session.close()
            assert mlflow.active_run().info.run_id == active.info.run_id
        client = MlflowClient(tracking_uri=uri)
        assert _history(client, active.info.run_id, "x") == {0: 2.5}
    finally:
        mlflow.set_tracking_uri(None)
