"""Identical Output Networks (ION) and comparable ones: are two representations equivalent?

Choi & Rhee, §3 and Appendix A:

- **Theorem 1** (linear layer): for any nonsingular ``Q`` and vector ``m`` there is a network
  with the same outputs whose layer-``l`` representation is ``z̃ = Q(z − m)`` (eq. 2).
  Two representations of the same samples are linearly ION-equivalent when each is an
  affine image of the other. :func:`fit_linear` fits ``b ≈ Q a + c`` by least squares
  (``c = −Q m``) in both directions and reports the larger relative residual, so a
  rank-deficient representation (dead units, N < u) is judged by its span, not by a
  singular least-squares ``Q``.
- **Theorem 2** (ReLU layer): only a **permuted positive diagonal** ``Q`` keeps the output,
  ``z̃ = Q z`` (eq. 4). :func:`fit_relu` finds the best one exactly: the squared error
  separates over units once the matching is fixed, so the Hungarian algorithm
  (``scipy.optimize.linear_sum_assignment``) on the per-pair cost
  ``‖b_j‖² − max(⟨a_i, b_j⟩, 0)² / ‖a_i‖²`` gives the optimal permutation, and each
  unit's scale is ``max(⟨a_i, b_j⟩, 0) / ‖a_i‖²``.

Residuals are relative: ``‖B − B̂‖_F / ‖B − B̄‖_F`` for the affine fit (the offset is
fitted, so the centred norm) and ``‖B − B̂‖_F / ‖B‖_F`` for the ReLU fit (no offset).

:func:`compare` fits both and measures the characteristics on each side; the paper's
claims (§3): an ION leaves rank unchanged (Theorem 1) while covariance and correlation may
change arbitrarily; a permuted positive diagonal (Theorem 2) also keeps correlation,
sparsity and dead units, while amplitude and covariance scale. :func:`check_equivalence`
does this on probe activations read from stores (two runs, two epochs, or two taps)::

    from infoshape.plugins.choi_rhee.ion import check_equivalence
    report = check_equivalence("runs/a.zarr", "runs/b.zarr", tap="relu5")
    print(report.format())
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np

from infoshape.errors import ConfigError, StoreError
from infoshape.registry import unknown_name

__all__ = [
    "EquivalenceReport",
    "IONFit",
    "check_equivalence",
    "compare",
    "fit_linear",
    "fit_relu",
    "numerical_rank",
    "representation",
]

RANK_RTOL = 1e-6
"""Singular values below ``RANK_RTOL · s_max`` do not count in :func:`numerical_rank`."""


def _matrix(z: Any, who: str) -> np.ndarray:
    if hasattr(z, "detach"):
        z = z.detach().cpu().numpy()
    z = np.asarray(z, dtype=np.float64)
    if z.ndim < 2 or z.shape[0] == 0:
        raise ConfigError(
            f"{who}: a representation needs samples and features",
            expected="an array of shape (N, ...) with N >= 1",
            got=f"shape {z.shape}",
            fix="pass one row per sample",
        )
    return z.reshape(z.shape[0], -1)


def _pair(a: Any, b: Any, who: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = _matrix(a, who), _matrix(b, who)
    if a.shape[0] != b.shape[0]:
        raise ConfigError(
            f"{who}: the two representations hold different numbers of samples",
            expected="representations of the same samples, in the same order",
            got=f"{a.shape[0]} and {b.shape[0]} samples",
            fix="pass the same probe samples (check_equivalence aligns stores by sample)",
        )
    return a, b


def _relative(error: float, scale: float) -> float:
    if scale > 0:
        return error / scale
    return 0.0 if error == 0 else float("inf")


@attrs.frozen(kw_only=True)
class IONFit:
    """The best map from representation ``a`` to ``b`` of one kind.

    Attributes:
        kind: ``"linear"`` (any ``Q``, Theorem 1) or ``"relu"`` (permuted positive diagonal).
        residual: relative residual (module docstring); ``"linear"`` takes the larger of
            the two directions.
        q: ``Q`` of shape ``(u_b, u_a)``, with ``b ≈ Q a + c`` per sample.
        offset: ``c`` (zeros for ``"relu"``); Theorem 1's ``m`` is ``−Q⁻¹ c``.
        condition: condition number of ``Q`` (``inf`` when singular or not square).
        permutation: ``"relu"``: unit ``j`` of ``b`` matches unit ``permutation[j]`` of ``a``.
        scales: ``"relu"``: the diagonal, ``b_j ≈ scales[j] · a_{permutation[j]}``.
    """

    kind: Literal["linear", "relu"]
    residual: float
    q: np.ndarray = attrs.field(eq=False, repr=False)
    offset: np.ndarray = attrs.field(eq=False, repr=False)
    condition: float
    permutation: np.ndarray | None = attrs.field(default=None, eq=False, repr=False)
    scales: np.ndarray | None = attrs.field(default=None, eq=False, repr=False)

    def equivalent(self, tol: float = 1e-3) -> bool:
        """Whether the fit shows an ION: residual ≤ ``tol`` and, for ReLU, positive scales."""
        if not self.residual <= tol:
            return False
        if self.kind == "relu":
            return self.scales is not None and bool((self.scales > 0).all())
        return True

    def apply(self, a: Any) -> np.ndarray:
        """``Q a + c`` for each row of ``a``: the fitted image of a representation."""
        return _matrix(a, "IONFit.apply") @ self.q.T + self.offset


def _condition(q: np.ndarray) -> float:
    if q.shape[0] != q.shape[1] or q.size == 0:
        return float("inf")
    s = np.linalg.svd(q, compute_uv=False)
    return float(s[0] / s[-1]) if s[-1] > 0 else float("inf")


def _affine(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Least-squares ``b ≈ Q a + c`` per sample: returns ``(Q, c, relative residual)``."""
    a_mean, b_mean = a.mean(0), b.mean(0)
    a_c, b_c = a - a_mean, b - b_mean
    w = np.linalg.lstsq(a_c, b_c, rcond=None)[0]  # b_c ≈ a_c @ w, Q = wᵀ
    error = float(np.linalg.norm(b_c - a_c @ w))
    return w.T, b_mean - a_mean @ w, _relative(error, float(np.linalg.norm(b_c)))


