"""The math of the Choi–Rhee representation regularizers (docs/methods.md §6), as plain functions.

``Z`` is a layer's post-activation over a batch, ``N`` samples × ``u`` units (trailing
dimensions are flattened into units). The penalties of Table 5 of Choi & Rhee, "On the
statistical and information theoretical characteristics of DNN representations" (and
Choi & Rhee, AAAI 2019, for the class-wise forms), with the conventions of the public code:

- CR (DeCov): ``½(‖C‖_F² − ‖diag C‖²) = Σ_{i<j} c_ij²``, ``C`` the biased covariance
  ``(1/N)·Σ_n (z^n − μ)(z^n − μ)ᵀ``;
- VR: ``Σ_i v_i``, the population variances (the trace of ``C``);
- L1R: ``Σ_n Σ_i |z_i^n|`` (``reduction="mean"``: divided by ``N``);
- RR: the stable rank ``‖Z‖_F²/‖Z‖₂²`` (eq. 7) through its Hölder lower bound (eq. 9)
  ``‖Z‖_F² / (‖Z‖₁·‖Z‖_∞)``, ``‖Z‖₁`` the largest absolute column (unit) sum and ``‖Z‖_∞``
  the largest absolute row (sample) sum; an all-zero ``Z`` gives 0;
- cw-CR, cw-VR, cw-RR: the same on each class's samples ``S_k`` (class-wise statistics,
  eqs. 11–13), summed over the classes **present** in the batch (an absent class adds 0,
  where the public code returns NaN; cw-RR sums every class, where it returns the last).

``normalize=True`` divides by the number of terms: ``u(u−1)/2`` for CR, ``u`` for VR, L1R and
RR, times the class count ``C = n_classes`` for the class-wise forms (the public code's
factors; a one-unit CR divides by 1). Half-precision inputs are computed in float32; the
result keeps the autograd graph.

``channels=True`` reads a map ``(N, C, *spatial)`` with its channels as the units and every
position of every sample as a sample (``N·H·W`` samples of ``C`` units, as batch norm does),
without copying the map into that layout; class labels stay one per map (``N``). The value
equals the function of ``z.movedim(1, -1).reshape(-1, C)`` with the labels repeated per
position, except L1R's: its sum is over the batch's ``N`` maps, each map's positions
averaged (``reduction="sum"`` divides by ``H·W``, ``"mean"`` by ``N·H·W``), so a map counts
as one sample of the batch whatever its size, and, L1R being elementwise, the normalized
value is the same with either unit convention: ``Σ|z| / (C·H·W)`` per map, as the flattened
map's ``C·H·W`` units give (a sum over all ``N·H·W`` positions would weigh a map ``H·W``
times a vector of the same mean ``|z|``: 16× on the digits ``cnn``'s last ``4 × 4`` map,
196× on its ``14 × 14`` map of 28-pixel inputs).

How the cost is kept to a few passes over ``Z`` (a training step calls these on every batch):
classes enter as a one-hot ``(N, C)`` matrix (no sort, padding or ``unique``); VR and the
covariance of a map are custom autograd functions whose backward is the closed-form
gradient (``2(z − μ_k)/n_k`` for VR, ``(G_k + G_kᵀ)(z − μ_k)`` for ``C_k``, one pass or one
batched product); RR's absolute sums are one function whose backward touches only the
rows and columns that attain the maxima. CR of ``N < u`` rows uses the ``N × N`` Gram matrix
(``‖C‖_F² = ‖Z_c Z_cᵀ‖_F²/N²``). These closed-form backwards are first-order only (a
second derivative through them raises).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch.autograd.function import once_differentiable

from infoshape.errors import ConfigError
from infoshape.math.linalg import (
    full_precision,
    nonempty_samples,
    paired_labels,
    require_class_labels,
)

__all__ = ["cr", "cw_cr", "cw_rr", "cw_vr", "l1r", "rr", "vr"]

Reduction = Literal["sum", "mean"]


# ------------------------------------------------------------------ inputs
def _samples(z: torch.Tensor, who: str, channels: bool = False) -> torch.Tensor:
    """``z`` as ``(N, u, P)``: ``P`` positions per sample (1 unless ``channels``), ``N ≥ 1``.

    Floats of 32 bits or more are kept, half precision is upcast to float32; no copy of a
    float32 map is made.
    """
    z = torch.as_tensor(z)
    wide = z.is_floating_point() and z.dtype not in (torch.float16, torch.bfloat16)
    dtype = z.dtype if wide else torch.float32
    x = nonempty_samples(z, who, dtype)  # (N, features): a view of a float32 map
    return x.reshape(len(x), z.shape[1], -1) if channels and z.ndim >= 3 else x[:, :, None]


def _onehot(x: torch.Tensor, labels: torch.Tensor, n_classes: int, who: str) -> torch.Tensor:
    """The labels of ``x``'s ``N`` samples as a one-hot ``(N, K)`` float matrix.

    ``K = min(N, n_classes)`` columns: the classes present in the batch, in class order,
    then empty columns (an empty group adds nothing to any penalty). Per-class tensors stay
    as small as the batch, and the shape depends on no value: no host sync, no graph break
    under ``torch.compile``.
    """
    labels = paired_labels(x, labels, who)
    if not isinstance(n_classes, int) or isinstance(n_classes, bool) or n_classes < 1:
        raise ConfigError(
            f"{who}: n_classes must be a positive int",
            expected="the number of classes C >= 1",
            got=repr(n_classes),
            fix="pass the task's number of classes (the model's output width)",
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ConfigError(
            f"{who}: labels must be class indices in [0, n_classes)",
            expected=f"integer labels in [0, {n_classes - 1}]",
            got=f"{labels.dtype} labels",
            fix="pass the batch's integer class labels and the number of classes",
        )
    require_class_labels(
        labels,
        n_classes,
        who,
        fix="pass the batch's integer class labels and the number of classes",
    )
    present = (labels[:, None] == torch.arange(n_classes, device=x.device)).any(0)
    slot = (present.cumsum(0) - 1)[labels]  # the rank of each label's class among those present
    return torch.nn.functional.one_hot(slot, min(len(labels), n_classes)).to(x.dtype)


def _counts(x: torch.Tensor, onehot: torch.Tensor | None) -> torch.Tensor:
    """Samples per group ``M_k`` (``n_k·P``): ``(K,)``, ``K = 1`` for the whole batch."""
    if onehot is None:
        return x.new_full((1,), x.shape[0] * x.shape[2])
    return onehot.sum(0) if x.shape[2] == 1 else onehot.sum(0) * x.shape[2]


def _by_group(per_sample: torch.Tensor, onehot: torch.Tensor | None) -> torch.Tensor:
    """Sum a ``(N, ...)`` tensor over each group's samples: ``(K, ...)``."""
    if onehot is None:
        return per_sample.sum(0, keepdim=True)
    return (onehot.mT @ per_sample.reshape(len(onehot), -1)).reshape(-1, *per_sample.shape[1:])


