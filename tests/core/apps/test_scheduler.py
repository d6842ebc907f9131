"""Sweeps and analyses on a real dask.distributed cluster: the same stores and values as serial.

One ``LocalCluster`` of 2 worker processes (one thread each) serves the module; a serial
sweep of the same grid is the reference. Equality is exact: the same seeds, the same
code, each cell in one process (``assert_array_equal``, ``==`` on summaries).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import infoshape
from infoshape.apps.analysis import analyze, analyze_runs
from infoshape.apps.cli import main
from infoshape.apps.scheduler import SchedulerSpec, connect, parse_scheduler, worker_threads
from infoshape.apps.sweep import SweepConfig, run_sweep, summarize
from infoshape.errors import ConfigError

distributed = pytest.importorskip("distributed")  # the dev extra installs it

BASE = {
    "model": "mlp",
    "dataset": "digits",
    "epochs": 1,
    "batch_size": 128,
    "model_options": {"hidden": [8, 8]},
    "probe_size": 40,
    "options": {"characteristics": {"bounds": ["lower"]}},
}
# valid options, but the layer does not exist: the cell fails when its session starts
BROKEN = {"plugins": ["cr"], "options": {"cr": {"layers": ["no_such_layer"]}}}
GRID = {
    "baseline": False,
    "measure": ["characteristics"],
    "seeds": [0, 1],
    "plugins": ["l1r"],
    "coefficients": [0.001],
    "configurations": {"broken": BROKEN},
}


def _config(out: Path) -> SweepConfig:
    return SweepConfig.from_mapping({**BASE, "sweep": {"out": str(out), **GRID}})


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with cluster, distributed.Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The grid trained here, one cell after the other: the reference."""
    out = tmp_path_factory.mktemp("serial") / "sw"
    return run_sweep(_config(out), progress=False, log=_quiet)


@pytest.fixture(scope="module")
def on_cluster(client, tmp_path_factory):
    out = tmp_path_factory.mktemp("cluster") / "sw"
    lines: list[str] = []
    return run_sweep(_config(out), progress=False, log=lines.append, scheduler=client), lines


def _metrics(store: Path) -> xr.Dataset:
    return xr.open_datatree(store, engine="zarr")["metrics"].to_dataset().load()


def test_parse_scheduler_and_its_errors():
    assert parse_scheduler(None) is None
    assert parse_scheduler("local:3") == SchedulerSpec(workers=3)
    assert parse_scheduler("tcp://10.0.0.5:8786") == SchedulerSpec(address="tcp://10.0.0.5:8786")
    for bad in ("local:0", "local:x", "local", "8786", "http://host:8786", "tcp://"):
        with pytest.raises(ConfigError, match="cannot read the scheduler") as info:
            parse_scheduler(bad)
        assert "local:2" in str(info.value)  # the fix names a valid spec
    assert [worker_threads(c, s) for c, s in ((2, 2), (16, 4), (2, 4), (1, 1))] == [1, 4, 1, 1]


def test_missing_distributed_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(ConfigError, match=r"infoshape\[distributed\]"), connect("local:2"):
        pass


def test_a_bad_spec_stops_the_sweep_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the scheduler"):
        run_sweep(_config(tmp_path / "sw"), progress=False, log=_quiet, scheduler="local:0")
    assert not (tmp_path / "sw").exists()


def test_workers_import_this_infoshape_and_share_the_cores(client, on_cluster):
    def probe():
        import torch

        import infoshape

        return torch.get_num_threads(), infoshape.__file__

    seen = client.run(probe)
    assert len(seen) == 2
    want = worker_threads(os.cpu_count() or 1, 2)
    assert set(seen.values()) == {(want, infoshape.__file__)}


def test_sweep_on_two_workers_equals_the_serial_sweep(serial, on_cluster):
    result, lines = on_cluster
    assert sorted(result.ran) == sorted(serial.ran) and len(result.ran) == 2
    assert list(result.ran) == list(serial.ran)  # reported in the grid's order
    assert result.summary.columns == serial.summary.columns
    assert result.summary.rows == serial.summary.rows  # exact: same seeds, same code
    for name in serial.ran:
        here = _metrics(serial.out / "cells" / f"{name}.zarr")
        there = _metrics(result.out / "cells" / f"{name}.zarr")
        assert set(here.data_vars) == set(there.data_vars)
        for key in here.data_vars:
            np.testing.assert_array_equal(there[key].values, here[key].values, err_msg=key)
    assert (result.out / "summary.md").read_text() == (serial.out / "summary.md").read_text()
    assert any(line.endswith("training") for line in lines)
    assert any("test accuracy" in line for line in lines)


def test_a_failing_cell_is_reported_with_its_traceback_and_the_rest_train(on_cluster):
    result, lines = on_cluster
    assert list(result.failed) == ["broken-seed0", "broken-seed1"]
    assert "no_such_layer" in result.failed["broken-seed0"]
    trace = result.tracebacks["broken-seed0"]
    assert trace.startswith("Traceback (most recent call last)") and "no_such_layer" in trace
    assert "infoshape" in trace and "train" in trace  # the frames of the worker's call
    manifest = json.loads((result.out / "sweep.json").read_text())
    assert manifest["tracebacks"]["broken-seed1"].startswith("Traceback")
    assert any("FAILED" in line and "Traceback" in line for line in lines)


