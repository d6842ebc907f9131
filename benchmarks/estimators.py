"""Estimator cost: seconds per call for each registered (estimator, path) at several N, on CPU.

Every case gets the same seeded data: ``N`` samples of dimension ``d`` (default 128) drawn
around 10 class centres (labels = the class), in float64. A case is a function
``run(x, labels) -> float`` registered with :func:`case`; the timed call includes everything
the estimator needs but the data (for Rényi: the Gram matrix at a given σ, normalization and
the entropy). Each time is the minimum over ``--repeats`` calls (the machine is shared).
Rows of a fast path report their relative difference to the ``exact`` row of the same
estimator and N, when that ran. To add an estimator, register its cases::

    @case("kl_pairwise", "exact")
    def _kl(x, labels):
        return float(kl_pairwise.entropy(x, noise_var=0.1))

A second table times ``d`` univariate KSG estimates ``I(x_j; y)``, one per unit (as for a
128-unit layer), ours against scikit-learn's ``mutual_info_regression`` (k = 3, its k-d
trees) on the same data, ``y`` = label + unit Gaussian noise, and gives their ratio.

Rényi paths on two kinds of data (``--renyi-sizes``, default N = 3000; issue 19 item 10): the
data above ("gaussian", Silverman's σ) and "clustered": 10 tight clusters in 64-D (centres
``N(0, I)``, spread 0.1) at σ = 0.84, where ``exp(−d²/(2σ²))/N`` across clusters falls among
the float32 subnormals (about 40 % of the entries). Rows ``exact``, ``lanczos``, ``auto`` and
``lanczos-unflushed`` (subnormals kept, the old cost); ``ran`` says which path ran, with
``exact (fallback)`` when the Lanczos quadrature did not settle within its cap.

Usage: python benchmarks/estimators.py [--sizes 256 1000 4000] [--fast-sizes 10000]
       [--exact-10k] [--univariate-sizes 1000 4000] [--dim 128] [--repeats 3]
       [--renyi-sizes 3000] [--renyi-only]
       [--out benchmarks/results/estimators.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.feature_selection import mutual_info_regression

from infoshape.math import matrix_entropy
from infoshape.plugins import binning, gaussian, kl_pairwise, ksg, renyi


@dataclass(frozen=True)
class Case:
    """One timed way of computing an estimator."""

    estimator: str
    path: str
    run: Callable[[torch.Tensor, torch.Tensor], float]
    max_n: int | None = None  # skipped above this N unless --exact-10k (O(N^3) exact paths)
    ran: Callable[[int], str] | None = None  # the path that really ran at N (for "auto")


CASES: list[Case] = []


def case(estimator: str, path: str, max_n: int | None = None, ran=None):
    """Register ``run(x, labels) -> float`` as the timed case (estimator, path)."""

    def register(run: Callable[[torch.Tensor, torch.Tensor], float]):
        CASES.append(Case(estimator, path, run, max_n, ran))
        return run

    return register


def make_data(n: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` float64 samples around 10 Gaussian class centres (spread 3) in ``dim`` dims."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    centres = 3.0 * torch.randn(10, dim, generator=gen, dtype=torch.float64)
    return centres[labels] + torch.randn(n, dim, generator=gen, dtype=torch.float64), labels


# ----------------------------------------------------------------------------- Rényi
def _renyi(method: str, alpha: float = 1.01) -> Callable[[torch.Tensor, torch.Tensor], float]:
    def run(x: torch.Tensor, labels: torch.Tensor) -> float:
        A = renyi.normalize(renyi.gram(x, SIGMA[x.shape[0]]))
        return float(renyi.entropy(A, alpha, method=method))

    return run


SIGMA: dict[int, float] = {}  # σ given: Silverman's width of each N, computed before timing
for _path in ("exact", "lanczos", "auto"):
    case(
        "renyi",
        _path,
        max_n=4000 if _path == "exact" else None,
        ran=lambda n, p=_path: renyi.resolve_method(n, 1.01, p),
    )(_renyi(_path))
case("renyi_alpha2", "auto", ran=lambda n: renyi.resolve_method(n, 2.0))(_renyi("auto", 2.0))


def make_clustered(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` float64 samples in 10 tight clusters in 64-D (centres ``N(0, I)``, spread 0.1)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(10, 64, generator=gen, dtype=torch.float64)
    noise = torch.randn(n, 64, generator=gen, dtype=torch.float64)
    return centres[torch.arange(n) % 10] + 0.1 * noise


CLUSTERED_SIGMA = 0.84  # cross-cluster exp(−d²/(2σ²))/N among the float32 subnormals


def _renyi_path_ran(A: torch.Tensor, method: str) -> str:
    """The path :func:`renyi.entropy` took on ``A``, with a Lanczos fallback to exact named."""
    path = renyi.resolve_method(A.shape[0], 1.01, method)
    if path == "lanczos" and matrix_entropy._lanczos_entropy(A, 1.01, 0) is None:
        return "exact (fallback)"
    return path


def bench_renyi_data(sizes: list[int], dim: int, repeats: int) -> list[dict]:
    """Rényi ``exact``, ``lanczos``, ``auto`` and ``lanczos-unflushed`` on both kinds of data."""
    rows: list[dict] = []
    for n in sizes:
        x = make_data(n, dim)[0]
        data = {
            "gaussian": (x, renyi.silverman_sigma(x)),
            "clustered": (make_clustered(n), CLUSTERED_SIGMA),
        }
        for kind, (x, sigma) in data.items():
            A32 = renyi.normalize(renyi.gram(x, sigma)).float()
            subnormal = float(
                ((A32 != 0) & (A32.abs() < torch.finfo(torch.float32).tiny)).mean(
                    dtype=torch.float64
                )
            )
            exact = math.nan
            for path in ("exact", "lanczos", "auto", "lanczos-unflushed"):
                method = path.split("-")[0]

                def run(x=x, sigma=sigma, method=method) -> float:
                    A = renyi.normalize(renyi.gram(x, sigma))
                    return float(renyi.entropy(A, 1.01, method=method))

                flush = matrix_entropy.FLUSH_BELOW
                matrix_entropy.FLUSH_BELOW = 0.0 if path == "lanczos-unflushed" else flush
                try:
                    seconds, value = _time(run, repeats)
                finally:
                    matrix_entropy.FLUSH_BELOW = flush
                exact = value if path == "exact" else exact
                rel = None if path == "exact" else abs(value - exact) / abs(exact)
                ran = _renyi_path_ran(renyi.normalize(renyi.gram(x, sigma)), method)
                rows.append(
                    {
                        "estimator": "renyi",
                        "data": kind,
                        "path": path,
                        "ran": ran,
                        "N": n,
                        "sigma": sigma,
                        "subnormal_fraction": subnormal,
                        "seconds": seconds,
                        "value": value,
                        "rel_error_vs_exact": rel,
                    }
                )
                err = "" if rel is None else f"{100 * rel:.3f} %"
                print(
                    f"{kind:10s} {path:18s} {ran:17s} {n:6d} {100 * subnormal:10.1f} "
                    f"{seconds:9.4f} {value:11.5f} {err:>10s}",
                    flush=True,
                )
    return rows


# ------------------------------------------------------------------- the other estimators
# I(T;Y) of the data against its labels: the quantity an information plane needs per layer.
case("kl_pairwise", "exact")(lambda x, y: float(kl_pairwise.mi_ty(x, y, noise_var=0.1)))
case("binning", "exact")(
    lambda x, y: float(binning.mutual_information(binning.discretize(x, 30), y))
)
case("gaussian", "exact")(lambda x, y: float(gaussian.mutual_information_labels(x, y)))
case("ksg", "exact", max_n=1000)(lambda x, y: float(ksg.mutual_information_mixed(x, y, k=3)))


# ----------------------------------------------------------------------------- driver
def _time(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The minimum seconds of ``repeats`` calls of ``run`` and its last value."""
    best, value = math.inf, math.nan
    for _ in range(repeats):
        start = time.perf_counter()
        value = run()
        best = min(best, time.perf_counter() - start)
    return best, value


