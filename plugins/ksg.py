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

Decisions (as Kraskov et al. recommend and scikit-learn does): each feature is standardized
(zero mean, unit variance; constant features kept at 0) and noise of standard deviation
``jitter = 1e-10`` is added to break ties (ReLU zeros, repeated inputs); the noise comes
from a generator seeded with ``seed`` and depends only on the array's shape, so results are
reproducible and symmetric in the arguments. Estimates are not clamped (they can be slightly
negative). Neighbours are found by brute force in row chunks (exact, ``O(N²(d_x + d_y))``
time, ``O(N)`` memory per chunk row). Not differentiable (counts). Nats.
"""

from __future__ import annotations

import numpy as np
import torch

from infoshape.errors import ConfigError
from infoshape.estimator_plugin import EstimatorPlugin
from infoshape.math.linalg import as_samples, paired_labels
from infoshape.registry import Estimator

__all__ = ["KSG", "information_plane", "mutual_information", "mutual_information_mixed"]

_CHUNK_ELEMENTS = 1 << 22  # distances held at once per matrix (32 MiB in float64)


def _prepare(v, standardize: bool, jitter: float, seed: int) -> torch.Tensor:
    v = as_samples(torch.as_tensor(v).detach(), torch.float64)
    if standardize and v.shape[0] > 0:
        std = v.std(dim=0, correction=0)
        v = (v - v.mean(dim=0)) / torch.where(std > 0, std, torch.ones_like(std))
    if jitter:
        noise = np.random.default_rng(seed).standard_normal(tuple(v.shape))
        v = v + jitter * torch.from_numpy(noise).to(v.device)
    return v


def _check_k(k: int, n: int, what: str) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1 or n <= k:
        raise ConfigError(
            f"ksg: {what} needs more samples than neighbours",
            expected="an int k >= 1 and more than k samples",
            got=f"k={k!r}, {n} samples",
            fix="pass k=3 (the default) and at least a few dozen samples",
        )


def _chunks(n: int):
    step = max(1, _CHUNK_ELEMENTS // max(n, 1))
    return (slice(i, min(i + step, n)) for i in range(0, n, step))


def _cheb(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b, p=float("inf")) if a.shape[1] else a.new_zeros(len(a), len(b))


def mutual_information(
    x, y, k: int = 3, *, standardize: bool = True, jitter: float = 1e-10, seed: int = 0
) -> torch.Tensor:
    """KSG (algorithm 1) estimate of ``I(X;Y)`` in nats, a float64 scalar tensor.

    Args:
        x: ``(N, ...)`` samples of X (trailing dims flattened).
        y: ``(N, ...)`` samples of Y, paired with ``x``.
        k: neighbours in the joint space (3 is Kraskov et al.'s usual choice).
        standardize: scale each feature to zero mean and unit variance first.
        jitter: standard deviation of the tie-breaking noise (0 to switch it off).
        seed: seed of the tie-breaking noise.
    """
    xs, ys = (_prepare(v, standardize, jitter, seed) for v in (x, y))
    n = xs.shape[0]
    if ys.shape[0] != n:
        raise ConfigError(
            "ksg: x and y differ in number of samples",
            expected="paired rows, one per sample in each",
            got=f"{n} and {ys.shape[0]} rows",
            fix="pass samples of the same batch",
        )
    _check_k(k, n, "mutual_information")
    ys = ys.to(xs.device)
    total = xs.new_zeros(())
    for rows in _chunks(n):
        dx, dy = _cheb(xs[rows], xs), _cheb(ys[rows], ys)
        dz = torch.maximum(dx, dy)
        dz[torch.arange(dz.shape[0]), torch.arange(n)[rows]] = torch.inf  # not its own neighbour
        eps = torch.kthvalue(dz, k, dim=1).values.unsqueeze(1)
        self_counted = (eps > 0).to(torch.float64).squeeze(1)  # own distance 0 < ε_i
        n_x = (dx < eps).sum(1) - self_counted
        n_y = (dy < eps).sum(1) - self_counted
        total = total + (torch.digamma(n_x + 1.0) + torch.digamma(n_y + 1.0)).sum()
    k_t = xs.new_tensor(float(k))
    return torch.digamma(k_t) + torch.digamma(xs.new_tensor(float(n))) - total / n


def mutual_information_mixed(
    t, labels, k: int = 3, *, standardize: bool = True, jitter: float = 1e-10, seed: int = 0
) -> torch.Tensor:
    """Ross (2014) estimate of ``I(T;Y)`` in nats for continuous ``t`` and discrete ``labels``.

    Options as for :func:`mutual_information`; ``labels`` are ``(N,)`` class indices.
    """
    ts = _prepare(t, standardize, jitter, seed)
    labels = paired_labels(ts, labels, "ksg")
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    keep = counts[inverse] > 1  # a sample alone in its class has no neighbour
    ts, inverse, n_class = ts[keep], inverse[keep], counts[inverse[keep]].to(torch.float64)
    n = ts.shape[0]
    _check_k(1, n, "mutual_information_mixed (in classes of two samples or more)")
    k_i, d_i = torch.empty(n, dtype=torch.float64, device=ts.device), torch.empty_like(n_class)
    for c in torch.unique(inverse):
        members = (inverse == c).nonzero().squeeze(1)
        kc, own = min(k, len(members) - 1), ts[members]
        for r in _chunks(len(members)):
            dist = _cheb(own[r], own)
            dist[torch.arange(dist.shape[0]), torch.arange(len(members))[r]] = torch.inf
            d_i[members[r]] = torch.kthvalue(dist, kc, dim=1).values
        k_i[members] = float(kc)
    m = torch.cat([(_cheb(ts[r], ts) < d_i[r, None]).sum(1) for r in _chunks(n)])
    m = m.to(torch.float64) + (d_i <= 0).to(torch.float64)  # i itself, when not counted
    digamma_n = torch.digamma(ts.new_tensor(float(n)))
    return digamma_n + (torch.digamma(k_i) - torch.digamma(n_class) - torch.digamma(m)).mean()


def information_plane(x, t, labels, k: int = 3):
    """``(I(X;T), I(T;Y))`` in nats: KSG on ``(x, t)`` and Ross's estimator on ``(t, labels)``."""
    return mutual_information(x, t, k), mutual_information_mixed(t, labels, k)


class KSG(EstimatorPlugin):
    """The KSG k-nearest-neighbour estimator in the estimator registry."""

    name = "ksg"
    estimator = Estimator(
        name="ksg",
        function=mutual_information,
        unit="nats",
        differentiable=False,
        cost="O(N^2 (d_x + d_y)) brute force, chunked",
        description="Kraskov–Stögbauer–Grassberger kNN MI (Ross 2014 for labels)",
        information_plane=information_plane,
    )
