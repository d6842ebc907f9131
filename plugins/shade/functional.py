"""SHADE's functional API: ``p(Z=1 | y)``, Ω (eq. 11) with its closed-form gradient.

No session needed: :func:`p_active` and :func:`shade_penalty` work on any batch of
pre-activations; the plugin (:mod:`infoshape.plugins.shade.plugin`) and the moving
averages (:mod:`infoshape.plugins.shade.averages`) build on them.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from infoshape.errors import CaptureError, ConfigError
from infoshape.math.linalg import full_precision

__all__ = ["PZ", "P_Z", "p_active", "shade_penalty"]

P_Z = ("exp", "sigmoid")
"""The choices of ``p(Z=1 | y)``: ``1 − exp(−ReLU(y))`` (the paper) or ``sigmoid(y)``."""

PZ = Literal["exp", "sigmoid"]


def p_active(y: torch.Tensor, p_z: PZ = "exp") -> torch.Tensor:
    """``p(Z=1 | y)`` elementwise (§3.3): ``1 − exp(−ReLU(y))`` or ``sigmoid(y)``.

    Raises:
        ConfigError: for an unknown ``p_z``.
    """
    _check_p_z(p_z)
    if p_z == "exp":
        return -torch.expm1(-y.clamp_min(0.0))
    return torch.sigmoid(y)


def _check_p_z(p_z: str) -> None:
    if p_z not in P_Z:
        raise ConfigError(
            "unknown p(Z=1|y) form",
            expected=" or ".join(map(repr, P_Z)),
            got=repr(p_z),
            fix='use p_z="exp" (the paper) or p_z="sigmoid"',
        )


def _unit_layout(y: torch.Tensor, channel_dim: int) -> tuple[int, list[int], list[int]]:
    """``(units, reduce dims, broadcast shape)`` of ``y`` with units along ``channel_dim``."""
    if y.ndim < 2:
        raise CaptureError(
            "SHADE needs a batch of activations",
            expected="a tensor (N, units) or (N, channels, ...)",
            got=f"a tensor of shape {tuple(y.shape)}",
            fix="tap a module whose input carries a batch dimension",
        )
    d = channel_dim % y.ndim
    if d == 0:
        raise ConfigError(
            "channel_dim names the batch dimension",
            expected="the units' dimension (1 for (N, u) and (N, C, H, W))",
            got=f"channel_dim={channel_dim} for a tensor of shape {tuple(y.shape)}",
            fix="use channel_dim=1 (or -1 for (N, T, features))",
        )
    shape = [1] * y.ndim
    shape[d] = y.shape[d]
    return y.shape[d], [k for k in range(y.ndim) if k != d], shape


class _Omega(torch.autograd.Function):
    """One layer's Ω (eq. 11, batch mean) from per-unit sums, with a closed-form gradient.

    With ``d = y − μ⁰``, ``c = μ⁰ − μ¹`` and ``p = p(Z=1|y)``, the element of eq. 11 is
    ``(1 − p) d² + p (d + c)² = d² + p (2cd + c²)``, so a unit's Ω needs only the sums
    ``Σd``, ``Σd²``, ``Σq`` and ``Σqd`` over its samples, where ``q = 1 − p = p(Z=0|y)``:
    ``n Ω_u = Σd² + 2c(Σd − Σqd) + c²(n − Σq)``. Centering on ``μ⁰`` keeps the sums free of
    cancellation when the activations sit at the averages (Ω → 0). The same sums give
    Algorithm 1's batch means (``mean p``, ``mean p·y``, ``mean y``), returned (not
    differentiable) for the update at step end: nothing is recomputed.

    Gradient: ``n dΩ/dy = 2d + c (2p + p′(y)(2d + c))`` with ``p′ = q 1(y > 0)`` for
    ``"exp"``, so ``c 1(y > 0)(2 + q(2d + c − 2))``, and ``p′ = pq`` for ``"sigmoid"``, so
    ``c p (2 + q(2d + c))``. The moving averages get no gradient (§3.3). About a third of
    the passes over the activations of autograd's graph of the same expression.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, y: torch.Tensor, mu: torch.Tensor, p_z: PZ, channel_dim: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        units, dims, shape = _unit_layout(y, channel_dim)
        if mu.shape != (2, units):
            raise CaptureError(
                "the moving averages do not fit the activations",
                expected=f"mu of shape (2, {units})",
                got=f"mu of shape {tuple(mu.shape)}",
                fix="keep the layer's width fixed during a session (or start a new one)",
            )
        _check_p_z(p_z)
        mu = mu.to(device=y.device, dtype=y.dtype)
        mu0, c = mu[0], mu[0] - mu[1]
        n = y.numel() // units
        d = y - mu0.view(shape)
        # q = p(Z=0|y): exp(−ReLU(y)), or 1 − sigmoid(y)
        q = torch.relu(y).neg_().exp_() if p_z == "exp" else torch.sigmoid(y).neg_().add_(1.0)
        product = torch.mul(q, d)  # one buffer for both products
        sum_p, sum_qd = n - q.sum(dims), product.sum(dims)
        sum_d, sum_dd = d.sum(dims), torch.mul(d, d, out=product).sum(dims)  # per unit
        sum_pd = sum_d - sum_qd
        omega = (sum_dd + c * (2.0 * sum_pd + c * sum_p)).sum() / n
        # Algorithm 1's batch means: p(Z=1), p(Z=1)·y and y
        means = torch.stack((sum_p, sum_pd + mu0 * sum_p, sum_d + n * mu0)) / n
        ctx.p_z, ctx.shape, ctx.n = p_z, shape, n
        ctx.save_for_backward(y, d, q, c)
        ctx.mark_non_differentiable(means)
        return omega, means

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, grad: torch.Tensor, _grad_means: torch.Tensor | None
    ) -> tuple[torch.Tensor, None, None, None]:
        y, d, q, c = ctx.saved_tensors
        scale = grad / ctx.n
        c = c.view(ctx.shape)
        if ctx.p_z == "exp":  # c 1(y > 0)(2 + q(2d + c − 2))
            g = torch.add(c - 2.0, d, alpha=2.0).mul_(q).add_(2.0)
            torch.ops.aten.threshold_backward(g, y, 0.0, grad_input=g)  # ReLU's backward kernel
        else:  # c p (2 + q(2d + c)) with p = 1 − q
            g = torch.add(c, d, alpha=2.0).mul_(q).add_(2.0)
            g.addcmul_(g, q, value=-1.0)
        g.mul_(c * scale).addcmul_(d, 2.0 * scale)
        return g, None, None, None


@full_precision
def _omega(
    y: torch.Tensor, mu: torch.Tensor, p_z: PZ, channel_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Ω, batch means)`` of one layer (:class:`_Omega`); ``mu`` is taken as a constant."""
    return _Omega.apply(y, mu.detach(), p_z, channel_dim)


def shade_penalty(
    y: torch.Tensor, mu: torch.Tensor, p_z: PZ = "exp", channel_dim: int = 1
) -> torch.Tensor:
    """SHADE's ``Ω`` of one layer (eq. 11, batch mean): ``Σ_u mean_k Σ_z p(z|y)(y − μ^z)²``.

    Args:
        y: pre-activations ``(N, u)`` or ``(N, C, ...)``; spatial positions of a channel
            count as samples.
        mu: ``(2, u)``: ``mu[0] = μ⁰``, ``mu[1] = μ¹`` (treated as constants: detached).
        p_z: ``"exp"`` or ``"sigmoid"`` (:func:`p_active`).
        channel_dim: the units' dimension of ``y``.

    Returns:
        a scalar tensor, differentiable in ``y`` (through ``y`` and ``p(z|y)``).
    """
    return _omega(y, mu, p_z, channel_dim)[0]
