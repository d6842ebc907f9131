"""open_runs: many run stores as one lazy dataset with a ``run`` dimension."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import infoshape
from infoshape.apps.sweep import SweepConfig, run_sweep, summarize
from infoshape.errors import ConfigError, InfoshapeWarning

BASE = {
    "model": "mlp",
    "dataset": "digits",
    "epochs": 1,
    "batch_size": 256,
    "model_options": {"hidden": [8]},
    "probe_size": 40,
    "options": {"characteristics": {"bounds": ["lower"]}},
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A real 12-cell sweep: 2 plugins x 3 coefficients x 2 seeds, one epoch each."""
    out = tmp_path_factory.mktemp("sweep") / "sw"
    grid = {
        "out": str(out),
        "seeds": [0, 1],
        "plugins": ["cr", "l1r"],
        "coefficients": [0.001, 0.01, 0.1],
        "baseline": False,
        "measure": ["characteristics"],
    }
    config = SweepConfig.from_mapping({**BASE, "sweep": grid})
    result = run_sweep(config, progress=False, log=lambda _: None)
    assert result.failed == {} and len(result.ran) == 12
    return out


def test_a_sweep_as_one_dataset_with_run_coordinates(sweep):
    with pytest.warns(InfoshapeWarning, match=r"penalty.cr only in 6 of 12 runs \(cr-0.001-seed0"):
        runs = infoshape.open_runs(sweep)
    assert runs.sizes["run"] == 12
    assert isinstance(runs["test.accuracy"].data, type(runs["loss"].data))  # dask, lazy
    assert runs["loss"].chunks is not None
    assert sorted(set(runs["plugin"].values)) == ["cr", "l1r"]
    assert sorted(set(runs["coefficient"].values)) == [0.001, 0.01, 0.1]
    assert sorted(set(runs["seed"].values)) == [0, 1]
    assert set(runs["model"].values) == {"mlp"} and set(runs["dataset"].values) == {"digits"}
    assert set(runs["status"].values) == {"complete"}
    assert runs["name"].values[0] == "cr-0.001-seed0"

    # the sweep's own summary: test error (%) at the last epoch, mean over seeds per group
    summary = {group: stats for group, _, stats in summarize(sweep).rows}
    for plugin in ("cr", "l1r"):
        error = 100 * (1 - runs["test.accuracy"].sel(plugin=plugin).isel(epoch=-1))
        means = error.groupby("coefficient").mean("run")
        for coefficient, mean in zip(means["coefficient"].values, means.values, strict=True):
            expected = summary[f"{plugin}-{coefficient:g}"]["test_error"][0]
            assert mean == pytest.approx(expected, abs=1e-9)


def test_probe_group_and_a_glob(sweep):
    probe = infoshape.open_runs(str(sweep / "cells" / "cr-*.zarr"), group="probe")
    assert probe["split"].dims == ("sample",)
    assert probe.sizes["run"] == 6 and set(probe["plugin"].values) == {"cr"}
    assert probe["input"].dims[0] == "run"


def _run(store, width, epochs, extra_metric=False):
    model = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))
    x, y = np.random.default_rng(0).normal(size=(16, 4)).astype("float32"), np.arange(16) % 2
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    with infoshape.Session(model, store=store, taps=[infoshape.Tap("0", store=True)], seed=3) as s:
        for _ in range(epochs):
            s.loss(s.model(x), y).backward()
            s.step_end()
            if extra_metric:
                s.log_metrics({"extra": 1.0}, stage="epoch")
            s.epoch_end(probe=(x, y))


def test_different_epochs_align_with_nan_and_warn(tmp_path):
    _run(tmp_path / "a.zarr", 8, 1)
    _run(tmp_path / "b.zarr", 8, 2, extra_metric=True)
    stores = [tmp_path / "a.zarr", tmp_path / "b.zarr"]
    with pytest.warns(InfoshapeWarning, match=r"extra only in 1 of 2 runs \(b.zarr\).*steps"):
        metrics = infoshape.open_runs(stores)
    assert np.isnan(metrics["extra"].isel(run=0)).all()
    with pytest.warns(InfoshapeWarning, match=r"different epochs \(lengths 1, 2\)"):
        runs = infoshape.open_runs(stores, group="probe")
    assert runs.sizes == {**runs.sizes, "run": 2, "epoch": 2}
    assert np.isnan(runs["0"].isel(run=0).sel(epoch=1)).all()
    assert not np.isnan(runs["0"].isel(run=1).sel(epoch=1)).any()
    assert runs["plugin"].values.tolist() == ["none", "none"]
    assert np.isnan(runs["coefficient"].values).all() and runs["seed"].values.tolist() == [3, 3]


def test_incompatible_runs_are_refused_with_the_reason(tmp_path):
    _run(tmp_path / "a.zarr", 8, 1)
    _run(tmp_path / "b.zarr", 16, 1)
    with pytest.raises(ConfigError, match="'0_unit' has another length") as err:
        infoshape.open_runs([tmp_path / "a.zarr", tmp_path / "b.zarr"], group="probe")
    assert "b.zarr" in str(err.value)
    with pytest.raises(ConfigError, match="no runs"):
        infoshape.open_runs(str(tmp_path / "nothing*.zarr"))
    with pytest.raises(ConfigError, match="no group 'nope'"):
        infoshape.open_runs([tmp_path / "a.zarr"], group="nope")


def test_a_sweep_on_s3_and_its_runs(s3_bucket):
    prefix, options = s3_bucket
    out = f"{prefix}/sweeps/a"
    grid = {"out": out, "seeds": [0], "plugins": ["cr"], "coefficients": [0.01]}
    grid["measure"] = ["characteristics"]
    config = SweepConfig.from_mapping({**BASE, "sweep": grid})
    result = run_sweep(config, progress=False, log=lambda _: None, storage_options=options)
    assert result.failed == {} and len(result.ran) == 2
    again = run_sweep(config, progress=False, log=lambda _: None, storage_options=options)
    assert again.ran == () and len(again.skipped) == 2  # complete cells on S3 are kept
    summary = {group: stats for group, _, stats in summarize(out, options).rows}

    with pytest.warns(InfoshapeWarning, match="penalty.cr only in 1 of 2"):
        runs = infoshape.open_runs(out, storage_options=options)
    assert runs["name"].values.tolist() == ["baseline-seed0", "cr-0.01-seed0"]
    assert runs["store"].values[0] == f"{out}/cells/baseline-seed0.zarr"
    error = 100 * (1 - runs["test.accuracy"].sel(plugin="cr").isel(epoch=-1))  # one run
    assert float(error) == pytest.approx(summary["cr-0.01"]["test_error"][0], abs=1e-9)
    globbed = infoshape.open_runs(f"{out}/cells/*.zarr", storage_options=options, group="probe")
    assert globbed.sizes["run"] == 2 and isinstance(globbed, xr.Dataset)