def _per_sample(per_group: torch.Tensor, onehot: torch.Tensor | None, n: int) -> torch.Tensor:
    """Each sample's row of a ``(K, ...)`` per-group tensor: ``(N, ...)``."""
    if onehot is None:
        return per_group.expand(n, *per_group.shape[1:])
    return (onehot @ per_group.reshape(len(per_group), -1)).reshape(n, *per_group.shape[1:])


def _centered(x: torch.Tensor, onehot: torch.Tensor | None, counts: torch.Tensor) -> torch.Tensor:
    """``x`` minus its group's mean (eq. 11), computed without autograd."""
    if onehot is None:
        return x - x.mean((0, 2), keepdim=True)
    sums = x[:, :, 0] if x.shape[2] == 1 else x.sum(2)
    means = (onehot.mT @ sums) / counts.clamp_min(1)[:, None]
    return x - (onehot @ means)[:, :, None]


def _sample_norms(x: torch.Tensor) -> torch.Tensor:
    """``‖x_n‖²`` of each sample's ``u × P`` block, one pass and no temporary: ``(N,)``."""
    flat = x.reshape(len(x), 1, -1)
    return torch.bmm(flat, flat.mT).reshape(-1)


# ------------------------------------------------------------------ autograd functions
class _GroupVariance(torch.autograd.Function):
    """``Σ_k V_k``, ``V_k = Σ_{n∈k} ‖x_n − μ_k‖² / M_k``: the groups' population variances.

    One weighted dot product (``w_n = 1/M_k`` of the sample's group); backward
    ``∂/∂x_n = 2 w_n (x_n − μ_k)``, the saved weighted deviations (the mean's term sums to
    zero).
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, onehot: torch.Tensor | None, counts: torch.Tensor
    ) -> torch.Tensor:
        centered = _centered(x, onehot, counts)
        inverse = 1 / counts.clamp_min(1)
        weights = inverse if onehot is None else onehot @ inverse
        weighted = centered * weights[:, None, None]
        ctx.save_for_backward(weighted)
        return torch.dot(centered.reshape(-1), weighted.reshape(-1))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (weighted,) = ctx.saved_tensors
        return weighted * (2 * grad), None, None


class _GroupCovariance(torch.autograd.Function):
    """``C_k = Σ_{n∈k} (x_n − μ_k)(x_n − μ_k)ᵀ / M_k`` of maps ``(N, u, P)``: ``(K, u, u)``.

    One ``u × u`` product per sample (batched); backward ``∂/∂x_n = (G_k + G_kᵀ)(x_n − μ_k)
    / M_k`` for the incoming ``G``, one batched product (the mean's term sums to zero).
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, onehot: torch.Tensor | None, counts: torch.Tensor
    ) -> torch.Tensor:
        centered = _centered(x, onehot, counts)
        ctx.save_for_backward(centered, onehot, counts)
        grams = torch.bmm(centered, centered.mT)
        return _by_group(grams, onehot) / counts.clamp_min(1)[:, None, None]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        centered, onehot, counts = ctx.saved_tensors
        sym = (grad + grad.mT) / counts.clamp_min(1)[:, None, None]
        return torch.bmm(_per_sample(sym, onehot, len(centered)), centered), None, None


