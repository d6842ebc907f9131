"""The moving averages of SHADE's Algorithm 1 for one layer (:class:`ShadeAverages`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from infoshape.errors import CaptureError
from infoshape.plugins.shade.functional import PZ, _unit_layout, p_active

__all__ = ["ShadeAverages"]


class ShadeAverages:
    """The moving averages of Algorithm 1 for one layer: ``p`` and ``mu``, each ``(2, u)``.

    Row ``z`` of ``p`` estimates ``p(Z=z)`` and row ``z`` of ``mu`` estimates ``E(Y | Z=z)``.

    Args:
        units: number of units (features or channels).
        decay: λ of Algorithm 1.
        device: where the averages live (the layer's device).
        dtype: their dtype: the layer's, float32 at least (half-precision activations
            under autocast keep float32 averages).
    """

    def __init__(
        self, units: int, decay: float = 0.8, device: Any = None, dtype: torch.dtype | None = None
    ) -> None:
        self.decay = float(decay)
        dtype = torch.float64 if dtype == torch.float64 else torch.float32
        self.p = torch.full((2, units), 0.5, device=device, dtype=dtype)
        self.mu = torch.tensor([[-1.0], [1.0]], device=device, dtype=dtype).repeat(1, units)

    @torch.no_grad()
    def update(
        self,
        y: torch.Tensor,
        p1: torch.Tensor | None = None,
        p_z: PZ = "exp",
        channel_dim: int = 1,
    ) -> None:
        """One step of Algorithm 1 on the batch ``y`` (``p1 = p(Z=1|y)`` if already known)."""
        units, dims, _ = _unit_layout(y, channel_dim)
        self._check_width(units, tuple(y.shape))
        y = y.detach().to(self.p.dtype)
        p1 = (p_active(y, p_z) if p1 is None else p1.detach()).to(self.p.dtype)
        self.update_means(torch.stack((p1.mean(dims), (p1 * y).mean(dims), y.mean(dims))))

    @torch.no_grad()
    def update_means(self, means: torch.Tensor) -> None:
        """One step of Algorithm 1 from a batch's means per unit, ``(3, u)``.

        Rows: ``mean_k p(Z=1|y_k)``, ``mean_k p(Z=1|y_k) y_k`` and ``mean_k y_k`` (the
        second row of ``p(Z=0|y)`` follows from them: ``1 − p`` and ``y − p·y``).
        """
        self._check_width(means.shape[-1], tuple(means.shape))
        m1, m1y, my = means.detach().to(device=self.p.device, dtype=self.p.dtype)
        batch_p = torch.stack((1.0 - m1, m1))
        batch_py = torch.stack((my - m1y, m1y))
        lam = self.decay
        self.p.mul_(lam).add_(batch_p, alpha=1.0 - lam)
        tiny = torch.finfo(self.p.dtype).tiny
        self.mu.mul_(lam).add_(batch_py / self.p.clamp_min(tiny), alpha=1.0 - lam)

    def _check_width(self, units: int, shape: tuple[int, ...]) -> None:
        if units != self.p.shape[1]:
            raise CaptureError(
                "the layer's width changed",
                expected=f"{self.p.shape[1]} units",
                got=f"{units} units in a tensor of shape {shape}",
                fix="keep the layer's width fixed during a session (or start a new one)",
            )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"p": ..., "mu": ...}`` (copies on CPU)."""
        return {"p": self.p.detach().cpu().clone(), "mu": self.mu.detach().cpu().clone()}

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], decay: float = 0.8, device: Any = None
    ) -> ShadeAverages:
        """Averages restored from :meth:`state_dict`, in their saved dtype, on ``device``."""
        p = torch.as_tensor(state["p"])
        averages = cls(p.shape[1], decay, device, p.dtype)
        averages.p.copy_(p)
        averages.mu.copy_(torch.as_tensor(state["mu"]))
        return averages