def fit_linear(a: Any, b: Any) -> IONFit:
    """Fit ``b ≈ Q a + c`` (Theorem 1, eq. 2) by least squares, checking both directions.

    Args:
        a: representation ``(N, ...)`` (flattened per sample).
        b: representation of the same ``N`` samples.

    Returns:
        the fit; ``residual`` is the larger of the ``a → b`` and ``b → a`` relative
        residuals, so a small residual means each is an affine image of the other.
    """
    a, b = _pair(a, b, "fit_linear")
    q, c, forward = _affine(a, b)
    backward = _affine(b, a)[2]
    return IONFit(
        kind="linear",
        residual=max(forward, backward),
        q=q,
        offset=c,
        condition=_condition(q),
    )


def fit_relu(a: Any, b: Any) -> IONFit:
    """Fit ``b ≈ a P D`` with ``P`` a permutation and ``D ≥ 0`` diagonal (Theorem 2, eq. 4).

    The optimum is exact (module docstring). A dead unit of ``b`` matched to a dead unit of
    ``a`` gets scale 1; a unit that only a zero scale fits gets 0, which
    :meth:`IONFit.equivalent` rejects.
    """
    from scipy.optimize import linear_sum_assignment

    a, b = _pair(a, b, "fit_relu")
    if a.shape[1] < b.shape[1]:
        raise ConfigError(
            "fit_relu: the first representation has fewer units than the second",
            expected="at least as many units in a as in b (each unit of b needs its own)",
            got=f"{a.shape[1]} and {b.shape[1]} units",
            fix="swap the arguments or compare layers of equal width",
        )
    aa = (a * a).sum(0)  # ‖a_i‖²
    bb = (b * b).sum(0)
    ab = np.clip(a.T @ b, 0.0, None)  # ⟨a_i, b_j⟩, negative correlations cannot be matched
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where(aa[:, None] > 0, ab**2 / aa[:, None], 0.0)
    rows, cols = linear_sum_assignment(bb[None, :] - gain)
    permutation = np.empty(b.shape[1], dtype=np.int64)
    permutation[cols] = rows
    a_i, dot = aa[permutation], ab[permutation, np.arange(b.shape[1])]
    with np.errstate(divide="ignore", invalid="ignore"):
        scales = np.where(a_i > 0, dot / a_i, np.where(bb == 0, 1.0, 0.0))
    q = np.zeros((b.shape[1], a.shape[1]))
    q[np.arange(b.shape[1]), permutation] = scales
    error = float(np.linalg.norm(b - a @ q.T))
    return IONFit(
        kind="relu",
        residual=_relative(error, float(np.linalg.norm(b))),
        q=q,
        offset=np.zeros(b.shape[1]),
        condition=_condition(q),
        permutation=permutation,
        scales=scales,
    )


