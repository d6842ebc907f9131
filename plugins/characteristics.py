"""The ``characteristics`` plugin: the representation characteristics of Choi & Rhee (Table 1).

At each epoch end, on the probe set (the test samples the trainer passes), for the
post-activation output ``Z`` (``N`` samples × ``u`` units, conv maps flattened) of each
chosen layer (docs/methods.md §6):

- ``amplitude``   activation amplitude ``mean_{n,i} |z_i^n|``;
- ``covariance``  ``mean_{i≠j} |C_ij|``, ``C`` the biased (1/N) covariance of the units;
- ``correlation`` ``ρ_ij = C_ij / (σ_i σ_j)`` over units with non-zero variance; by default
  the mean of the **positive** ``ρ_ij`` (i ≠ j), as the paper counts positive values only;
  ``correlation="absolute"`` gives ``mean_{i≠j} |ρ_ij|``;
- ``sparsity``    fraction of activations equal to zero (``|z| ≤ zero_tol``);
- ``dead_units``  fraction of units zero on every sample (``P_d ≤ P_s``, eq. 5);
- ``stable_rank`` ``‖Z‖_F² / ‖Z‖₂²`` (eq. 7) of the uncentred ``Z`` divided by
  ``min(N, u)``, so it lies in ``[0, 1]`` (``0`` for an all-zero ``Z``): docs/methods.md §6, the
  quantity RR regularizes;
- ``stable_rank_cov`` ``‖C‖_F² / ‖C‖₂²`` of the biased covariance ``C`` of the units, divided
  by ``min(N, u)`` (``0`` for a constant ``Z``): the paper's Table 1 RANK, "rank(C_l);
  numerical evaluations are approximated as the stable rank ‖C_l‖_F²/‖C_l‖_2²" (eq. 7
  applied to ``C_l``, §2). The mean activation does not count here; in the uncentred
  ``stable_rank`` it is one direction that can dominate ``‖Z‖₂`` for ReLU outputs;
- ``I_zx_upper``, ``I_zx_lower``, ``I_zy_upper``, ``I_zy_lower``: ``I(z;x)`` and ``I(z;y)``
  by the Kolchinsky–Tracey pairwise-distance bounds of :mod:`infoshape.plugins.kl_pairwise`
  (docs/methods.md §1, noise variance 0.1, nats).

Each characteristic is also a function of an ``(N, ...)`` array or tensor
(:func:`amplitude`, :func:`covariance`, ... and :func:`characteristics` for all at once).
Metrics are emitted as ``characteristics.<capture>.<name>`` and reach the store's
``metrics/`` group (one variable per layer and characteristic over ``epoch``).

Layers: ``layers`` globs; by default the **last hidden layer**, as in the paper: the last
of the model's ``default_taps`` (``reluK`` for the zoo ``mlp``), else the last
``nn.ReLU`` module of the model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

import attrs
import torch
from torch import nn

from infoshape.capture import Tap
from infoshape.errors import ConfigError
from infoshape.hookspecs import hookimpl
from infoshape.math.linalg import nonempty_samples
from infoshape.options import non_negative, one_of, positive, satisfies
from infoshape.plugin import Plugin
from infoshape.plugins.kl_pairwise import mi_tx, mi_ty
from infoshape.syntax import option_syntax

__all__ = [
    "Characteristics",
    "amplitude",
    "characteristics",
    "correlation",
    "covariance",
    "dead_units",
    "default_layer",
    "mutual_information",
    "sparsity",
    "stable_rank",
    "stable_rank_cov",
]

log = logging.getLogger(__name__)

CorrelationMode = Literal["positive", "absolute"]
VAR_RTOL = 1e-12
"""A unit has non-zero variance when ``Var(z_i) > VAR_RTOL · mean(z_i²)`` (round-off guard)."""


def _z(z: Any) -> torch.Tensor:
    return nonempty_samples(torch.as_tensor(z).detach(), "characteristics")


def _off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    u = matrix.shape[0]
    return matrix[~torch.eye(u, dtype=torch.bool, device=matrix.device)]


def _covariance_matrix(z: torch.Tensor) -> torch.Tensor:
    centred = z - z.mean(0)
    return centred.T @ centred / z.shape[0]


def amplitude(z: Any) -> float:
    """Activation amplitude ``mean_{n,i} |z_i^n|`` (Table 1, ``|z|``)."""
    return float(_z(z).abs().mean())


def covariance(z: Any) -> float:
    """``mean_{i≠j} |C_ij|`` with ``C`` the biased covariance of the units (Table 1, ``c̄``).

    NaN with fewer than two units (no pair).
    """
    z = _z(z)
    if z.shape[1] < 2:
        return float("nan")
    return float(_off_diagonal(_covariance_matrix(z)).abs().mean())


def correlation(z: Any, mode: CorrelationMode = "positive") -> float:
    """Mean pairwise correlation ``ρ_ij`` (i ≠ j) over the units with non-zero variance.

    Args:
        z: representation ``(N, ...)``.
        mode: ``"positive"``: the mean of the positive ``ρ_ij`` (0 when none is positive), as
            the paper counts; ``"absolute"``: ``mean_{i≠j} |ρ_ij|``.

    Returns:
        the mean; NaN when fewer than two units vary.
    """
    if mode not in ("positive", "absolute"):
        raise ConfigError(
            "characteristics: unknown correlation mode",
            expected='"positive" or "absolute"',
            got=repr(mode),
            fix='pass mode="positive" (the paper) or mode="absolute"',
        )
    z = _z(z)
    var = z.var(0, unbiased=False)
    live = var > VAR_RTOL * (z * z).mean(0)
    if int(live.sum()) < 2:
        return float("nan")
    c = _covariance_matrix(z[:, live])
    sd = c.diagonal().sqrt()
    rho = _off_diagonal(c / (sd[:, None] * sd[None, :]))
    if mode == "absolute":
        return float(rho.abs().mean())
    positive = rho[rho > 0]
    return float(positive.mean()) if positive.numel() else 0.0


def sparsity(z: Any, zero_tol: float = 0.0) -> float:
    """Fraction of activations that are zero, ``|z_i^n| ≤ zero_tol`` (Table 1, ``P_s``)."""
    return float((_z(z).abs() <= zero_tol).double().mean())


def dead_units(z: Any, zero_tol: float = 0.0) -> float:
    """Fraction of units zero on every sample (Table 1, ``P_d``)."""
    return float((_z(z).abs() <= zero_tol).all(0).double().mean())


def stable_rank(z: Any, normalize: bool = True) -> float:
    """Stable rank ``‖Z‖_F² / ‖Z‖₂²`` (eq. 7), divided by ``min(N, u)`` when ``normalize``.

    ``Z`` is not centred (eq. 7); an all-zero ``Z`` has stable rank 0.
    """
    z = _z(z)
    top = torch.linalg.matrix_norm(z, ord=2) ** 2
    if float(top) == 0.0:
        return 0.0
    value = float((z * z).sum() / top)
    return value / min(z.shape) if normalize else value


def stable_rank_cov(z: Any, normalize: bool = True) -> float:
    """Stable rank ``‖C‖_F² / ‖C‖₂²`` of the covariance (Table 1 RANK; eq. 7 on ``C_l``).

    ``C = Z_cᵀ Z_c / N`` is the biased covariance, ``Z_c = Z − mean(Z)``; its eigenvalues are
    ``s_k² / N`` for the singular values ``s_k`` of ``Z_c``, so the ratio is
    ``Σ_k (s_k / max s)⁴`` (no ``u × u`` matrix is formed). Divided by ``min(N, u)`` when
    ``normalize``. A ``Z`` whose units are all constant (``‖Z_c‖₂² ≤ VAR_RTOL · ‖Z‖_F²``,
    a round-off guard) has stable rank 0.
    """
    z = _z(z)
    s = torch.linalg.svdvals(z - z.mean(0))
    top = s.max()
    if float(top) ** 2 <= VAR_RTOL * float((z * z).sum()):
        return 0.0
    value = float(((s / top) ** 4).sum())
    return value / min(z.shape) if normalize else value


def mutual_information(
    z: Any, labels: Any, noise_var: float = 0.1, bounds: tuple[str, ...] = ("upper", "lower")
) -> dict[str, float]:
    """``I(z;x)`` and ``I(z;y)`` in nats by the Kolchinsky–Tracey bounds (docs/methods.md §1).

    Returns:
        ``{"I_zx_<bound>": ..., "I_zy_<bound>": ...}`` for each bound in ``bounds``.
    """
    z = _z(z)
    out = {}
    for bound in bounds:
        out[f"I_zx_{bound}"] = float(mi_tx(z, noise_var, bound))  # type: ignore[arg-type]
        out[f"I_zy_{bound}"] = float(mi_ty(z, labels, noise_var, bound))  # type: ignore[arg-type]
    return out


def characteristics(
    z: Any,
    labels: Any = None,
    *,
    correlation_mode: CorrelationMode = "positive",
    zero_tol: float = 0.0,
    noise_var: float = 0.1,
    bounds: tuple[str, ...] = ("upper", "lower"),
) -> dict[str, float]:
    """Every characteristic of ``z`` (module docstring); the information ones need ``labels``."""
    z = _z(z)
    out = {
        "amplitude": amplitude(z),
        "covariance": covariance(z),
        "correlation": correlation(z, correlation_mode),
        "sparsity": sparsity(z, zero_tol),
        "dead_units": dead_units(z, zero_tol),
        "stable_rank": stable_rank(z),
        "stable_rank_cov": stable_rank_cov(z),
    }
    if labels is not None and bounds:
        out.update(mutual_information(z, labels, noise_var, bounds))
    return out


def default_layer(model: nn.Module) -> str:
    """The last hidden layer: the last of ``model.default_taps``, else the last ``nn.ReLU``.

    Raises:
        ConfigError: when the model has neither.
    """
    taps = list(getattr(model, "default_taps", None) or ())
    if taps:
        return str(taps[-1])
    relus = [name for name, m in model.named_modules() if name and isinstance(m, nn.ReLU)]
    if relus:
        return relus[-1]
    raise ConfigError(
        "characteristics: cannot find the last hidden layer",
        expected="a model with default_taps or an nn.ReLU module",
        got=type(model).__name__,
        fix="name the layers: " + option_syntax("characteristics", "layers", ["relu3"]),
    )


_bounds = satisfies(
    lambda value: all(b in ("upper", "lower") for b in value),
    'a list of "upper" and/or "lower"',
    problem="names an unknown bound",
    example=["upper", "lower"],
)


@attrs.frozen(kw_only=True)
class CharacteristicsConfig:
    """Options of the ``characteristics`` plugin.

    Attributes:
        layers: module globs whose outputs (post-activation) are measured; empty: the last
            hidden layer (:func:`default_layer`).
        correlation: ``"positive"`` (the paper: mean of the positive ρ_ij) or ``"absolute"``.
        zero_tol: an activation with ``|z| ≤ zero_tol`` counts as zero (sparsity, dead units).
        noise_var: noise variance σ² of the I(z;x), I(z;y) bounds (docs/methods.md §1: 0.1).
        bounds: which Kolchinsky–Tracey bounds to report; empty: no mutual information
            (it costs O(N² u) per layer).
    """

    layers: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    correlation: CorrelationMode = attrs.field(
        default="positive", validator=one_of("positive", "absolute")
    )
    zero_tol: float = attrs.field(default=0.0, validator=non_negative())
    noise_var: float = attrs.field(default=0.1, validator=positive())
    bounds: tuple[str, ...] = attrs.field(
        default=("upper", "lower"), converter=tuple, validator=_bounds
    )


class Characteristics(Plugin):
    """Emit ``characteristics.<capture>.<name>`` on the probe set at each epoch end."""

    name = "characteristics"
    Config = CharacteristicsConfig

    def __init__(self) -> None:
        super().__init__()
        self.taps: list[Tap] = []

    @hookimpl
    def infoshape_taps(self, session: Any) -> list[Tap]:
        """The outputs of ``layers``, or of the model's last hidden layer."""
        layers = self.config.layers or (default_layer(session.model),)
        if not self.config.layers:
            log.info(
                "characteristics: no layers given; measuring the last hidden layer, %s", layers[0]
            )
        self.taps = [Tap(glob) for glob in layers]
        return self.taps

    @hookimpl
    def infoshape_metrics(
        self, session: Any, captures: Mapping[str, torch.Tensor], targets: Any, stage: str
    ) -> dict[str, float]:
        """Every characteristic of each tapped layer on the probe set (epoch stage only)."""
        if stage != "epoch" or not captures or targets is None:
            return {}
        c, out = self.config, {}
        names = dict.fromkeys(n for tap in self.taps for n in session.capture_names(tap))
        for name in names:
            if (z := captures.get(name)) is None:
                continue
            values = characteristics(
                z,
                targets,
                correlation_mode=c.correlation,
                zero_tol=c.zero_tol,
                noise_var=c.noise_var,
                bounds=c.bounds,
            )
            out.update({f"{self.name}.{name}.{key}": v for key, v in values.items()})
        return out
