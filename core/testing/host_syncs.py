"""Counting host synchronizations: the calls that make the host wait for an accelerator."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["HOST_SYNC_METHODS", "count_host_syncs"]

HOST_SYNC_METHODS = (
    "item",
    "tolist",
    "cpu",
    "numpy",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
)
"""Tensor methods that make the host wait for an accelerator when called on its tensors."""


@contextlib.contextmanager
def count_host_syncs() -> Iterator[Counter]:
    """Count this thread's calls of :data:`HOST_SYNC_METHODS` on tensors, by method.

    On a GPU each such call on a step's tensors stalls the queue until the device
    catches up; on the CPU they are cheap, but the same calls happen, so counting them
    on the CPU tells how a training step would behave on a GPU::

        with count_host_syncs() as calls:
            loss = session.loss(session.model(x), y); loss.backward(); session.step_end()
        assert sum(calls.values()) == 0

    Only the calling thread is counted (the store's writer thread reads host copies).
    The methods are restored on exit.
    """
    counts: Counter = Counter()
    me = threading.get_ident()
    originals = {name: getattr(torch.Tensor, name) for name in HOST_SYNC_METHODS}

    def counted(name: str, original: Any) -> Any:
        def method(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == me:
                counts[name] += 1
            return original(self, *args, **kwargs)

        return method

    for name, original in originals.items():
        setattr(torch.Tensor, name, counted(name, original))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
