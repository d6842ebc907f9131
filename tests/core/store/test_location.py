"""Stores on an object store: a real S3 endpoint (moto's server) on 127.0.0.1, not a mock.

A run is written to ``s3://`` through ``Session``; another is SIGKILLed mid-epoch
(its store holds rows of the partial epoch) and resumed from its checkpoint beside
the store on S3. Both are read with plain ``xarray.open_datatree(url, engine="zarr",
storage_options=...)``: every epoch and step exactly once, the values those of a local
run with the same seed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import infoshape
from infoshape.errors import StoreError
from infoshape.store.checkpoint import checkpoint_path, load_checkpoint

CHILD = Path(__file__).with_name("s3_session_child.py")
EPOCHS = 3
spec = importlib.util.spec_from_file_location("s3_session_child", CHILD)
assert spec is not None and spec.loader is not None
child = importlib.util.module_from_spec(spec)
spec.loader.exec_module(child)


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    store = tmp_path_factory.mktemp("local") / "ref.zarr"
    child.run(str(store), None, EPOCHS)
    return xr.open_datatree(store, engine="zarr")


def _check_equal(tree: xr.DataTree, reference: xr.DataTree) -> None:
    probe, expected = tree["probe"].to_dataset(), reference["probe"].to_dataset()
    np.testing.assert_array_equal(probe["epoch"].values, np.arange(EPOCHS))  # each epoch once
    np.testing.assert_array_equal(probe["hidden"].values, expected["hidden"].values)
    metrics, expected_metrics = tree["metrics"].to_dataset(), reference["metrics"].to_dataset()
    np.testing.assert_array_equal(metrics["step"].values, np.arange(EPOCHS * child.STEPS))
    np.testing.assert_array_equal(metrics["loss"].values, expected_metrics["loss"].values)


def test_session_writes_kills_and_resumes_on_s3(s3_bucket, local_reference):
    prefix, options = s3_bucket
    complete, killed = f"{prefix}/runs/a.zarr", f"{prefix}/runs/b.zarr"

    child.run(complete, options, EPOCHS)
    tree = xr.open_datatree(complete, engine="zarr", storage_options=options)
    assert tree.attrs["status"] == "complete"
    _check_equal(tree, local_reference)
    assert "testing" not in json.dumps(tree.attrs, default=str)  # no credentials stored

    process = subprocess.run(
        [sys.executable, str(CHILD), killed, json.dumps(options), str(EPOCHS), "1:2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == -9, process.stderr  # SIGKILL, mid epoch 1
    assert "EPOCH 0" in process.stdout and "EPOCH 1" not in process.stdout
    partial = infoshape.open_store(killed, storage_options=options)  # a killed store opens
    assert partial.attrs["status"] == "running"
    assert partial["probe"]["epoch"].values.tolist() == [0]
    assert partial["metrics"]["step"].size == child.STEPS + 3  # rows past the checkpoint
    checkpoint = load_checkpoint(checkpoint_path(killed), options)
    assert checkpoint_path(killed) == f"{killed}.checkpoint.pt"  # beside it, on S3
    assert checkpoint["session"]["epoch"] == 1

    child.run(killed, options, EPOCHS, resume=True)
    resumed = xr.open_datatree(killed, engine="zarr", storage_options=options)
    assert resumed.attrs["status"] == "complete"
    assert [r["epoch"] for r in resumed.attrs["resumed"]] == [1]
    _check_equal(resumed, local_reference)


def test_s3_store_is_not_replaced_without_overwrite(s3_bucket):
    prefix, options = s3_bucket
    url = f"{prefix}/c.zarr"
    child.run(url, options, 1)
    with pytest.raises(StoreError, match="already exists"):
        child.run(url, options, 1)
    with pytest.raises(StoreError, match="no infoshape store"):
        infoshape.open_store(f"{prefix}/missing.zarr", storage_options=options)


def test_cli_train_resume_analyze_report_on_s3(s3_bucket, tmp_path, capsys):
    from infoshape.apps.cli import main
    from infoshape.store.location import parse_storage_options

    prefix, options = s3_bucket
    url = f"{prefix}/cli/a.zarr"
    flags = [
        "--storage-option=key=testing",
        "--storage-option=secret=testing",
        f"--storage-option=client_kwargs.endpoint_url={options['client_kwargs']['endpoint_url']}",
    ]
    assert parse_storage_options([f[len("--storage-option=") :] for f in flags]) == options
    small = ["--model-option", "hidden=[8]", "--probe-size", "30", "--batch-size", "256"]
    train = ["train", "--store", url, "--epochs", "1", "--no-progress", *small, *flags]
    assert main(train) == 0
    assert main(["train", "--resume", url, "--epochs", "2", "--no-progress", *flags]) == 0
    analyze = ["analyze", url, "--estimator", "kl_pairwise", "--no-progress", *flags]
    assert main(analyze) == 0
    assert main(["report", url, "--out", str(tmp_path / "report"), *flags]) == 0
    capsys.readouterr()

    tree = xr.open_datatree(url, engine="zarr", storage_options=options)
    assert tree.attrs["status"] == "complete" and len(tree.attrs["resumed"]) == 1
    np.testing.assert_array_equal(tree["probe"]["epoch"].values, [0, 1])
    assert tree["analysis"]["kl_pairwise"]["I_XT"].shape[0] == 2
    assert (tmp_path / "report" / "information_plane_kl_pairwise.png").is_file()
    assert main(train) == 2  # the store exists: refused, nothing deleted
    assert "a store already exists at s3://" in capsys.readouterr().err


def test_overwrite_at_a_url_replaces_only_infoshape_stores():
    import fsspec

    from infoshape.store import RunStore
    from infoshape.store.checkpoint import save_checkpoint

    fs = fsspec.filesystem("memory")
    url = "memory://guard/a.zarr"
    RunStore(url, {"infoshape_version": "x"}).close()
    save_checkpoint(checkpoint_path(url), {"session": {}})
    first = infoshape.open_store(url).attrs["run_id"]
    with pytest.raises(StoreError, match="already exists"):
        RunStore(url, {"infoshape_version": "x"})
    RunStore(url, {"infoshape_version": "x"}, overwrite=True).close()
    assert infoshape.open_store(url).attrs["run_id"] != first
    assert not fs.exists("/guard/a.zarr.checkpoint.pt")  # the old run's checkpoint went too

    fs.pipe_file("/guard/theirs.zarr/data.bin", b"mine")
    with pytest.raises(StoreError, match="did not write"):
        RunStore("memory://guard/theirs.zarr", {}, overwrite=True)
    assert fs.cat_file("/guard/theirs.zarr/data.bin") == b"mine"
    with pytest.raises(StoreError, match="no checkpoint"):
        load_checkpoint("memory://guard/none.zarr.checkpoint.pt")


# ------------------------------------------------------------------ refused credentials (issue 17)
@pytest.fixture
def s3_auth(s3_bucket, monkeypatch):
    """The bucket, with moto checking every request's credentials (no IAM user: any key fails)."""
    import moto.settings

    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    return s3_bucket


