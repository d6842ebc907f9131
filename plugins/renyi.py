"""The ``renyi`` plugin: matrix-based Rényi α-entropy as an estimator and as epoch metrics.

The math (docs/methods.md §1: Gram matrices, trace-one normalization, ``H_α``, joint entropy,
``I_α``, kernel widths, the Lanczos fast path) lives in :mod:`infoshape.math.matrix_entropy`
and is re-exported here, so ``from infoshape.plugins.renyi import entropy, gram`` works.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

import attrs
import torch

from infoshape.capture import Tap
from infoshape.hookspecs import hookimpl
from infoshape.math.matrix_entropy import (
    AUTO_EXACT_MAX_N,
    DECAY,
    EIGENVALUE_RTOL,
    LENGTH,
    Convention,
    Method,
    SigmaAverage,
    as_matrix,
    as_tensor,
    convert_sigma,
    entropy,
    gram,
    information_plane,
    is_labels,
    joint_entropy,
    label_gram,
    mutual_information,
    normalize,
    resolve_method,
    select_sigma,
    silverman_sigma,
)
from infoshape.options import at_least, one_of, positive
from infoshape.plugin import Plugin
from infoshape.registry import Estimator

__all__ = [
    "AUTO_EXACT_MAX_N",
    "EIGENVALUE_RTOL",
    "Renyi",
    "RenyiConfig",
    "SigmaAverage",
    "convert_sigma",
    "entropy",
    "gram",
    "information_plane",
    "joint_entropy",
    "label_gram",
    "mutual_information",
    "normalize",
    "resolve_method",
    "select_sigma",
    "silverman_sigma",
]

log = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class RenyiConfig:
    """Options of the ``renyi`` plugin (defaults: docs/methods.md's option tables).

    Attributes:
        alpha: order α.
        convention: kernel form of every width (module docstring).
        sigma: one fixed kernel width for every representation; ``None``: ``sigma_method``.
        sigma_method: ``"alignment"`` (:func:`select_sigma` against the probe labels) or
            ``"silverman"`` (:func:`silverman_sigma`; also used when the targets are not labels).
        n_candidates: size of the alignment grid.
        sigma_decay: decay of each capture's width average across epochs (:class:`SigmaAverage`);
            0 takes each epoch's width.
        silverman_gamma: γ of Silverman's rule; ``None``: the data-driven γ.
        layers: module globs whose outputs are measured on the probe set at each epoch end.
        input_module: a module whose input is the model input X (the first layer; a glob takes
            its first match): ``I(X;T)`` is emitted too.
        method: ``"auto"``, ``"exact"`` or ``"lanczos"`` (:func:`entropy`).
    """

    alpha: float = attrs.field(default=1.01, validator=positive())
    convention: Convention = attrs.field(default="2sigma2", validator=one_of(*LENGTH))
    sigma: float | None = attrs.field(default=None, validator=positive(optional=True))
    sigma_method: Literal["alignment", "silverman"] = attrs.field(
        default="alignment", validator=one_of("alignment", "silverman")
    )
    n_candidates: int = attrs.field(default=100, validator=at_least(1))
    sigma_decay: float = attrs.field(default=0.0, validator=DECAY)
    silverman_gamma: float | None = attrs.field(default=None, validator=positive(optional=True))
    layers: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    input_module: str | None = None
    method: Method = attrs.field(default="auto", validator=one_of("auto", "exact", "lanczos"))


class Renyi(Plugin):
    """Emit ``renyi.<capture>.{sigma, H_T, I_TY, I_XT}`` on the probe set at each epoch end.

    ``I_XT`` needs ``input_module``. Registers the ``renyi`` estimator
    (:func:`mutual_information`, :func:`information_plane`). Width averages live on the instance.
    """

    name = "renyi"
    Config = RenyiConfig

    def __init__(self) -> None:
        super().__init__()
        self.taps: list[Tap] = []
        self.input_tap: Tap | None = None
        self.averages: dict[str, SigmaAverage] = {}

    @hookimpl
    def infoshape_taps(self) -> list[Tap]:
        """The outputs of ``layers`` and the input of ``input_module``."""
        module = self.config.input_module
        self.taps = [Tap(glob) for glob in self.config.layers]
        if not self.taps:
            log.info(
                "renyi: no layers given; no epoch metrics (the estimator stays available "
                "offline: infoshape analyze); set layers=[...] to measure modules in training"
            )
        self.input_tap = Tap(module, point="pre") if module else None
        return self.taps + ([self.input_tap] if self.input_tap else [])

    def _matrix(self, name: str, t: torch.Tensor, labels: torch.Tensor) -> tuple[float, Any]:
        c = self.config
        if c.sigma is not None:
            sigma = c.sigma
        elif c.sigma_method == "silverman" or not is_labels(labels):
            sigma = silverman_sigma(t, c.silverman_gamma, c.convention)
        else:
            avg = self.averages.setdefault(name, SigmaAverage(decay=c.sigma_decay))
            sigma = select_sigma(t, labels, c.n_candidates, convention=c.convention, average=avg)
        return sigma, normalize(gram(t, sigma, c.convention))

    @hookimpl
    def infoshape_metrics(
        self, session: Any, captures: Mapping[str, torch.Tensor], targets: Any, stage: str
    ) -> dict[str, float]:
        """Entropy and mutual informations of each tapped capture of the probe set."""
        if stage != "epoch" or targets is None or not captures:
            return {}
        c, out = self.config, {}
        with torch.no_grad():
            y = as_tensor(targets)
            A_y = as_matrix(y, None, c.convention)
            h_y = entropy(A_y, c.alpha, method=c.method)
            A_x = h_x = None
            if self.input_tap is not None:
                x_name = session.capture_names(self.input_tap)[0]
                A_x = self._matrix(x_name, captures[x_name], y)[1]
                h_x = entropy(A_x, c.alpha, method=c.method)
            for name in (n for tap in self.taps for n in session.capture_names(tap)):
                if (t := captures.get(name)) is None:
                    continue
                sigma, A_t = self._matrix(name, t, y)
                h_t = entropy(A_t, c.alpha, method=c.method)
                out[f"renyi.{name}.sigma"] = float(sigma)
                out[f"renyi.{name}.H_T"] = float(h_t)
                out[f"renyi.{name}.I_TY"] = float(
                    h_t + h_y - joint_entropy(A_t, A_y, c.alpha, method=c.method)
                )
                if A_x is not None and h_x is not None:
                    h_xt = joint_entropy(A_x, A_t, c.alpha, method=c.method)
                    out[f"renyi.{name}.I_XT"] = float(h_x + h_t - h_xt)
        return out

    @hookimpl
    def infoshape_estimators(self) -> list[Estimator]:
        """The ``renyi`` estimator."""
        return [
            Estimator(
                name="renyi",
                function=mutual_information,
                unit="nats",
                differentiable=True,
                cost="O(N^3) exact, O(k N^2) lanczos",
                description="matrix-based Rényi α-entropy MI (Sanchez Giraldo et al.), α = 1.01",
                information_plane=information_plane,
            )
        ]
