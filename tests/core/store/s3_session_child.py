"""A training loop on ``Session`` for the object-store tests: checkpoints beside the store.

Deterministic (fixed data, full-batch order, SGD), so a run killed and resumed stores
the same values as a run that was never interrupted. With ``KILL`` = ``E:S`` the
process flushes the store at step S of epoch E and SIGKILLs itself: rows of that
partial epoch are in the store, past the last checkpoint.

Usage: python s3_session_child.py STORE STORAGE_OPTIONS_JSON EPOCHS [KILL|resume]
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import torch
from torch import nn

import infoshape
from infoshape.store.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint

STEPS = 4
BATCH = 16


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(STEPS * BATCH, 8, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def run(
    store: str,
    storage_options: dict[str, Any] | None,
    epochs: int,
    kill: tuple[int, int] | None = None,
    resume: bool = False,
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data()
    state = None
    if resume:
        checkpoint = load_checkpoint(checkpoint_path(store), storage_options)
        model.load_state_dict(checkpoint["model"])
        opt.load_state_dict(checkpoint["optimizer"])
        state = checkpoint["session"]
    with infoshape.Session(
        model,
        store=store,
        storage_options=storage_options,
        taps=[infoshape.Tap("1", store=True, name="hidden")],
        seed=0,
        resume=state,
    ) as s:
        for epoch in range(s.epoch, epochs):
            for step in range(STEPS):
                xb, yb = x[step * BATCH : (step + 1) * BATCH], y[step * BATCH : (step + 1) * BATCH]
                loss = s.loss(s.model(xb), yb)
                loss.backward()
                opt.step()
                opt.zero_grad()
                s.step_end()
                if kill == (epoch, step):
                    s.flush()  # the store now holds rows of the partial epoch
                    os.kill(os.getpid(), signal.SIGKILL)
            s.epoch_end(probe=(x[:32], y[:32]))
            s.flush()
            save_checkpoint(
                checkpoint_path(store),
                {
                    "session": s.state_dict(),
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                },
                storage_options,
            )
            print(f"EPOCH {epoch}", flush=True)


if __name__ == "__main__":
    store, options, epochs = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    extra = sys.argv[4] if len(sys.argv) > 4 else ""
    kill = tuple(int(v) for v in extra.split(":")) if ":" in extra else None
    run(store, options, epochs, kill=kill, resume=extra == "resume")  # type: ignore[arg-type]
