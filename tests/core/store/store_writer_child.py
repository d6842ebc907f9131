"""A training process for the kill test: deterministic probe captures, flushed epoch by epoch.

The model is one Linear layer whose weight at epoch e is ``(e + 1) * W0``, so the
stored probe activation of epoch e is exactly ``x @ ((e + 1) W0).T + b``: the
parent test checks that without infoshape's help. After each epoch is flushed
the child prints ``FLUSHED <epoch>``.

Usage: python store_writer_child.py STORE N_EPOCHS
"""

from __future__ import annotations

import sys

import torch
from torch import nn

import infoshape


def reference(n_probe: int = 512, width: int = 256):
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n_probe, 64, generator=g)
    y = torch.randint(0, 10, (n_probe,), generator=g)
    w0 = torch.randn(width, 64, generator=g) / 8
    b = torch.randn(width, generator=g)
    return x, y, w0, b


def main(store: str, n_epochs: int) -> None:
    x, y, w0, b = reference()
    model = nn.Sequential()
    model.add_module("hidden", nn.Linear(64, w0.shape[0]))
    model.add_module("out", nn.Linear(w0.shape[0], 10))
    with infoshape.Session(model, store=store, taps=[infoshape.Tap("hidden", store=True)]) as s:
        for epoch in range(n_epochs):
            with torch.no_grad():
                model.hidden.weight.copy_((epoch + 1) * w0)
                model.hidden.bias.copy_(b)
            for step in range(4):
                loss = s.loss(s.model(x[step * 8 : step * 8 + 8]), y[step * 8 : step * 8 + 8])
                loss.backward()
                model.zero_grad()
                s.step_end()
            s.log_metrics({"epoch.marker": float(epoch)}, stage="epoch")
            s.epoch_end(probe=(x, y))
            s.flush()
            print(f"FLUSHED {epoch}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