def test_a_rerun_on_the_cluster_skips_the_complete_cells(client, on_cluster):
    result, _ = on_cluster
    mtimes = {p: p.stat().st_mtime_ns for p in (result.out / "cells").glob("*/zarr.json")}
    again = run_sweep(_config(result.out), progress=False, log=_quiet, scheduler=client)
    assert again.ran == () and sorted(again.skipped) == sorted(result.ran)
    assert list(again.failed) == ["broken-seed0", "broken-seed1"]  # failed cells run again
    assert again.summary.rows == result.summary.rows
    for path, mtime in mtimes.items():
        if "broken" not in str(path):
            assert path.stat().st_mtime_ns == mtime


def _copies(serial, where: Path) -> list[Path]:
    stores = [serial.out / "cells" / f"{name}.zarr" for name in serial.ran]
    return [Path(shutil.copytree(s, where / s.name)) for s in stores]


def test_analyze_on_the_cluster_equals_serial(client, serial, tmp_path):
    here = _copies(serial, tmp_path / "here")
    there = _copies(serial, tmp_path / "there")
    options = {"estimator": "binning", "max_samples": 30, "seed": 3}  # 30 bins, 30 samples:
    with pytest.warns(infoshape.EstimatorAssumptionWarning):  # flags raised on the workers
        expected = analyze_runs(here, **options)
    with pytest.warns(infoshape.EstimatorAssumptionWarning):
        got = analyze_runs(there, scheduler=client, **options)
    assert len(got) == len(expected) == 2
    for a, b, store in zip(expected, got, there, strict=True):
        for key in ("I_XT", "I_TY", "flags", "sample", "epoch", "tap"):
            np.testing.assert_array_equal(b[key].values, a[key].values, err_msg=key)
        assert b.attrs["assumption_flags"] == a.attrs["assumption_flags"] != {}
        assert b.attrs["H_Y"] == a.attrs["H_Y"]
        written = xr.open_datatree(store, engine="zarr")["analysis/binning"].to_dataset()
        np.testing.assert_array_equal(written["I_XT"].values, a["I_XT"].values)
    # one store through analyze(): the same values too
    single = analyze(there[0], scheduler=client, name="one", **options)
    np.testing.assert_array_equal(single["I_TY"].values, expected[0]["I_TY"].values)


def test_a_failing_slab_on_a_worker_raises_here_as_in_serial(client, serial, tmp_path):
    store = _copies(serial, tmp_path)[0]
    with pytest.raises(ConfigError, match="n_bins must be a positive int"):  # the estimator's
        analyze(store, "binning", n_bins=-1)
    with pytest.raises(ConfigError, match="n_bins must be a positive int"):  # on a worker
        analyze(store, "binning", scheduler=client, n_bins=-1)
    assert not (store / "analysis" / "binning").exists()  # nothing written


def test_analyze_cli_on_a_running_scheduler(client, serial, tmp_path, capsys):
    stores = _copies(serial, tmp_path)
    argv = ["analyze", *map(str, stores), "--estimator", "binning", "--max-samples", "25"]
    argv += ["--scheduler", client.scheduler.address, "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert all(f"wrote {s}/analysis/binning" in out for s in stores)
    reference = analyze(Path(shutil.copytree(stores[0], tmp_path / "ref.zarr")), "binning",
                        max_samples=25)  # fmt: skip
    written = xr.open_datatree(stores[0], engine="zarr")["analysis/binning"].to_dataset()
    np.testing.assert_array_equal(written["I_XT"].values, reference["I_XT"].values)
    assert main([*argv[:-3], "--scheduler", "local:-1"]) == 2
    assert "cannot read the scheduler" in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter and 2 fresh workers import torch: ~15 s idle
def test_sweep_cli_starts_a_local_cluster_in_a_subprocess(serial, tmp_path):
    """`infoshape sweep --scheduler local:2`: its own 2-worker cluster, the serial summary."""
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "infoshape.apps.cli", "sweep", "--out", str(out)]
    cmd += ["--model", "mlp", "--dataset", "digits", "--epochs", "1", "--batch-size", "128"]
    cmd += ["--model-option", "hidden=[8,8]", "--option", "characteristics.bounds=['lower']"]
    cmd += ["--plugin", "l1r", "--coefficient", "0.001", "--no-baseline"]
    cmd += ["--measure", "characteristics"]
    cmd += ["--seed", "0", "--seed", "1", "--no-progress", "--scheduler", "local:2"]
    config = out.parent / "probe.toml"
    config.write_text("probe_size = 40\n")
    done = subprocess.run(
        [*cmd, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 cells trained, 0 already complete, 0 failed" in done.stdout
    assert "2 cells on local:2 (2 workers)" in done.stderr
    l1r = [row for row in serial.summary.rows if row[0] == "l1r-0.001"]
    assert list(summarize(out).rows) == l1r