def bench(sizes: list[int], dim: int, repeats: int, lift_limits: bool = False) -> list[dict]:
    """Time every registered case at every N (``max_n`` skips unless lifted); one row each."""
    rows: list[dict] = []
    for n in sizes:
        x, labels = make_data(n, dim)
        SIGMA[n] = renyi.silverman_sigma(x)
        exact: dict[str, float] = {}
        for c in sorted(CASES, key=lambda c: c.path != "exact"):  # exact first: the reference
            if c.max_n is not None and n > c.max_n and not lift_limits:
                continue
            seconds, value = _time(
                lambda c=c, x=x, y=labels: c.run(x, y), 1 if n > 4000 else repeats
            )
            if c.path == "exact":
                exact[c.estimator] = value
            ref = exact.get(c.estimator)
            rel = None if ref is None or c.path == "exact" else abs(value - ref) / abs(ref)
            ran = c.ran(n) if c.ran else c.path
            rows.append(
                {
                    "estimator": c.estimator,
                    "path": c.path,
                    "ran": ran,
                    "N": n,
                    "d": dim,
                    "seconds": seconds,
                    "value": value,
                    "rel_error_vs_exact": rel,
                }
            )
            err = "" if rel is None else f"{100 * rel:.3f} %"
            print(
                f"{c.estimator:14s} {c.path:10s} {ran:10s} {n:6d} {seconds:9.4f} {value:11.5f} "
                f"{err:>10s}",
                flush=True,
            )
    return rows