def test_refused_credentials_name_the_url_and_the_fix(s3_auth, mlp):
    prefix, options = s3_auth
    url = f"{prefix}/refused.zarr"
    wrong = {**options, "key": "wrong-key", "secret": "wrong-secret"}
    with pytest.raises(StoreError) as info:
        infoshape.Session(mlp, store=url, storage_options=wrong)
    message = str(info.value)
    assert f"cannot use the store {url}: the credentials were refused" in message
    assert options["client_kwargs"]["endpoint_url"] in message  # the endpoint it asked
    assert "storage_options={'key': ..., 'secret': ..., 'client_kwargs'" in message
    assert "wrong-secret" not in message  # secrets are never printed
    assert isinstance(info.value.__cause__, PermissionError)
    with pytest.raises(StoreError, match="credentials were refused"):
        infoshape.open_store(url, storage_options=wrong)


def test_refused_credentials_on_the_command_line(s3_auth, capsys):
    from infoshape.apps.cli import main

    prefix, options = s3_auth
    endpoint = options["client_kwargs"]["endpoint_url"]
    argv = ["train", "--epochs", "1", "--store", f"{prefix}/cli.zarr", "--no-probe", "-q"]
    flags = ["--storage-option", "key=nobody", "--storage-option", "secret=nothing"]
    flags += ["--storage-option", f"client_kwargs.endpoint_url={endpoint}"]
    assert main(argv + flags) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"infoshape: error: cannot use the store {prefix}/cli.zarr")
    assert "--storage-option key=... --storage-option secret=..." in err
    assert "Traceback" not in err


def test_an_unreachable_endpoint_is_named(mlp):
    import socket

    pytest.importorskip("s3fs")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = {
        "key": "k",
        "secret": "s",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    with pytest.raises(StoreError, match="the endpoint could not be reached") as info:
        infoshape.Session(mlp, store="s3://nowhere/a.zarr", storage_options=options)
    assert f"endpoint http://127.0.0.1:{port}" in str(info.value)
