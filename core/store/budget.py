"""Capture budgets of stream-mode taps: what of each training batch reaches the store.

A tap with ``store="stream"`` stores training batches as ``(step, sample, ...)``.
Its budget (``Tap(..., store=Stream(...))``, :class:`~infoshape.capture.Stream`, read as
``tap.budget``) cuts the cost, applied in this order to every streamed batch, on the
batch's device, without gradients:

1. ``every=k``: only steps with ``step % k == 0`` are considered at all.
2. ``pool=s``: adaptive average pooling of conv maps to ``s × s``
   (``(N, C, H, W) -> (N, C, s, s)``; 1-D maps ``(N, C, L) -> (N, C, s)``).
3. ``project=m``: a fixed Johnson–Lindenstrauss projection of the flattened
   sample to ``m`` dims, ``y = x R`` with ``R_ij ~ N(0, 1/m)`` drawn once from
   ``seed`` (:func:`random_projection`). ``E‖y‖² = ‖x‖²``, and the ``n²``
   squared distances of ``n`` points keep within a factor ``1 ± ε`` with probability
   at least ``1 − 1/n`` when ``m ≥ 4 ln n / (ε²/2 − ε³/3)`` (Dasgupta & Gupta 2003,
   Theorem 2.1). ``R`` is stored once as ``stream/<tap>_projection``, so an
   analysis can project other data the same way or map back with ``pinv(R)``.
4. ``dtype="float16"``: half-precision storage.
5. ``samples=n``: instead of one row per step, a uniform reservoir of ``n``
   samples of each epoch (:class:`Reservoir`) is stored as one row per epoch,
   ``stream/<tap>`` with dims ``(epoch, <tap>_sample, ...)`` and coordinates
   ``<tap>_label``, ``<tap>_sample_index`` and ``<tap>_step`` (where each kept
   sample came from). The reservoir sees the samples of the steps that ``every``
   lets through, after pooling and projection; such a tap writes no per-step rows.

Every choice is recorded in the tap variable's attrs (:meth:`StreamBudget.attrs`), under
the keys ``stream_every``, ``stream_samples``, ... (the store's format is unchanged).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from infoshape.errors import CaptureError
from infoshape.math.linalg import as_samples

if TYPE_CHECKING:
    from infoshape.capture import Tap

__all__ = ["Reservoir", "StreamBudget", "jl_epsilon", "random_projection"]


def random_projection(d: int, m: int, seed: int) -> torch.Tensor:
    """The ``(d, m)`` Gaussian projection ``R_ij ~ N(0, 1/m)`` drawn from ``seed`` (float32, CPU).

    The same ``(d, m, seed)`` gives the same matrix on every machine (torch's CPU generator).
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(d, m, generator=generator, dtype=torch.float32) / math.sqrt(m)


def jl_epsilon(n: int, m: int) -> float:
    """The smallest ``ε`` with ``m ≥ 4 ln n / (ε²/2 − ε³/3)`` (Dasgupta & Gupta, Thm. 2.1).

    With ``m`` Gaussian dims, all squared distances of ``n`` points are kept within
    ``1 ± ε`` with probability at least ``1 − 1/n``. Solved by bisection on ``(0, 1)``.
    """
    need = 4.0 * math.log(n) / m
    lo, hi = 0.0, 1.0
    if hi**2 / 2 - hi**3 / 3 < need:
        return math.inf
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid**2 / 2 - mid**3 / 3 < need else (lo, mid)
    return hi


class Reservoir:
    """A uniform sample of ``size`` items from a stream of batches (Vitter's Algorithm R).

    The ``t``-th item offered (counting from 1) replaces a uniformly chosen slot with
    probability ``size / t``, so after ``T`` items every one of them is in the
    reservoir with probability ``size / T`` (all items while ``T ≤ size``). Batches
    are handled vectorized with the same law as item by item. The slots are drawn on
    the host (they depend only on counts); the kept rows, labels and indices stay on
    the batch's device until :meth:`take` (at epoch end) copies them to host memory,
    so offering a batch never waits for the device. :meth:`take` hands the sample over
    and starts a new one (one per epoch); the random generator continues across epochs.

    Args:
        size: the number of samples kept.
        seed: seed of the numpy generator choosing the slots.
        dtype: dtype of the kept rows (float32 or float16).
    """

    def __init__(self, size: int, seed: int, dtype: torch.dtype = torch.float32) -> None:
        self.size = size
        self.dtype = dtype
        self.rng = np.random.default_rng(seed)
        self.seen = 0
        self._rows: torch.Tensor | None = None
        self._meta: torch.Tensor | None = None  # (3, size): label, sample index, step

    def offer(self, rows: torch.Tensor, labels: Any, index: Any, step: int) -> None:
        """Offer a batch ``rows`` (first dim = samples) with its labels and indices."""
        b = rows.shape[0]
        if b == 0:
            return
        position = self.seen + np.arange(b)  # 0-based count of each item in the stream
        draw = self.rng.integers(0, position + 1)  # uniform on {0, ..., t-1} for item t
        slot = np.where(position < self.size, position, draw)
        keep = np.flatnonzero(slot < self.size)
        # several items of one batch may hit one slot: the later one wins, as item by item
        slot_rev, first_rev = np.unique(slot[keep][::-1], return_index=True)
        item = keep[::-1][first_rev]
        self.seen += b
        if item.size == 0:
            return
        device = rows.device
        if self._rows is None or self._meta is None:
            self._rows = torch.full(
                (self.size, *rows.shape[1:]), math.nan, dtype=self.dtype, device=device
            )
            self._meta = torch.full((3, self.size), -1, dtype=torch.int64, device=device)
        chosen = torch.as_tensor(item, device=device)
        slots = torch.as_tensor(slot_rev, device=device)
        self._rows[slots] = rows.detach()[chosen].to(self.dtype)
        self._meta[0, slots] = _column(labels, b, device)[chosen]
        self._meta[1, slots] = _column(index, b, device)[chosen]
        self._meta[2, slots] = step

    def take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """``(rows, labels, sample_index, step)`` of the sample so far, then start anew.

        Slots never filled (fewer items than ``size``) hold NaN rows and ``-1``.
        Returns None when nothing was offered since the last call.
        """
        if self._rows is None or self._meta is None:
            self.seen = 0
            return None
        rows, meta = self._rows.cpu().numpy(), self._meta.cpu().numpy()
        self._rows, self._meta = None, None
        self.seen = 0
        return rows, meta[0], meta[1], meta[2]


def _column(values: Any, n: int, device: torch.device) -> torch.Tensor:
    """``values`` (labels or indices) as an int64 tensor of ``n`` on ``device``, or ``-1``s."""
    if values is None:
        return torch.full((n,), -1, dtype=torch.int64, device=device)
    values = torch.as_tensor(values).detach().reshape(-1)[:n]
    return values.to(device=device, dtype=torch.int64)


class StreamBudget:
    """The budget of one streamed capture: reduces its batches as the tap asks.

    Args:
        name: the capture name.
        tap: the tap whose ``budget`` (:class:`~infoshape.capture.Stream`) applies.
        module: the tapped module's name (recorded in the attrs).
        point: ``"pre"`` or ``"post"`` (recorded in the attrs).
    """

    def __init__(self, name: str, tap: Tap, module: str = "", point: str = "post") -> None:
        self.name = name
        self.tap = tap
        self.module = module
        self.point = point
        self.raw_shape: tuple[int, ...] | None = None
        self.projection: torch.Tensor | None = None
        self.reservoir = (
            Reservoir(tap.budget.samples, tap.budget.seed, getattr(torch, tap.budget.dtype))
            if tap.budget.samples
            else None
        )
        self._device_projection: torch.Tensor | None = None

    def reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Pool and project one captured batch (without graph; the dtype is cast on copy).

        Raises:
            CaptureError: pooling asked for a tensor that is no 1-D or 2-D feature map.
        """
        tap = self.tap
        with torch.no_grad():
            x = tensor.detach()
            if self.raw_shape is None:
                self.raw_shape = tuple(x.shape[1:])
            if tap.budget.pool is not None:
                x = self._pool(x, tap.budget.pool)
            if tap.budget.project is not None:
                x = as_samples(x).float() @ self._matrix(x, tap.budget.project)
            return x

    def _pool(self, x: torch.Tensor, s: int) -> torch.Tensor:
        if x.ndim == 4:
            return F.adaptive_avg_pool2d(x, s)
        if x.ndim == 3:
            return F.adaptive_avg_pool1d(x, s)
        raise CaptureError(
            f"tap {self.name!r} asks for stream_pool={s} of a tensor of shape {tuple(x.shape)}",
            expected="a conv map (N, C, H, W) or (N, C, L)",
            got=f"{x.ndim}-D tensor",
            fix="drop pool from this tap's Stream(...) budget, or use project to cut its width",
        )

    def _matrix(self, x: torch.Tensor, m: int) -> torch.Tensor:
        d = math.prod(x.shape[1:])
        if self.projection is None:
            self.projection = random_projection(d, m, self.tap.budget.seed)
        if self._device_projection is None or self._device_projection.device != x.device:
            self._device_projection = self.projection.to(x.device)
        return self._device_projection

    def attrs(self, coordinates: str) -> dict[str, Any]:
        """The stored variable's attrs: the tap, its budget (``stream_*`` keys), the raw shape.

        ``coordinates`` names the variable's non-dimension coordinates (CF convention).
        """
        tap = self.tap
        attrs: dict[str, Any] = {
            "tap_module": self.module,
            "tap_point": self.point,
            "dtype": tap.budget.dtype,
            "coordinates": coordinates,
            "stream_every": tap.budget.every,
            "stream_samples": tap.budget.samples,
            "stream_pool": tap.budget.pool,
            "stream_project": tap.budget.project,
            "stream_seed": tap.budget.seed,
            "stream_dtype": tap.budget.dtype,
            "raw_shape": list(self.raw_shape or ()),
        }
        if self.projection is not None:
            attrs["projection"] = f"{self.name}_projection"
        return attrs
