"""Train a LightningModule on the embedded digits with infoshape plugins enabled by a callback.

The only change to an ordinary LightningModule is in ``training_step``::

    loss = self.infoshape.loss(logits, y)     # objective + the plugins' penalties

Run it::

    python examples/lightning_example.py --epochs 5 --out examples/results/lightning
    python -c "import infoshape; print(infoshape.open_store('examples/results/lightning/run.zarr'))"

Needs ``pip install 'infoshape[lightning]'``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import infoshape
from infoshape import Tap
from infoshape.apps.lightning import InfoshapeCallback


class DigitsMLP(pl.LightningModule):
    """A 64-32-10 MLP on 8x8 digits."""

    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.relu1 = nn.ReLU()
        self.out = nn.Linear(32, 10)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.relu1(self.fc1(x.flatten(1))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.infoshape.loss(self(x), y)  # the one-line change
        self.log("train_loss", loss.detach(), prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument(
        "--plugin", action="append", default=[], help="an infoshape plugin (repeatable)"
    )
    parser.add_argument(
        "--out", default="examples/results/lightning", help="output folder (run.zarr)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    args = parser.parse_args(argv)

    pl.seed_everything(args.seed, verbose=False)
    spec = infoshape.get_dataset("digits")
    train_set, test_set = spec.load("train"), spec.load("test")
    x_probe = torch.stack([torch.as_tensor(test_set[i][0]) for i in range(200)])
    y_probe = torch.as_tensor([int(test_set[i][1]) for i in range(200)])
    store = Path(args.out) / "run.zarr"
    callback = InfoshapeCallback(
        plugins=args.plugin,
        store=store,
        probe=(x_probe, y_probe),
        taps=[Tap("relu1", store=True)],
        n_train=len(train_set),
        seed=args.seed,
        overwrite=True,
    )
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        callbacks=[callback],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(
        DigitsMLP(),
        DataLoader(train_set, batch_size=args.batch_size, shuffle=True),
        DataLoader(test_set, batch_size=512),
    )
    print(f"wrote {store}: {trainer.callback_metrics}")
    return store


if __name__ == "__main__":
    main()
