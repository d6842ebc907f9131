"""Data-parallel training for ``infoshape train``: torchrun, batches split across ranks.

``torchrun --nproc-per-node N -m infoshape train ...`` (or ``infoshape train --nproc N``,
which starts that, :func:`launch`) runs N ranks; each calls
:func:`infoshape.apps.trainer.train`, which, seeing torchrun's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``), joins the process group
(:func:`process_group`: gloo on the CPU, nccl on CUDA with device ``cuda:LOCAL_RANK``)
and wraps the model in ``DistributedDataParallel``.

``batch_size`` is the *global* batch: every step, the same global batch as a
one-process run (:class:`GlobalBatches`: a permutation seeded by ``seed`` and the
epoch) is split strided across the ranks (rank ``r`` takes positions ``r, r + N, ...``).
Each rank's loss is weighted by ``N * m_r / M`` (``m_r`` its rows, ``M`` the global
batch; 1 unless the last batch splits unevenly), so DDP's average of the ranks'
gradients is the gradient of the mean loss over the global batch: a run with the
objective alone, or with per-sample penalties, follows the one-process run up to
float rounding. A penalty computed from batch statistics (a variance, a kernel over
the batch) sees only the rank's rows unless its plugin all-gathers them
(:func:`infoshape.distributed.all_gather`), so it differs from one process.

The rest is the session's (:mod:`infoshape.distributed`): one store per rank
(``a.zarr``, ``a.rank1.zarr``), merged by :func:`infoshape.open_store`; the probe set
sharded across the ranks and gathered back for estimators; metrics reduced across
ranks and written by rank 0. Test and train accuracy are evaluated on a strided shard
per rank and summed (:func:`evaluate_sharded`). Only rank 0 shows a progress bar and
prints; a distributed run writes no checkpoint (it cannot be resumed).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from infoshape import distributed
from infoshape.errors import ConfigError

__all__ = [
    "GlobalBatches",
    "evaluate_sharded",
    "evaluation_sums",
    "launch",
    "launched_by_torchrun",
    "process_group",
    "strip_nproc",
    "wrap",
]

_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")


def launched_by_torchrun() -> bool:
    """Whether this process is a rank started by torchrun (its environment is set)."""
    return all(name in os.environ for name in _TORCHRUN_ENV)


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[torch.device]:
    """Join torchrun's process group for the run; leave it afterwards.

    Outside torchrun, or with one rank, nothing is joined and ``device`` is yielded.
    Under torchrun with CUDA the rank's device is ``cuda:LOCAL_RANK`` and the backend
    nccl; on the CPU the backend is gloo.

    Yields:
        the device this rank trains on.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) < 2:
        yield device
        return
    if dist.is_initialized():  # the caller joined a group already: use it, leave it be
        yield device
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` under a process group, else ``model``."""
    if not distributed.is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


class GlobalBatches:
    """Batches of one rank: global batches of a seeded per-epoch permutation, split strided.

    Epoch ``e`` permutes the ``n`` samples with ``torch.randperm`` seeded from
    ``(seed, e)`` mixed by ``numpy.random.SeedSequence`` (:meth:`set_epoch`; so seed
    1's first epoch is not seed 0's second, as with ``seed + e``), cuts the permutation
    into global batches of ``batch_size`` (the last one shorter), and rank ``r`` of
    ``world`` takes positions ``r, r + world, ...`` of each. Every rank yields the same
    number of batches; a last global batch with fewer rows than ranks is dropped (at
    most ``world - 1`` samples an epoch). With ``world == 1`` these are the one-process
    batches.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        if batch_size < world:
            raise ConfigError(
                "the batch is smaller than the number of ranks",
                expected=f"batch_size >= {world} (the global batch is split across the ranks)",
                got=f"batch_size={batch_size}",
                fix=f"raise --batch-size to at least {world}, or use fewer processes",
            )
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world, self.epoch = rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the permutation of ``epoch`` next."""
        self.epoch = epoch

    def global_sizes(self) -> list[int]:
        """The size of each global batch of an epoch."""
        sizes = [min(self.batch_size, self.n - k) for k in range(0, self.n, self.batch_size)]
        return sizes[:-1] if sizes and sizes[-1] < self.world else sizes

    def weight(self, local: int, step: int) -> float:
        """The loss weight ``world * local / global`` of this rank's rows at ``step``."""
        return self.world * local / self.global_sizes()[step]

    def __len__(self) -> int:
        return len(self.global_sizes())

    def __iter__(self) -> Iterator[list[int]]:
        mixed = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0]
        generator = torch.Generator().manual_seed(int(mixed))
        order = torch.randperm(self.n, generator=generator).tolist()
        for k, size in enumerate(self.global_sizes()):
            start = k * self.batch_size
            yield order[start + self.rank : start + size : self.world]


@torch.no_grad()
def evaluation_sums(
    model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 512
) -> tuple[int, float, int]:
    """Correct predictions, summed cross-entropy and samples of ``model`` on ``dataset``.

    In eval mode; the train/eval mode is restored. Summed per batch on the host (as one
    process does; no float64 on MPS).
    """
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    try:
        for x, y in DataLoader(dataset, batch_size=batch_size):
            x, y = x.to(device), torch.as_tensor(y).to(device)
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
            n += int(y.shape[0])
    finally:
        model.train(was_training)
    return correct, loss_sum, n


def evaluate_sharded(
    model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 512
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy on ``dataset``, each rank on a strided shard.

    The correct counts, loss sums and counts are summed across ranks, so every rank
    returns the values of the whole set. Pass the unwrapped model (no DDP forward:
    ranks may run different numbers of batches).
    """
    n = len(dataset)  # type: ignore[arg-type]
    shard = Subset(dataset, range(distributed.rank(), n, distributed.world_size()))
    correct, loss_sum, count = evaluation_sums(model, shard, device, batch_size)
    totals = {"correct": float(correct), "loss": loss_sum, "n": float(count)}
    totals = distributed.reduce_metrics(totals, {k: "sum" for k in totals})
    return totals["correct"] / max(totals["n"], 1.0), totals["loss"] / max(totals["n"], 1.0)


# ------------------------------------------------------------------ --nproc
def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``infoshape`` with ``argv`` (``--nproc`` removed) on ``nproc`` ranks via torchrun.

    Starts ``python -m torch.distributed.run --nproc-per-node N --standalone -m
    infoshape ARGV`` and waits for it.

    Returns:
        torchrun's exit status.

    Raises:
        ConfigError: ``nproc < 1``, or this process is already a torchrun rank.
    """
    if nproc < 1:
        raise ConfigError(
            "--nproc needs at least one process",
            expected="--nproc N with N >= 1",
            got=f"--nproc {nproc}",
            fix="pass --nproc 2 (or leave it out for one process)",
        )
    if launched_by_torchrun():
        raise ConfigError(
            "--nproc inside torchrun would start ranks within ranks",
            expected="either torchrun or --nproc",
            got=f"--nproc {nproc} in a process started by torchrun "
            f"(RANK={os.environ.get('RANK')}, WORLD_SIZE={os.environ.get('WORLD_SIZE')})",
            fix="drop --nproc (torchrun --nproc-per-node sets the number of ranks)",
        )
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    command += ["--standalone", "-m", "infoshape", *strip_nproc(argv)]
    return subprocess.run(command, check=False).returncode