def bench_univariate(sizes: list[int], dim: int, repeats: int) -> list[dict]:
    """``dim`` univariate KSG estimates at each N, ours and scikit-learn's; one row each N."""
    rows: list[dict] = []
    for n in sizes:
        x, labels = make_data(n, dim)
        noise = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        y = labels.to(torch.float64) + noise
        xn, yn = x.numpy(), y.numpy()

        def ours(x=x, y=y) -> np.ndarray:
            return np.array([float(ksg.mutual_information(x[:, j], y)) for j in range(dim)])

        def peer(xn=xn, yn=yn) -> np.ndarray:
            return mutual_info_regression(xn, yn, n_neighbors=3, random_state=0)

        (ours_s, ours_mi), (peer_s, peer_mi) = (_time(f, repeats) for f in (ours, peer))
        diff = float(np.abs(np.maximum(ours_mi, 0) - peer_mi).max())  # scikit-learn clamps at 0
        rows.append(
            {
                "N": n,
                "units": dim,
                "seconds_ours": ours_s,
                "seconds_sklearn": peer_s,
                "ratio_ours_to_sklearn": ours_s / peer_s,
                "max_abs_diff_nats": diff,
            }
        )
        print(
            f"{n:6d} {dim:6d} {ours_s:9.3f} {peer_s:9.3f} {ours_s / peer_s:7.2f} {diff:10.4f}",
            flush=True,
        )
    return rows


def main() -> None:
    """Run the benchmark, print the table and write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[256, 1000, 4000])
    parser.add_argument(
        "--fast-sizes",
        type=int,
        nargs="*",
        default=[10_000],
        help="larger sizes, where cases with an N limit (exact paths) are skipped",
    )
    parser.add_argument(
        "--exact-10k",
        action="store_true",
        help="lift the N limits at the --fast-sizes: exact paths too (minutes at 10k)",
    )
    parser.add_argument(
        "--univariate-sizes",
        type=int,
        nargs="*",
        default=[1000, 4000],
        help="N of the table of --dim univariate KSG estimates against scikit-learn",
    )
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--renyi-sizes",
        type=int,
        nargs="*",
        default=[3000],
        help="sizes of the Rényi paths on Gaussian and clustered data (module docstring)",
    )
    parser.add_argument(
        "--renyi-only", action="store_true", help="only the Rényi paths on the two kinds of data"
    )
    parser.add_argument("--out", default="benchmarks/results/estimators.json")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, d = {args.dim}")
    rows = []
    if not args.renyi_only:
        print(
            f"{'estimator':14s} {'path':10s} {'ran':10s} {'N':>6s} {'seconds':>9s} "
            f"{'value':>11s} {'vs exact':>10s}"
        )
        rows += bench(args.sizes, args.dim, args.repeats)
        rows += bench(args.fast_sizes, args.dim, args.repeats, lift_limits=args.exact_10k)
    print(
        f"{'data':10s} {'path':18s} {'ran':17s} {'N':>6s} {'subnormal%':>10s} {'seconds':>9s} "
        f"{'value':>11s} {'vs exact':>10s}"
    )
    rows += bench_renyi_data(args.renyi_sizes, args.dim, args.repeats)
    univariate = []
    if not args.renyi_only:
        print(f"\n{args.dim} univariate KSG estimates I(x_j; y): ours vs scikit-learn")
        header = (
            ("N", 6),
            ("units", 6),
            ("ours s", 9),
            ("sklearn s", 9),
            ("ratio", 7),
            ("|diff|", 10),
        )
        print(" ".join(f"{name:>{width}s}" for name, width in header))
        univariate = bench_univariate(args.univariate_sizes, args.dim, args.repeats)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "data": f"10 Gaussian classes (centres spread 3, unit noise), d = {args.dim}, float64; "
        "Rényi rows with a 'data' key: that data ('gaussian') and 10 tight clusters in 64-D "
        f"('clustered', spread 0.1, σ = {CLUSTERED_SIGMA})",
        "timing": f"minimum over {args.repeats} calls (one call above N = 4000)",
        "auto_exact_max_n": renyi.AUTO_EXACT_MAX_N,
        "rows": rows,
        "ksg_univariate_vs_sklearn": univariate,
    }
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