def numerical_rank(z: Any, rtol: float = RANK_RTOL) -> int:
    """Rank of the centred representation (``rank C_l``, Table 1): singular values > rtol·s_max."""
    z = _matrix(z, "numerical_rank")
    s = np.linalg.svd(z - z.mean(0), compute_uv=False)
    return int((s > rtol * s[0]).sum()) if s.size and s[0] > 0 else 0


@attrs.frozen(kw_only=True)
class EquivalenceReport:
    """What :func:`compare` finds about two representations ``a`` and ``b``.

    Attributes:
        linear: the affine fit (Theorem 1).
        relu: the permuted positive diagonal fit (Theorem 2), or None when ``a`` is narrower.
        characteristics: ``{"a": {...}, "b": {...}}``: amplitude, covariance, correlation,
            sparsity, dead units, stable rank and ``rank`` (:func:`numerical_rank`).
        claims: each of the paper's claims that applies, and whether it holds here
            (module docstring); a claim whose premise fails is absent.
        tol: the residual tolerance used.
        source: where ``a`` and ``b`` came from (text).
    """

    linear: IONFit
    relu: IONFit | None
    characteristics: dict[str, dict[str, float]]
    claims: dict[str, bool]
    tol: float
    source: str = ""

    def format(self) -> str:
        """A readable summary: residuals, the characteristics side by side, the claims."""
        lines = [f"ION check{f' ({self.source})' if self.source else ''}, tol {self.tol:g}:"]
        for fit in (self.linear, self.relu):
            if fit is not None:
                verdict = "equivalent" if fit.equivalent(self.tol) else "not equivalent"
                lines.append(f"  {fit.kind:<7} residual {fit.residual:.3g}  ({verdict})")
        lines.append(f"  {'characteristic':<14} {'a':>12} {'b':>12}")
        for key, value in self.characteristics["a"].items():
            lines.append(f"  {key:<14} {value:>12.4g} {self.characteristics['b'][key]:>12.4g}")
        for claim, holds in self.claims.items():
            lines.append(f"  claim {claim}: {'holds' if holds else 'FAILS'}")
        return "\n".join(lines)


def _close(x: float, y: float, tol: float) -> bool:
    if np.isnan(x) or np.isnan(y):
        return bool(np.isnan(x) and np.isnan(y))
    return abs(x - y) <= tol * max(1.0, abs(x), abs(y))


def compare(a: Any, b: Any, tol: float = 1e-3, source: str = "") -> EquivalenceReport:
    """Fit both kinds of map between ``a`` and ``b`` and check the paper's claims.

    Claims (present only when their premise holds):
    ``linear_ion_keeps_rank`` (linear fit within ``tol``: equal :func:`numerical_rank`);
    ``relu_ion_keeps_correlation``, ``relu_ion_keeps_sparsity``,
    ``relu_ion_keeps_dead_units`` (ReLU fit within ``tol`` with positive scales: those
    characteristics agree within ``tol``, relative).
    """
    from infoshape.plugins.characteristics import characteristics as measure

    a, b = _pair(a, b, "compare")
    linear = fit_linear(a, b)
    relu = fit_relu(a, b) if a.shape[1] >= b.shape[1] else None
    stats = {}
    for side, z in (("a", a), ("b", b)):
        stats[side] = {**measure(z), "rank": float(numerical_rank(z))}
    claims: dict[str, bool] = {}
    if linear.equivalent(tol):
        claims["linear_ion_keeps_rank"] = stats["a"]["rank"] == stats["b"]["rank"]
    if relu is not None and relu.equivalent(tol):
        for key in ("correlation", "sparsity", "dead_units"):
            claims[f"relu_ion_keeps_{key}"] = _close(stats["a"][key], stats["b"][key], tol)
    return EquivalenceReport(
        linear=linear, relu=relu, characteristics=stats, claims=claims, tol=tol, source=source
    )


