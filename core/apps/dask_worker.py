"""What runs on a dask worker: the torch thread count (imported only when a scheduler is used).

:mod:`infoshape.apps.scheduler` registers :class:`TorchThreads` on every worker of the
cluster it connects to; this module imports ``distributed``, an optional extra.
"""

from __future__ import annotations

import os
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from infoshape.apps.scheduler import worker_threads

__all__ = ["TorchThreads"]


class TorchThreads(WorkerPlugin):  # type: ignore[misc]
    """A dask worker plugin: ``torch.set_num_threads`` on each worker as it starts.

    Args:
        slots: ``{host: task slots on that host}`` (the sum of its workers' threads);
            a host missing from it (a worker that joined later) counts its own threads.
        threads: a fixed thread count instead (``None``: the host's cores // its slots).
    """

    name = "infoshape-torch-threads"

    def __init__(self, slots: dict[str, int] | None = None, threads: int | None = None) -> None:
        self.slots, self.threads = dict(slots or {}), threads

    def setup(self, worker: Any) -> None:
        """Set the worker's torch thread count (dask calls it on every worker)."""
        import torch

        host = worker.address.split("://", 1)[-1].rsplit(":", 1)[0]
        slots = self.slots.get(host, worker.state.nthreads)
        torch.set_num_threads(self.threads or worker_threads(os.cpu_count() or 1, slots))
