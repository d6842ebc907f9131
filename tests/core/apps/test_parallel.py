"""``infoshape train`` under DDP: torchrun with 2 real gloo processes vs one process.

``--batch-size`` is the global batch: both runs draw the same global batches, DDP
averages the ranks' gradients (each rank's loss weighted by its share of the batch),
so with plain SGD and cross-entropy alone (no batch-statistic penalty) the merged
store of the 2 ranks equals the one-process store up to float rounding, within the
tolerance of tests/core/test_distributed.py (rtol 1e-5, atol 1e-6).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import infoshape
from infoshape.apps.cli import main
from infoshape.apps.parallel import GlobalBatches, strip_nproc

ARGS = [
    "train", "--model", "mlp", "--model-option", "hidden=[16,8]", "--epochs", "2",
    "--probe-size", "50", "--optimizer", "sgd", "--lr", "0.1", "--seed", "3",
    "--no-progress", "--overwrite",
]  # fmt: skip
RTOL, ATOL = 1e-5, 1e-6  # as in tests/core/test_distributed.py
N_TRAIN, BATCH = 1437, 64  # digits' training split: the last batch (29 rows) splits 15 + 14


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parallel")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--standalone", "-m", "infoshape", *ARGS, "--store", str(folder / "ddp.zarr")]
    child = subprocess.run(command, capture_output=True, text=True, timeout=180, env=_env())
    assert child.returncode == 0, child.stderr
    assert child.stdout.count("trained mlp") == 1, child.stdout  # rank 0 alone reports
    assert main([*ARGS, "--store", str(folder / "one.zarr")]) == 0
    return (
        folder,
        infoshape.open_store(folder / "ddp.zarr"),
        infoshape.open_store(folder / "one.zarr"),
    )


def test_torchrun_merged_store_equals_the_single_process_store(stores):
    folder, ddp, one = stores
    info = ddp.attrs["distributed"]
    assert (info["world_size"], info["backend"]) == (2, "gloo")
    assert info["rank_stores"] == ["ddp.zarr", "ddp.rank1.zarr"]
    assert (folder / "ddp.rank1.zarr").is_dir() and ddp.attrs["status"] == "complete"
    merged, expected = ddp["probe"].to_dataset(), one["probe"].to_dataset()
    assert set(merged.data_vars) == set(expected.data_vars) == {"input", "relu1", "relu2"}
    np.testing.assert_array_equal(merged["sample"].values, expected["sample"].values)
    np.testing.assert_array_equal(merged["label"].values, expected["label"].values)
    for name in expected.data_vars:
        np.testing.assert_allclose(merged[name].values, expected[name].values, rtol=RTOL, atol=ATOL)


def test_torchrun_metrics_equal_the_single_process_metrics(stores):
    _, ddp, one = stores
    metrics, expected = ddp["metrics"].to_dataset(), one["metrics"].to_dataset()
    steps = -(-N_TRAIN // BATCH)  # 23 a epoch, the last one uneven
    np.testing.assert_array_equal(metrics["step"].values, np.arange(2 * steps))
    for name in ("test.accuracy", "test.loss", "train.accuracy", "train.loss"):
        np.testing.assert_allclose(metrics[name].values, expected[name].values, rtol=RTOL)
    assert float(metrics["train.loss"][1]) < float(metrics["train.loss"][0])  # it did train
    # the logged step loss is the ranks' mean of their mean losses: the one-process mean
    # on even splits; on the uneven last batch of an epoch (15 + 14 rows) it is unweighted
    # (the gradient is weighted, which the probe and epoch metrics above confirm)
    even = np.ones(2 * steps, dtype=bool)
    even[[steps - 1, 2 * steps - 1]] = False
    for name in ("loss", "loss.objective"):
        got, want = metrics[name].values, expected[name].values
        np.testing.assert_allclose(got[even], want[even], rtol=RTOL)
        np.testing.assert_allclose(got[~even], want[~even], rtol=1e-2)


def test_train_nproc_launches_torchrun(stores, tmp_path):
    _, ddp, _ = stores
    store = tmp_path / "n.zarr"
    child = subprocess.run(
        [sys.executable, "-m", "infoshape", *ARGS, "--nproc", "2", "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=180,
        env=_env(),
    )
    assert child.returncode == 0, child.stderr
    launched = infoshape.open_store(store)
    assert launched.attrs["distributed"]["world_size"] == 2
    for name in ("relu1", "relu2"):  # the same run as the torchrun one
        np.testing.assert_allclose(
            launched["probe"][name].values, ddp["probe"][name].values, rtol=RTOL, atol=ATOL
        )


def test_nproc_errors(capsys, monkeypatch):
    assert main([*ARGS, "--nproc", "0"]) == 2
    assert "--nproc needs at least one process" in capsys.readouterr().err
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert main([*ARGS, "--nproc", "2"]) == 2
    err = capsys.readouterr().err
    assert "ranks within ranks" in err and "drop --nproc" in err


def test_global_batches_split_the_one_process_batches():
    one = GlobalBatches(N_TRAIN, BATCH, seed=3)
    ranks = [GlobalBatches(N_TRAIN, BATCH, seed=3, rank=r, world=2) for r in range(2)]
    for sampler in (one, *ranks):
        sampler.set_epoch(1)
    whole = list(one)
    assert len(whole) == len(ranks[0]) == len(ranks[1]) == 23
    assert sorted(i for b in whole for i in b) == list(range(N_TRAIN))
    for k, (a, b) in enumerate(zip(*ranks, strict=True)):
        assert sorted(a + b) == sorted(whole[k]) and a == whole[k][0::2]
        # weights world * m_r / M add up to the number of ranks: DDP's mean is the batch mean
        assert ranks[0].weight(len(a), k) + ranks[1].weight(len(b), k) == pytest.approx(2.0)
    assert (len(whole[-1]), len(ranks[0].__iter__().__next__())) == (29, 32)
    one.set_epoch(2)
    assert list(one) != whole  # another permutation each epoch
    assert len(GlobalBatches(65, 64, 0, world=2)) == 1  # a last batch of 1 row is dropped
    with pytest.raises(infoshape.ConfigError, match="smaller than the number of ranks"):
        GlobalBatches(10, 1, 0, world=2)


def test_strip_nproc():
    assert strip_nproc(["train", "--nproc", "2", "--epochs", "1", "--nproc=3"]) == [
        "train",
        "--epochs",
        "1",
    ]