class _AbsoluteSums(torch.autograd.Function):
    """Of ``x`` ``(N, u, P)``: ``‖x_n‖²`` ``(N,)``, ``Σ_p |x|`` ``(N, u)``, ``Σ_i |x|`` ``(N, P)``.

    Backward: ``2 g_n x + sign(x)·(g_ni + g_np)``; for maps (``P > 1``) the second term is
    added only where the incoming gradients are non-zero (after a maximum: the rows and
    columns that attain it), sparing full passes over the map.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(x)
        magnitude = x.abs()
        return _sample_norms(x), magnitude.sum(2), magnitude.sum(1)

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any,
        norms: torch.Tensor | None,
        units: torch.Tensor | None,
        positions: torch.Tensor | None,
    ) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        grad = x * (2 * norms)[:, None, None] if norms is not None else torch.zeros_like(x)
        if x.shape[2] == 1:  # rows: dense is cheaper than finding the non-zeros
            zero = x.new_zeros(())
            by_unit = zero if units is None else units[:, :, None]
            by_position = zero if positions is None else positions[:, None, :]
            return grad.addcmul_(x.sign(), by_unit + by_position)
        if units is not None:
            n, i = units.nonzero(as_tuple=True)
            grad[n, i] += x[n, i].sign() * units[n, i, None]
        if positions is not None:
            n, p = positions.nonzero(as_tuple=True)
            grad[n, :, p] += x[n, :, p].sign() * positions[n, p, None]
        return grad


class _GramCovariance(torch.autograd.Function):
    """``Σ_k Σ_{i<j} c_ij²`` over the groups of rows ``(m, u)``, from the ``m × m`` Gram matrix.

    With ``A = Z_c Z_cᵀ`` (rows centred per group), ``W_ab = 1/n_k²`` for ``a, b`` of the
    same group ``k`` (else 0) and ``v_k`` the group's variances, the sum is
    ``½(Σ_ab W_ab A_ab² − Σ_k ‖v_k‖²)``; backward ``∂/∂z_a = 2(Σ_b W_ab A_ab z_c^b −
    v_k ⊙ z_c^a / n_k)``: one ``m × m × u`` product each way (the mean's term sums to zero).
    """

    @staticmethod
    def forward(
        ctx: Any, rows: torch.Tensor, onehot: torch.Tensor | None, counts: torch.Tensor
    ) -> torch.Tensor:
        centered = _centered(rows[:, :, None], onehot, counts)[:, :, 0]
        counts = counts.clamp_min(1)
        variances = _by_group(centered.square(), onehot) / counts[:, None]
        if onehot is None:
            same_group = 1 / counts.square()  # (1,): every pair
        else:
            scaled = onehot / counts
            same_group = scaled @ scaled.mT
        gram = centered @ centered.mT
        weighted = gram * same_group  # W ⊙ A
        frobenius = torch.dot(weighted.reshape(-1), gram.reshape(-1))
        total = (frobenius - torch.dot(variances.reshape(-1), variances.reshape(-1))) / 2
        shrink = variances / counts[:, None]
        shrink = shrink if onehot is None else onehot @ shrink
        ctx.save_for_backward(centered, weighted, shrink, total >= 0)
        return total.clamp_min(0.0)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        centered, weighted, shrink, kept = ctx.saved_tensors
        pulled = torch.addcmul(weighted @ centered, shrink, centered, value=-1)
        return pulled.mul_(2 * grad * kept), None, None


# ------------------------------------------------------------------ per-group terms
def _flat_rows(
    x: torch.Tensor, onehot: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Maps ``(N, u, P)`` as ``(N·P, u)`` rows (a copy when ``P > 1``), one-hot repeated."""
    positions = x.shape[2]
    rows = x.movedim(2, 1).reshape(-1, x.shape[1])
    if onehot is not None and positions > 1:
        onehot = onehot.repeat_interleave(positions, 0)
    return rows, onehot


def _covariance_total(x: torch.Tensor, onehot: torch.Tensor | None) -> torch.Tensor:
    """``Σ_k Σ_{i<j} c_ij²`` over the groups' biased covariances (eq. 12): a scalar.

    Maps with no more channels than positions use :class:`_GroupCovariance` (per-sample
    ``u × u`` products, no copy of the map). Otherwise the rows ``(N·P, u)`` are centred
    per group; with fewer rows ``m`` than units, ``‖C_k‖_F²`` comes from the ``m × m`` Gram
    matrix restricted to same-group pairs (``Σ_{a,b∈k} (z_c^a·z_c^b)²/n_k²``), otherwise
    each group's covariance is formed from its own rows. Selecting a group's rows has a
    data-dependent shape (a host sync on an accelerator, a graph break under
    ``torch.compile``), so there the Gram form is used whatever the shape.
    """
    u = x.shape[1]
    if x.shape[2] > 1 and u <= x.shape[2]:
        cov = _GroupCovariance.apply(x, onehot, _counts(x, onehot))
        return torch.triu(cov, diagonal=1).square().sum()
    rows, onehot = _flat_rows(x, onehot)
    counts = _counts(rows[:, :, None], onehot)
    on_host = rows.device.type == "cpu" and not torch.compiler.is_compiling()
    if len(rows) < u or (onehot is not None and not on_host):
        return _GramCovariance.apply(rows, onehot, counts)
    counts = counts.clamp_min(1)  # each group's covariance: exact off-diagonal sum
    centered = rows - _per_sample(_by_group(rows, onehot) / counts[:, None], onehot, len(rows))
    # one class at a time: memory of the rows, not of classes × rows
    groups = [centered] if onehot is None else [centered[column > 0] for column in onehot.mT]
    sums = torch.stack([torch.triu(g.mT @ g, diagonal=1).square().sum() for g in groups])
    return (sums / counts.square()).sum()  # C_k = Σ_{n∈k} c_n c_nᵀ / n_k


def _variance_total(x: torch.Tensor, onehot: torch.Tensor | None) -> torch.Tensor:
    """``Σ_k Σ_i v_i`` over the groups, population variances (eq. 13): a scalar."""
    return _GroupVariance.apply(x, onehot, _counts(x, onehot))


def _rank_terms(x: torch.Tensor, onehot: torch.Tensor | None) -> torch.Tensor:
    """``‖Z‖_F² / (‖Z‖₁‖Z‖_∞)`` of each group (eq. 9), 0 for an all-zero group: ``(K,)``."""
    norms, unit_sums, position_sums = _AbsoluteSums.apply(x)
    frobenius = _by_group(norms, onehot)
    column = _by_group(unit_sums, onehot).amax(1)
    if onehot is None:
        row = position_sums.amax()[None]
    else:  # the largest row sum among each class's rows (absent classes: 0)
        index = onehot.argmax(1)[:, None].expand(position_sums.shape).reshape(-1)
        row = position_sums.new_zeros(onehot.shape[1])
        row = row.scatter_reduce(0, index, position_sums.reshape(-1), "amax", include_self=False)
    bound = column * row
    return frobenius / torch.where(bound > 0, bound, torch.ones_like(bound))


def _total(total: torch.Tensor, count: float, normalize: bool) -> torch.Tensor:
    return total / count if normalize else total


def _pairs(u: int) -> int:
    return max(u * (u - 1) // 2, 1)


# ------------------------------------------------------------------ the regularizers
@full_precision
def cr(z: torch.Tensor, normalize: bool = False, *, channels: bool = False) -> torch.Tensor:
    """CR (DeCov): ``½(‖C‖_F² − ‖diag C‖²)`` of the batch covariance; ``/ (u(u−1)/2)``."""
    x = _samples(z, "cr", channels)
    return _total(_covariance_total(x, None), _pairs(x.shape[1]), normalize)


@full_precision
def vr(z: torch.Tensor, normalize: bool = False, *, channels: bool = False) -> torch.Tensor:
    """VR: ``Σ_i Var(z_i)``, population variances over the batch; normalized ``/ u``."""
    x = _samples(z, "vr", channels)
    return _total(_variance_total(x, None), x.shape[1], normalize)


@full_precision
def l1r(
    z: torch.Tensor,
    normalize: bool = False,
    reduction: Reduction = "sum",
    *,
    channels: bool = False,
) -> torch.Tensor:
    """L1R: ``Σ_n Σ_i |z_i^n|``; ``reduction="mean"`` divides by ``N``, ``normalize`` by ``u``.

    With ``channels``, a map ``(N, C, *spatial)`` has ``u = C`` units and each map's ``P``
    positions are averaged: ``Σ_n (1/P) Σ_p Σ_c |z_{c,p}^n|`` (``"mean"``: ``/ N`` more),
    so ``normalize=True`` gives the value of the flattened map (module docstring).
    """
    if reduction not in ("sum", "mean"):
        raise ConfigError(
            "l1r: unknown reduction",
            expected='"sum" (over the batch, as the paper) or "mean" (over the batch)',
            got=repr(reduction),
            fix='pass reduction="sum" or reduction="mean"',
        )
    x = _samples(z, "l1r", channels)
    total = x.abs().sum() / x.shape[2]  # each map's positions averaged (P = 1 for vectors)
    total = total / x.shape[0] if reduction == "mean" else total
    return total / x.shape[1] if normalize else total


@full_precision
def rr(z: torch.Tensor, normalize: bool = False, *, channels: bool = False) -> torch.Tensor:
    """RR: the Hölder bound ``‖Z‖_F²/(‖Z‖₁‖Z‖_∞)`` on the stable rank (eq. 9); ``/ u``."""
    x = _samples(z, "rr", channels)
    return _total(_rank_terms(x, None).sum(), x.shape[1], normalize)


@full_precision
def cw_cr(
    z: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    normalize: bool = False,
    *,
    channels: bool = False,
) -> torch.Tensor:
    """cw-CR: CR of each present class's samples, summed; normalized ``/ (C·u(u−1)/2)``."""
    x = _samples(z, "cw_cr", channels)
    total = _covariance_total(x, _onehot(x, labels, n_classes, "cw_cr"))
    return _total(total, n_classes * _pairs(x.shape[1]), normalize)


@full_precision
def cw_vr(
    z: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    normalize: bool = False,
    *,
    channels: bool = False,
) -> torch.Tensor:
    """cw-VR: VR of each present class's samples, summed; normalized ``/ (C·u)``."""
    x = _samples(z, "cw_vr", channels)
    total = _variance_total(x, _onehot(x, labels, n_classes, "cw_vr"))
    return _total(total, n_classes * x.shape[1], normalize)


@full_precision
def cw_rr(
    z: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    normalize: bool = False,
    *,
    channels: bool = False,
) -> torch.Tensor:
    """cw-RR: RR of each present class's samples, summed over classes; normalized ``/ (C·u)``."""
    x = _samples(z, "cw_rr", channels)
    terms = _rank_terms(x, _onehot(x, labels, n_classes, "cw_rr"))
    return _total(terms.sum(), n_classes * x.shape[1], normalize)
