"""``torch.distributed`` support: ranks, gathering across ranks, metric reduction.

Under ``DistributedDataParallel`` (DDP) every rank runs its own
:class:`~infoshape.Session` on its own batches. The session then

- resolves taps through the wrapper's ``.module`` (tap ``"fc1"``, not ``"module.fc1"``),
  and passes the probe set through the inner module (no DDP collectives at epoch end);
- shards the probe set by rank, strided (rank ``r`` takes positions ``r, r + W, ...``),
  stores each rank's shard in the rank's own store, and gathers the captures back to
  the full probe set, in the original order, before the epoch ``infoshape_metrics``
  hooks (so estimators see the same probe set as in one process);
- reduces every metric across ranks, the mean unless the plugin wraps the value in
  :class:`Reduced` (``{"n_seen": Reduced(n, "sum")}``); rank 0 alone writes metrics
  to the store and the sinks;
- writes one store per rank: rank 0 the given path (manifest, metrics, its probe and
  stream rows), rank ``r`` the sibling ``<stem>.rank<r>.zarr`` (:func:`rank_store_path`).
  :func:`infoshape.open_store` merges them lazily: probe variables are concatenated
  over ``sample`` and put back in the single-process order, streamed rows over
  ``sample`` with a ``rank`` coordinate.

Plugins whose penalty needs the whole batch (batch-level estimators) call
:func:`all_gather` with ``differentiable=True``; its gradient is correct under
DDP's gradient averaging (see there). Outside a process group every function
here is the identity of one rank.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from infoshape.errors import ConfigError

__all__ = [
    "Reduced",
    "all_gather",
    "is_distributed",
    "rank",
    "rank_store_path",
    "reduce_metrics",
    "strided_positions",
    "unwrap",
    "world_size",
]

ReduceOp = Literal["mean", "sum", "max", "min"]
_OPS = ("mean", "sum", "max", "min")


def is_distributed() -> bool:
    """Whether a process group with more than one rank is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of ranks (1 outside a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper (else ``model``)."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def rank_store_path(path: str | Path, rank_: int) -> Any:
    """The store of rank ``rank_``: ``path`` for rank 0, ``<stem>.rank<r><suffix>`` beside it.

    A local path gives a ``Path``, an fsspec URL a URL (:mod:`infoshape.store.location`).
    """
    from infoshape.store import location

    path = location.normalize(path)
    if rank_ == 0:
        return path
    stem, dot, suffix = location.name_of(path).rpartition(".")
    name = f"{stem}.rank{rank_}.{suffix}" if dot else f"{suffix}.rank{rank_}"
    return location.with_name(path, name)


def strided_positions(n: int, world: int) -> np.ndarray:
    """Positions in the full probe set of the rank-major concatenation of strided shards.

    Rank ``r`` holds positions ``r, r + world, ...``; concatenating the shards of
    ranks ``0..world-1`` gives the returned order, and ``argsort`` of it undoes that.
    """
    return np.concatenate([np.arange(r, n, world) for r in range(world)]).astype(np.int64)


@attrs.frozen
class Reduced:
    """A metric value with the reduction across ranks it needs (default: the mean).

    Wrap a metric in it when the mean over ranks is wrong: counts and sums of
    per-rank quantities (``"sum"``), extremes (``"max"``, ``"min"``). In one
    process the value is used as it is.
    """

    value: Any
    op: ReduceOp = attrs.field(default="sum", validator=attrs.validators.in_(_OPS))


class _GatherWithGrad(torch.autograd.Function):
    """Concatenate equal-size tensors of all ranks; the gradient sums over ranks."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.size = tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss depends on this rank's rows
        start = dist.get_rank() * ctx.size
        return grad[start : start + ctx.size]


def all_gather(tensor: torch.Tensor, differentiable: bool = False) -> torch.Tensor:
    """Concatenate ``tensor`` over all ranks along dim 0, in rank order.

    Ranks may hold different numbers of rows (the rest of the shape must agree).
    Outside a process group ``tensor`` is returned.

    With ``differentiable=True`` the result keeps the graph of this rank's rows:
    the backward pass sums, over ranks, the gradient every rank's loss sends to
    this rank's rows. Under DDP (which averages parameter gradients over the W
    ranks), a penalty ``P`` computed on the gathered batch by every rank then
    yields exactly the one-process gradient of ``P`` on the whole batch.
    Every rank must call it (it is a collective).
    """
    if not is_distributed():
        return tensor
    sizes = [torch.zeros(1, dtype=torch.int64, device=tensor.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([tensor.shape[0]], device=tensor.device))
    counts = [int(s) for s in sizes]
    longest = max(counts)
    padded = tensor
    if tensor.shape[0] < longest:
        pad = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([tensor, pad])
    if differentiable:
        full = _GatherWithGrad.apply(padded)
    else:
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded.detach().contiguous())
        full = torch.cat(parts)
    if all(c == longest for c in counts):
        return full
    keep = torch.cat(
        [
            torch.arange(r * longest, r * longest + c, device=full.device)
            for r, c in enumerate(counts)
        ]
    )
    return full[keep]


def reduce_metrics(
    metrics: Mapping[str, Any], ops: Mapping[str, ReduceOp] | None = None
) -> dict[str, Any]:
    """Reduce plain metric values (floats, numpy arrays, ``xarray.DataArray``) across ranks.

    ``ops`` names each metric's reduction (default ``"mean"``). Every rank must pass
    the same names with the same shapes (one ``all_reduce`` per reduction kind is
    issued for all of them). Outside a process group ``metrics`` is returned as is.

    Raises:
        ConfigError: a metric's values differ in size between ranks.
    """
    if not is_distributed():
        return dict(metrics)
    ops = ops or {}
    out = dict(metrics)
    device = _collective_device()
    groups = {op: sorted(n for n in metrics if ops.get(n, "mean") == op) for op in _OPS}
    flat = {n: np.asarray(_values(v), dtype=np.float64).ravel() for n, v in metrics.items()}
    _check_same_everywhere(groups, flat, device)
    for op, names in groups.items():
        if not names:
            continue
        packed = torch.from_numpy(np.concatenate([flat[n] for n in names])).to(device)
        dist.all_reduce(packed, op=dist.ReduceOp.SUM if op in ("mean", "sum") else _REDUCE[op])
        if op == "mean":
            packed /= world_size()
        values = packed.cpu().numpy()
        start = 0
        for name in names:
            size = flat[name].size
            out[name] = _rebuilt(metrics[name], values[start : start + size])
            start += size
    return out


_REDUCE = {"max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def _check_same_everywhere(
    groups: Mapping[str, list[str]], flat: Mapping[str, np.ndarray], device: torch.device
) -> None:
    """One all_gather of (count, size, name checksum) per reduction, compared across ranks."""
    signature = torch.tensor(
        [
            value
            for names in groups.values()
            for value in (
                len(names),
                sum(flat[n].size for n in names),
                zlib.crc32("\0".join(names).encode()),
            )
        ],
        dtype=torch.int64,
        device=device,
    )
    every = [torch.empty_like(signature) for _ in range(world_size())]
    dist.all_gather(every, signature)
    if any(not torch.equal(other, signature) for other in every):
        names = sorted(flat)
        raise ConfigError(
            "the metrics differ between ranks",
            expected="the same metric names and shapes on every rank",
            got=f"rank {rank()} has {', '.join(names)} (sizes "
            f"{[flat[n].size for n in names]}); the ranks' checksums differ",
            fix="emit every metric on every rank with the same shape (a metric only some "
            "ranks have cannot be reduced)",
        )


def _values(value: Any) -> Any:
    return value.values if type(value).__name__ == "DataArray" else value


def _rebuilt(original: Any, reduced: np.ndarray) -> Any:
    if type(original).__name__ == "DataArray":
        return original.copy(data=reduced.reshape(original.shape).astype(original.dtype))
    if np.ndim(original) == 0:
        return float(reduced[0])
    return reduced.reshape(np.shape(original)).astype(np.asarray(original).dtype)


def _collective_device() -> torch.device:
    """CUDA for NCCL (which reduces only CUDA tensors), else CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