def representation(
    store: Any, tap: str, epoch: int = -1, storage_options: dict[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One stored probe representation: ``(values (N, features), sample indices (N,))``.

    Args:
        store: a store path or fsspec URL (``s3://...``, with ``storage_options``), or an
            opened ``xarray.DataTree`` (:func:`infoshape.open_store`).
        tap: the probe variable (``"relu5"``).
        epoch: the epoch value; negative values count from the end (``-1``: the last).
        storage_options: options of the filesystem of a store at a URL.

    Raises:
        StoreError: the store has no probe data.
        UnknownNameError: ``tap`` is not stored.
        ConfigError: ``epoch`` is not stored.
    """
    from infoshape.store.read import open_store

    opened = isinstance(store, (str, Path))
    tree = open_store(store, storage_options=storage_options) if opened else store
    if "probe" not in tree.children or "epoch" not in tree["probe"].dims:
        raise StoreError(
            "the store holds no probe activations",
            expected="probe/<tap> stored at epoch ends",
            got=f"groups {sorted(tree.children)}",
            fix="train with a probe set and a stored tap (infoshape train stores default taps)",
        )
    probe = tree["probe"].to_dataset()
    taps = [str(n) for n in probe.data_vars if "epoch" in probe[n].dims]
    if tap not in taps:
        raise unknown_name("tap", tap, taps, "choose a tap stored in probe/")
    epochs = [int(e) for e in probe["epoch"].values]
    chosen = epochs[epoch] if -len(epochs) <= epoch < 0 else epoch
    if chosen not in epochs:
        raise ConfigError(
            f"epoch {epoch} is not in the store",
            expected=f"one of {epochs} or a negative index",
            got=repr(epoch),
            fix="pass epoch=-1 for the last epoch",
        )
    values = np.asarray(probe[tap].sel(epoch=chosen).values, dtype=np.float64)
    return values.reshape(values.shape[0], -1), np.asarray(probe["sample"].values)


def check_equivalence(
    store_a: Any,
    store_b: Any = None,
    tap: str = "",
    epoch_a: int = -1,
    epoch_b: int = -1,
    tap_b: str | None = None,
    tol: float = 1e-3,
    storage_options: dict[str, Any] | None = None,
) -> EquivalenceReport:
    """:func:`compare` two stored probe representations, aligned on their common samples.

    Args:
        store_a: the first store (path or DataTree).
        store_b: the second store; ``None``: the same store (compare epochs or taps).
        tap: the tap of ``store_a``.
        epoch_a: its epoch (negative counts from the end).
        epoch_b: the epoch of ``store_b``.
        tap_b: the tap of ``store_b`` (default ``tap``).
        tol: residual tolerance of the equivalence verdicts.
        storage_options: options of the filesystem of stores at URLs.

    Raises:
        ConfigError: the stores share no probe sample.
    """
    store_b = store_a if store_b is None else store_b
    tap_b = tap_b or tap
    a, samples_a = representation(store_a, tap, epoch_a, storage_options)
    b, samples_b = representation(store_b, tap_b, epoch_b, storage_options)
    common, ia, ib = np.intersect1d(samples_a, samples_b, return_indices=True)
    if common.size == 0:
        raise ConfigError(
            "the two stores share no probe sample",
            expected="probe sets drawn from the same samples",
            got=f"{samples_a.size} and {samples_b.size} samples, none in common",
            fix="train both runs with the same data set, probe size and seed",
        )
    source = f"{tap}@{epoch_a} vs {tap_b}@{epoch_b}, {common.size} samples"
    return compare(a[ia], b[ib], tol=tol, source=source)
