"""The ``ksg`` plugin: Kraskov–Stögbauer–Grassberger k-nearest-neighbour mutual information.

Continuous–continuous (KSG algorithm 1, Kraskov et al., Phys. Rev. E 69, 066138, 2004, eq. 8):
``I(X;Y) = ψ(k) + ψ(N) − ⟨ψ(n_x + 1) + ψ(n_y + 1)⟩``, where ``ε_i`` is the max-norm distance
from sample ``i`` to its ``k``-th neighbour in the joint space (``max(‖Δx‖_∞, ‖Δy‖_∞)``) and
``n_x(i)`` counts the other samples with ``‖x_j − x_i‖_∞ < ε_i`` (strictly).

Continuous–discrete (Ross, PLoS ONE 9(2): e87357, 2014, eq. 2), for ``I(T;Y)`` with labels:
``I = ψ(N) + ⟨ψ(k_i)⟩ − ⟨ψ(N_{y_i})⟩ − ⟨ψ(m_i)⟩``, ``d_i`` the max-norm distance to the
``k_i = min(k, N_{y_i} − 1)``-th neighbour of the same class and ``m_i`` the samples of any
class (``i`` included) strictly closer than ``d_i``, as scikit-learn computes it; samples
alone in their class are left out.

Ties (ReLU zeros, repeated or constant inputs). The estimators assume continuous variables;
on exact ties ``ε_i`` can be 0 and the counts lose their meaning. As Kraskov et al. (2004)
recommend and scikit-learn's ``mutual_info_regression`` / ``mutual_info_classif`` do, each
feature is standardized (zero mean, unit variance; constant features kept at 0) and then gets
**its own independent** Gaussian noise of standard deviation ``jitter`` (default ``1e-10``)
times the feature's root mean square (1 for an all-zero feature). That is far below any real
difference and far above float64 resolution, so a block of tied samples behaves like one value
of a discrete variable: a ReLU layer against independent data gives ≈ 0, ``I(X;X)`` of a
variable with 10 equiprobable values ≈ ``log 10``, two constants ≈ 0, as scikit-learn (within
0.05 nats, tested). X and Y draw from two streams of a generator seeded with ``seed``; the
streams go to the two variables in the order of a digest of their values, so the result is
reproducible, ``I(X;Y) = I(Y;X)`` exactly, and identical arguments still get independent
noise (one shared noise made ``X = Y`` for two constants: 4–6 nats before).

Estimates are not clamped (they can be slightly negative, so averages over seeds or units
stay unbiased); :func:`information_plane` reports ``max(0, ·)``, as scikit-learn does.
Non-finite input raises :class:`~infoshape.errors.NonFiniteError`. Neighbours: a k-d tree
(``scipy.spatial.cKDTree``, max-norm; counts within ``nextafter(ε, 0)`` as scikit-learn; in
one dimension binary search in the sorted values) when the joint space (``t`` alone for
labels) has at most ``TREE_MAX_DIM`` dimensions, else brute force in row chunks (exact,
``O(N²(d_x + d_y))`` time); both give identical results. Not differentiable. Nats.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from scipy.spatial import cKDTree

from infoshape.errors import ConfigError
from infoshape.math.linalg import as_samples, paired_labels, require_finite
from infoshape.plugin import EstimatorPlugin
from infoshape.registry import Estimator

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = [
    "KSG",
    "TREE_MAX_DIM",
    "information_plane",
    "mutual_information",
    "mutual_information_mixed",
]

TREE_MAX_DIM = 12  # k-d tree up to this many dims (measured faster than brute at N = 1000-4000)
_CHUNK_ELEMENTS = 1 << 22  # distances held at once per matrix (32 MiB in float64)


def _prepare(
    vs: list[tuple[str, torch.Tensor | ArrayLike]], standardize: bool, jitter: float, seed: int
) -> list[torch.Tensor]:
    """Finite float64 ``(N, d)`` copies of ``vs``, standardized, each with its own noise."""
    out = []
    for what, v in vs:
        v = require_finite(as_samples(torch.as_tensor(v).detach(), torch.float64), "ksg", what)
        if standardize and v.shape[0] > 0:
            std = v.std(dim=0, correction=0)
            v = (v - v.mean(dim=0)) / torch.where(std > 0, std, torch.ones_like(std))
        out.append(v)
    if jitter:
        digest = [
            hashlib.blake2b(str(v.shape).encode() + v.cpu().numpy().tobytes()).digest() for v in out
        ]
        for stream, i in enumerate(sorted(range(len(out)), key=digest.__getitem__)):
            v = out[i]
            rms = v.square().mean(dim=0).sqrt()
            scale = jitter * torch.where(rms > 0, rms, torch.ones_like(rms))
            noise = np.random.default_rng([seed, stream]).standard_normal(tuple(v.shape))
            out[i] = v + scale * torch.from_numpy(noise).to(v.device)
    return out


def _check_k(k: int, n: int, what: str) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1 or n <= k:
        raise ConfigError(
            f"ksg: {what} needs more samples than neighbours",
            expected="an int k >= 1 and more than k samples",
            got=f"k={k!r}, {n} samples",
            fix="pass k=3 (the default) and at least a few dozen samples",
        )


def _use_tree(search: str, *dims: int) -> bool:
    if search not in ("auto", "tree", "brute"):
        raise ConfigError(
            "ksg: unknown neighbour search",
            expected='search="auto", "tree" or "brute"',
            got=repr(search),
            fix='leave search="auto" (a k-d tree in low dimension, else brute force)',
        )
    usable = all(d > 0 for d in dims)
    return usable and (search == "tree" or (search == "auto" and sum(dims) <= TREE_MAX_DIM))


def _chunks(n: int) -> Iterator[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(n, 1))
    return (slice(i, min(i + step, n)) for i in range(0, n, step))


def _cheb(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b, p=float("inf")) if a.shape[1] else a.new_zeros(len(a), len(b))


def _kth_tree(v: np.ndarray, k: int) -> np.ndarray:
    """Max-norm distance from each row of ``v`` to its ``k``-th neighbour (itself excluded)."""
    return cKDTree(v).query(v, k=[k + 1], p=np.inf)[0][:, 0]


def _closer_tree(v: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """How many other rows of ``v`` lie strictly closer than ``radius`` (max-norm) to each."""
    if v.shape[1] == 1:
        inside = _inside_sorted(v[:, 0], radius)
    else:
        r = np.nextafter(radius, 0)
        inside = cKDTree(v).query_ball_point(v, r, p=np.inf, return_length=True)
    return np.where(radius > 0, inside - 1, 0).astype(np.float64)


def _inside_sorted(v: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """``#{j : |v_j − v_i| < radius_i}`` for 1-D ``v`` by binary search in the sorted values.

    ``v_i ± radius_i`` is rounded, so the window's ends are then moved over whole blocks of
    equal values until ``|s − v_i| < radius_i``, computed as the tree and brute force do, holds
    exactly inside (it is monotone on each side of ``v_i``).
    """
    s, last = np.sort(v), len(v) - 1
    lo, hi = np.searchsorted(s, v - radius, "right"), np.searchsorted(s, v + radius, "left")

    def inside(j: np.ndarray) -> np.ndarray:
        return np.abs(s[np.clip(j, 0, last)] - v) < radius

    while True:
        moves: list[tuple[np.ndarray, np.ndarray, int, Literal["left", "right"]]] = [
            (hi, (hi <= last) & inside(hi), 0, "right"),  # s[hi] inside: past its block
            (hi, (hi > 0) & (s[np.clip(hi - 1, 0, last)] > v) & ~inside(hi - 1), -1, "left"),
            (lo, (lo > 0) & inside(lo - 1), -1, "left"),
            (lo, (lo <= last) & (s[np.clip(lo, 0, last)] < v) & ~inside(lo), 0, "right"),
        ]
        if not any(mask.any() for _, mask, _, _ in moves):
            return hi - lo
        for end, mask, shift, side in moves:
            end[mask] = np.searchsorted(s, s[end[mask] + shift], side)


def _ksg_counts(xs: torch.Tensor, ys: torch.Tensor, k: int, tree: bool) -> torch.Tensor:
    """``(n_x, n_y)`` of eq. 8 per sample, an ``(N, 2)`` float64 tensor."""
    if tree:
        x, y = xs.cpu().numpy(), ys.cpu().numpy()
        radius = _kth_tree(np.hstack([x, y]), k)
        counts = np.stack([_closer_tree(x, radius), _closer_tree(y, radius)], axis=1)
        return torch.from_numpy(counts).to(xs.device)
    n, parts = xs.shape[0], []
    for rows in _chunks(n):
        dx, dy = _cheb(xs[rows], xs), _cheb(ys[rows], ys)
        dz = torch.maximum(dx, dy)
        dz[torch.arange(dz.shape[0]), torch.arange(n)[rows]] = torch.inf  # not its own neighbour
        eps = torch.kthvalue(dz, k, dim=1).values.unsqueeze(1)
        own = (eps > 0).squeeze(1).long()  # its own distance 0 < ε_i
        parts.append(torch.stack([(dx < eps).sum(1) - own, (dy < eps).sum(1) - own], dim=1))
    return torch.cat(parts).to(torch.float64)


def mutual_information(
    x: torch.Tensor | ArrayLike,
    y: torch.Tensor | ArrayLike,
    k: int = 3,
    *,
    standardize: bool = True,
    jitter: float = 1e-10,
    seed: int = 0,
    search: str = "auto",
) -> torch.Tensor:
    """KSG (algorithm 1, Kraskov et al. 2004 eq. 8) estimate of ``I(X;Y)``, a float64 scalar.

    Args:
        x: ``(N, ...)`` samples of X (trailing dims flattened), finite.
        y: ``(N, ...)`` samples of Y, paired with ``x``, finite.
        k: neighbours in the joint space (3 is Kraskov et al.'s usual choice).
        standardize: scale each feature to zero mean and unit variance first.
        jitter: tie-breaking noise, in units of each feature's root mean square (0: none).
        seed: seed of the tie-breaking noise.
        search: ``"auto"`` (k-d tree up to ``TREE_MAX_DIM`` joint dims), ``"tree"``, ``"brute"``.

    Raises:
        NonFiniteError: ``x`` or ``y`` holds NaN or Inf.
        ConfigError: unpaired samples, ``k`` too large, an unknown ``search``.
    """
    xs, ys = _prepare([("x", x), ("y", y)], standardize, jitter, seed)
    n = xs.shape[0]
    if ys.shape[0] != n:
        raise ConfigError(
            "ksg: x and y differ in number of samples",
            expected="paired rows, one per sample in each",
            got=f"{n} and {ys.shape[0]} rows",
            fix="pass samples of the same batch",
        )
    _check_k(k, n, "mutual_information")
    counts = _ksg_counts(xs, ys.to(xs.device), k, _use_tree(search, xs.shape[1], ys.shape[1]))
    k_t, n_t = xs.new_tensor(float(k)), xs.new_tensor(float(n))
    return torch.digamma(k_t) + torch.digamma(n_t) - torch.digamma(counts + 1.0).sum(1).mean()


def mutual_information_mixed(
    t: torch.Tensor | ArrayLike,
    labels: torch.Tensor | ArrayLike,
    k: int = 3,
    *,
    standardize: bool = True,
    jitter: float = 1e-10,
    seed: int = 0,
    search: str = "auto",
) -> torch.Tensor:
    """Ross (2014, eq. 2) estimate of ``I(T;Y)`` in nats for continuous ``t``, discrete ``labels``.

    Options and errors as for :func:`mutual_information`; ``labels`` are ``(N,)`` class indices.
    """
    (ts,) = _prepare([("t", t)], standardize, jitter, seed)
    labels = require_finite(paired_labels(ts, labels, "ksg"), "ksg", "labels")
    tree = _use_tree(search, ts.shape[1])
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    keep = counts[inverse] > 1  # a sample alone in its class has no neighbour
    ts, inverse, n_class = ts[keep], inverse[keep], counts[inverse[keep]].to(torch.float64)
    n = ts.shape[0]
    _check_k(1, n, "mutual_information_mixed (in classes of two samples or more)")
    k_i, d_i = torch.empty(n, dtype=torch.float64, device=ts.device), torch.empty_like(n_class)
    for c in torch.unique(inverse):
        members = (inverse == c).nonzero().squeeze(1)
        kc, own = min(k, len(members) - 1), ts[members]
        k_i[members] = float(kc)
        if tree:
            d_i[members] = torch.from_numpy(_kth_tree(own.cpu().numpy(), kc)).to(ts.device)
            continue
        for r in _chunks(len(members)):
            dist = _cheb(own[r], own)
            dist[torch.arange(dist.shape[0]), torch.arange(len(members))[r]] = torch.inf
            d_i[members[r]] = torch.kthvalue(dist, kc, dim=1).values
    if tree:
        m = torch.from_numpy(_closer_tree(ts.cpu().numpy(), d_i.cpu().numpy())).to(ts.device)
    else:
        m = torch.cat([(_cheb(ts[r], ts) < d_i[r, None]).sum(1) for r in _chunks(n)])
        m = m.to(torch.float64) - (d_i > 0).to(torch.float64)  # i itself, when counted
    digamma_n = torch.digamma(ts.new_tensor(float(n)))
    return digamma_n + (torch.digamma(k_i) - torch.digamma(n_class) - torch.digamma(m + 1)).mean()


def information_plane(
    x: torch.Tensor | ArrayLike,
    t: torch.Tensor | ArrayLike,
    labels: torch.Tensor | ArrayLike,
    k: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(I(X;T), I(T;Y))`` in nats, each ``max(0, ·)``: KSG on ``(x, t)``, Ross on labels."""
    i_xt, i_ty = mutual_information(x, t, k), mutual_information_mixed(t, labels, k)
    return i_xt.clamp(min=0), i_ty.clamp(min=0)


class KSG(EstimatorPlugin):
    """The KSG k-nearest-neighbour estimator in the estimator registry."""

    name = "ksg"
    estimator = Estimator(
        name="ksg",
        function=mutual_information,
        unit="nats",
        differentiable=False,
        cost="O(N log N) k-d tree up to 12 joint dims, else O(N^2 (d_x + d_y)) brute force",
        description="Kraskov–Stögbauer–Grassberger kNN MI (Ross 2014 for labels)",
        information_plane=information_plane,
    )
