"""The training step the benchmarks time, and its timing: shared by overhead.py and gpu.py.

Both scripts run from the command line (``python benchmarks/overhead.py``), so this module
is imported by its name from the scripts' folder.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

Batch = tuple[torch.Tensor, torch.Tensor]


def train_step(
    forward: Callable[[torch.Tensor], torch.Tensor],
    session: Any,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    autocast: str | None = None,
) -> None:
    """One SGD step: the loss through ``session`` (or plain cross-entropy), update, step end.

    ``autocast``: a device type whose bfloat16 autocast wraps the forward and the loss.
    """
    region = (
        torch.autocast(autocast, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    )
    with region:
        out = forward(x)
        loss = session.loss(out, y) if session is not None else F.cross_entropy(out, y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if session is not None:
        session.step_end()


def synchronize(device: str) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def seconds_per_step(
    step: Callable[[torch.Tensor, torch.Tensor], None],
    batches: Sequence[Batch],
    steps: int,
    device: str = "cpu",
) -> float:
    """Seconds per step over ``steps`` steps, cycling ``batches``, the device drained around."""
    synchronize(device)
    start = time.perf_counter()
    for i in range(steps):
        step(*batches[i % len(batches)])
    synchronize(device)
    return (time.perf_counter() - start) / steps
