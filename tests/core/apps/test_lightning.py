"""The Lightning callback: a LightningModule with one changed line gets the plugins and a store."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip(
    "lightning.pytorch", reason="the optional lightning extra is not installed"
)

import infoshape  # noqa: E402
from infoshape import Penalty, Tap  # noqa: E402
from infoshape.apps.lightning import InfoshapeCallback  # noqa: E402

EXAMPLES = Path(__file__).parents[3] / "examples"


class Module(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(8, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        return self.out(torch.relu(self.fc1(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.infoshape.loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class L2Activations:
    name = "l2_activations"

    def __init__(self):
        self.steps = 0

    @infoshape.hookimpl
    def infoshape_taps(self):
        return [Tap("fc1")]

    @infoshape.hookimpl
    def infoshape_penalty(self, captures):
        return [Penalty("l2", captures["fc1"].pow(2).mean(), 0.01)]

    @infoshape.hookimpl
    def infoshape_step_end(self):
        self.steps += 1

    @infoshape.hookimpl
    def infoshape_metrics(self, stage):
        return {"l2.steps": float(self.steps)} if stage == "step" else {}

    @infoshape.hookimpl
    def infoshape_state_dict(self):
        return {"steps": self.steps}

    @infoshape.hookimpl
    def infoshape_load_state_dict(self, state):
        self.steps = state["steps"]


def _data():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(48, 8, generator=g), torch.randint(0, 3, (48,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16), (x[:20], y[:20])


def _trainer(tmp_path, epochs, callback, **kwargs):
    return pl.Trainer(
        max_epochs=epochs,
        callbacks=[callback, *kwargs.pop("callbacks", [])],
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )


def test_callback_runs_the_session_and_writes_the_store(tmp_path):
    loader, probe = _data()
    store = tmp_path / "a.zarr"
    callback = InfoshapeCallback(
        plugins=[L2Activations], store=store, probe=probe, taps=[Tap("fc1", store=True)]
    )
    module = Module()
    _trainer(tmp_path, 2, callback, enable_checkpointing=False).fit(module, loader)
    assert module.infoshape.closed
    assert not module.fc1._forward_hooks
    tree = infoshape.open_store(store)
    assert tree.attrs["status"] == "complete"
    metrics = tree["metrics"].to_dataset()
    np.testing.assert_array_equal(metrics["step"].values, np.arange(6))  # 3 batches x 2 epochs
    np.testing.assert_allclose(
        metrics["loss"].values,
        metrics["loss.objective"].values + 0.01 * metrics["penalty.l2"].values,
        rtol=1e-6,
    )
    probe_store = tree["probe"].to_dataset()
    np.testing.assert_array_equal(probe_store["epoch"].values, [0, 1])
    with torch.no_grad():
        expected = module.fc1(probe[0]).numpy()
    np.testing.assert_allclose(probe_store["fc1"].sel(epoch=1).values, expected, rtol=1e-5)


def test_fit_from_a_lightning_checkpoint_appends_the_store(tmp_path):
    loader, probe = _data()
    store = tmp_path / "a.zarr"
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)

    def callback():
        return InfoshapeCallback(plugins=[L2Activations], store=store, probe=probe,
                                 taps=[Tap("fc1", store=True)])  # fmt: skip

    _trainer(tmp_path, 1, callback(), callbacks=[saver]).fit(Module(), loader)
    again = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt2")
    _trainer(tmp_path, 2, callback(), callbacks=[again]).fit(
        Module(), loader, ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    tree = infoshape.open_store(store)
    metrics = tree["metrics"].to_dataset()
    np.testing.assert_array_equal(metrics["step"].values, np.arange(6))
    np.testing.assert_array_equal(metrics["l2.steps"].values, np.arange(6))  # plugin state kept
    np.testing.assert_array_equal(tree["probe"]["epoch"].values, [0, 1])
    assert [r["epoch"] for r in tree.attrs["resumed"]] == [1]


def test_lightning_example_runs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import lightning_example

    store = lightning_example.main(["--epochs", "1", "--out", str(tmp_path)])
    sys.modules.pop("lightning_example", None)
    tree = infoshape.open_store(store)
    assert tree["probe"]["relu1"].shape == (1, 200, 32)
    assert tree.attrs["status"] == "complete"
