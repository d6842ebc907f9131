"""The ``mi_ce`` plugin: cross-entropy mixed with the Rényi MI of labels and predictions.

Zaugg et al., "Cross-entropy regularization with mutual information in training CNNs"
(papers/mi_ce_mixing.md; docs/methods.md §5). The objective (eq. 7) is

    ``L = f(e)·CE − (1 − f(e))·I_α(Y; Ŷ)``,  ``f(e) = (1 + e)^(−1/2)``, ``e`` the 0-based epoch,

with ``I_α(Y; Ŷ) = H_α(A_y) + H_α(A_ŷ) − H_α(A_y, A_ŷ)`` (eq. 4–6, α = 1.01) between the
one-hot label Gram matrix and the Gaussian Gram matrix of the softmax outputs, computed by
:mod:`infoshape.math.matrix_entropy` on the exact float64 ``eigvalsh`` path (differentiable).
Per batch this costs two ``N×N`` eigen-decompositions (``A_ŷ`` and the joint); ``H_α(A_y)``
is the Rényi entropy of the class proportions (the eigenvalues of the normalized label Gram).
Schedules (:func:`transition`): ``inverse_sqrt`` (the paper's), ``constant``, ``linear``,
``cosine``, or a Python callable ``epoch -> f``. At ``f = 1`` the objective *is* the
cross-entropy tensor (no MI is computed).

Kernel width (§3.2, Fig. 1): ``n_candidates`` equidistant widths on ``sigma_range``; each
training batch adds its kernel-target alignment curve ``⟨K_σ, K_y⟩_F / (‖K_σ‖_F ‖K_y‖_F)``
of the detached softmax outputs; at the epoch's end the argmax of the batch-mean curve is the
epoch's width, folded into a :class:`~infoshape.math.matrix_entropy.SigmaAverage` (``sigma_decay``,
0: the epoch's width as is). Epoch ``e`` trains with the width chosen on epoch ``e − 1``;
during epoch 0 the argmax of the mean curve of the batches seen so far (the first batch's
choice at the first step). Under the default schedule ``f(0) = 1``, so that width is unused.

Epoch metrics on the probe set, averaged over consecutive chunks of ``probe_chunk`` samples
(the paper averages over batches; shuffle a class-sorted probe set): ``mi_ce.I_YYhat`` with
the epoch's width, ``mi_ce.I_YX`` with the input ``X`` (the input of ``input_module``; its
width by :func:`~infoshape.math.matrix_entropy.select_sigma` per chunk), ``mi_ce.dpi`` (1.0 when
``I(Y;X) ≥ I(Y;Ŷ)``, the DPI of eq. 1), ``mi_ce.grad_norm`` (the saturation signal of
Fig. 6, ``‖∇_θ I_α(Y;Ŷ)‖₂`` on the first probe chunk, model in eval mode: one extra
forward and backward per epoch, none per step), ``mi_ce.sigma``, ``mi_ce.f`` and
``mi_ce.alignment`` (the epoch's batch-mean alignment over :meth:`MICE.grid`, Fig. 1). Step
metrics: ``mi_ce.ce`` and, when ``f < 1``, ``mi_ce.mi`` of the training batch. Units: nats
(``base=2``: bits, as the paper's eq. 4).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs
import numpy as np
import torch
from torch import nn

from infoshape.capture import Tap
from infoshape.errors import ConfigError
from infoshape.hookspecs import hookimpl
from infoshape.math.linalg import one_hot
from infoshape.math.matrix_entropy import (
    DECAY,
    LENGTH,
    Convention,
    SigmaAverage,
    alignment_curve,
    entropy,
    gram,
    joint_entropy,
    label_gram,
    normalize,
    select_sigma,
)
from infoshape.objective import cross_entropy
from infoshape.options import at_least, in_range, one_of, positive, satisfies
from infoshape.plugin import Plugin

__all__ = [
    "MICE",
    "SCHEDULES",
    "MICEConfig",
    "alignment_curve",
    "label_mi",
    "mi_ce_loss",
    "transition",
]

log = logging.getLogger(__name__)

SCHEDULES = ("inverse_sqrt", "constant", "linear", "cosine")
Schedule = str | Callable[..., float]  # a name in SCHEDULES or epoch -> f


def transition(
    epoch: int, schedule: Schedule = "inverse_sqrt", *, f_end: float = 0.1, horizon: int = 50
) -> float:
    """The mixing factor ``f(e)`` of eq. 7, in ``[0, 1]``.

    Args:
        epoch: the 0-based epoch ``e``.
        schedule: ``"inverse_sqrt"``: ``(1 + e)^(−1/2)`` (the paper); ``"constant"``: ``f_end``;
            ``"linear"``: ``1 − (1 − f_end)·t``; ``"cosine"``: ``f_end + (1 − f_end)·(1 +
            cos πt)/2``, ``t = min(e / horizon, 1)``; or a callable ``epoch -> f``.
        f_end: the value ``linear`` and ``cosine`` reach at ``horizon``; ``constant``'s value.
        horizon: epochs over which ``linear`` and ``cosine`` fall from 1 to ``f_end``.
    """
    t = min(epoch / horizon, 1.0)
    if callable(schedule):
        f = float(schedule(epoch))
    elif schedule == "inverse_sqrt":
        f = (1.0 + epoch) ** -0.5
    elif schedule == "constant":
        f = f_end
    elif schedule == "linear":
        f = 1.0 - (1.0 - f_end) * t
    elif schedule == "cosine":
        f = f_end + (1.0 - f_end) * (1.0 + math.cos(math.pi * t)) / 2
    else:
        raise ConfigError(
            "mi_ce: unknown schedule",
            expected=f"one of {', '.join(SCHEDULES)} or a callable epoch -> f",
            got=repr(schedule),
            fix="use schedule='inverse_sqrt' (the paper's)",
        )
    if not 0.0 <= f <= 1.0:
        raise ConfigError(
            f"mi_ce: the schedule gave f({epoch}) outside [0, 1]",
            expected="0 <= f(e) <= 1",
            got=repr(f),
            fix="return a mixing factor in [0, 1] (1: pure cross-entropy)",
        )
    return f


def label_mi(
    z: torch.Tensor,
    labels: torch.Tensor,
    sigma: float,
    alpha: float = 1.01,
    *,
    convention: Convention = "2sigma2",
    base: Literal["e", 2] = "e",
    method: Literal["exact", "auto"] = "exact",
    n_classes: int | None = None,
) -> torch.Tensor:
    """``I_α(Y; Z) = H_α(A_y) + H_α(A_z) − H_α(A_y, A_z)`` (eq. 4–6), a float64 scalar.

    ``z`` ``(N, ...)``: the softmax predictions for ``I(Y;Ŷ)``, the inputs for ``I(Y;X)``;
    ``A_z`` their Gaussian Gram of width ``sigma``, ``A_y`` the one-hot label Gram (both
    trace-normalized, :mod:`infoshape.math.matrix_entropy`). ``H_α(A_y)`` comes from the class
    proportions ``n_c/N``, which are the eigenvalues of ``A_y``, so a batch costs two ``N×N``
    eigen-decompositions. Differentiable in ``z`` with ``method="exact"``. ``n_classes``: the
    number of classes (a training step passes the logits' width: no host sync reading
    ``max(labels)``); ``None``: ``max(labels) + 1``. The result does not depend on it.
    """
    labels = torch.as_tensor(labels).reshape(-1)
    Y = one_hot(labels, n_classes)
    A_y = normalize(label_gram(Y))
    A_z = normalize(gram(z, sigma, convention))
    share = Y.sum(0) / labels.numel()  # absent classes: eigenvalue 0, left out by entropy
    h_y = entropy(torch.diag(share), alpha, base)  # the spectrum of A_y
    options: dict[str, Any] = {"base": base, "method": method}
    return h_y + entropy(A_z, alpha, **options) - joint_entropy(A_y, A_z, alpha, **options)


def mi_ce_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    f: float,
    sigma: float | None,
    alpha: float = 1.01,
    **options: Any,
) -> torch.Tensor:
    """Eq. 7: ``f·CE − (1 − f)·I_α(Y; softmax(logits))``; ``f = 1`` returns the CE tensor.

    ``options`` (``convention``, ``base``) as for :func:`label_mi`.
    """
    return _terms(logits, labels, f, sigma, alpha, **options)[0]


def _terms(
    logits: torch.Tensor,
    labels: torch.Tensor,
    f: float,
    sigma: float | None,
    alpha: float,
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(L, CE, I_α)`` of eq. 7; ``I_α`` is ``None`` (not computed) when ``f = 1``."""
    ce = cross_entropy(logits, labels)
    if f == 1.0:
        return ce, ce, None
    if sigma is None:
        raise ConfigError(
            "mi_ce: the MI term needs a kernel width",
            expected="sigma > 0 when f < 1",
            got="sigma=None",
            fix="pass sigma, or let the plugin choose it by kernel alignment",
        )
    mi = label_mi(logits.softmax(1), labels, sigma, alpha, n_classes=logits.shape[-1], **options)
    return f * ce - (1.0 - f) * mi.to(ce.dtype), ce, mi


_schedule = satisfies(
    lambda value: callable(value) or value in SCHEDULES,
    f"one of {', '.join(map(repr, SCHEDULES))} or a callable",
    problem="is not a schedule",
    example="inverse_sqrt",
)


_range = satisfies(
    lambda value: len(value) == 2 and 0 < value[0] < value[1],
    "(low, high) with 0 < low < high",
    problem="is not an interval of widths",
    example=(0.1, 1.0),
)


@attrs.frozen(kw_only=True)
class MICEConfig:
    """Options of the ``mi_ce`` plugin (defaults: docs/methods.md §5 and its table).

    Attributes:
        alpha: order α of the Rényi entropies.
        schedule: ``f(e)``: a name in :data:`SCHEDULES` or (from Python) a callable
            ``epoch -> f`` in ``[0, 1]`` (:func:`transition`).
        f_end: the final value of ``linear``/``cosine``, the value of ``constant``.
        horizon: epochs of the ``linear``/``cosine`` transition.
        convention: kernel form of every width (:mod:`infoshape.math.matrix_entropy`).
        sigma: a fixed width of the prediction Gram; ``None``: chosen by alignment per epoch.
        sigma_range: the interval, in ``convention``, of the ``n_candidates`` equidistant
            widths. Softmax rows lie at most √2 apart; below 0.1 the alignment optimum of the
            near-uniform outputs of an untrained network measures their noise (then
            ``I(Y;Ŷ) ≈ H(Y)`` for any distinct predictions), so the default grid starts there.
        n_candidates: number of candidate widths (the paper: 100).
        sigma_decay: across-epoch moving average of the width (0: each epoch's choice).
        base: ``"e"`` (nats, the unit of CE) or 2 (bits, the paper's eq. 4).
        input_module: the module whose input is ``X`` for ``I(Y;X)`` and the saturation pass;
            ``None``: the model's first leaf module (it must receive the model input as is).
        input_sigma: the width of ``X``: ``"alignment"`` (its own, by
            :func:`~infoshape.math.matrix_entropy.select_sigma` per chunk) or ``"shared"`` (the
            prediction width, one reading of §3.2; pixel distances ≫ σ then make
            ``I(Y;X) = H(Y)``, the largest value, so the DPI flag holds trivially).
        probe_chunk: probe samples per chunk of the epoch metrics.
    """

    alpha: float = attrs.field(default=1.01, validator=positive())
    schedule: Schedule = attrs.field(default="inverse_sqrt", validator=_schedule)
    f_end: float = attrs.field(default=0.1, validator=in_range(0.0, 1.0, closed="[]"))
    horizon: int = attrs.field(default=50, validator=at_least(1))
    convention: Convention = attrs.field(default="2sigma2", validator=one_of(*LENGTH))
    sigma: float | None = attrs.field(default=None, validator=positive(optional=True))
    sigma_range: tuple[float, float] = attrs.field(
        default=(0.1, 1.0), converter=tuple, validator=_range
    )
    n_candidates: int = attrs.field(default=100, validator=at_least(1))
    sigma_decay: float = attrs.field(default=0.0, validator=DECAY)
    base: Literal["e", 2] = attrs.field(default="e", validator=one_of("e", 2))
    input_module: str | None = None
    input_sigma: Literal["alignment", "shared"] = attrs.field(
        default="alignment", validator=one_of("alignment", "shared")
    )
    probe_chunk: int = attrs.field(default=256, validator=at_least(2))


class MICE(Plugin):
    """Supply eq. 7 as the objective; emit the DPI and saturation diagnostics per epoch.

    State (saved by ``infoshape_state_dict``): the width of the current epoch, the epoch's
    sum of alignment curves and its batch count, and the across-epoch width average.
    """

    name = "mi_ce"
    weight_option = None  # the objective's mixing is the schedule f(e), not a weight
    Config = MICEConfig

    def __init__(self) -> None:
        super().__init__()
        self.input_tap: Tap | None = None
        self.sigma: float | None = None  # the width chosen on the previous epoch
        self.average = SigmaAverage(decay=0.0)
        self._curve: torch.Tensor | None = None  # sum of this epoch's alignment curves
        self._batches = 0
        self._step: dict[str, torch.Tensor] = {}

    @hookimpl
    def infoshape_configure(self, config: MICEConfig) -> None:
        """Keep the validated options; the width average takes their ``sigma_decay``."""
        super().infoshape_configure(config)
        self.average = SigmaAverage(decay=config.sigma_decay)

    @hookimpl
    def infoshape_taps(self, session: Any) -> list[Tap]:
        """The input of ``input_module`` (default: the model's first leaf module): ``X``."""
        module = self.config.input_module
        if module is None:
            leaves = (n for n, m in session.module.named_modules() if n and not any(m.children()))
            module = next(leaves, None)
            log.info(
                "mi_ce: no input_module given; X of I(Y;X) is the input of the first leaf "
                "module, %s",
                module or "none (no I(Y;X), no saturation metric)",
            )
        self.input_tap = Tap(module, point="pre") if module else None
        return [self.input_tap] if self.input_tap else []

    def grid(self) -> np.ndarray:
        """The candidate widths: ``n_candidates`` equidistant points of ``sigma_range``."""
        low, high = self.config.sigma_range
        return np.linspace(low, high, self.config.n_candidates)

    def width(self) -> float | None:
        """The width of this epoch: fixed, the previous epoch's, or epoch 0's running choice."""
        if self.config.sigma is not None or self.sigma is not None:
            return self.config.sigma or self.sigma
        return None if self._curve is None else float(self.grid()[int(self._curve.argmax())])

    def _f(self, epoch: int) -> float:
        c = self.config
        return transition(epoch, c.schedule, f_end=c.f_end, horizon=c.horizon)

    @hookimpl
    def infoshape_objective(
        self, session: Any, outputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """Eq. 7 on the batch; adds the batch's alignment curve to the epoch's sum."""
        c = self.config
        if c.sigma is None and outputs.ndim == 2:
            probs, n = outputs.detach().softmax(1), outputs.shape[-1]
            curve = alignment_curve(probs, targets, self.grid(), c.convention, n_classes=n)
            self._curve = curve if self._curve is None else self._curve + curve
            self._batches += 1
        f = self._f(session.epoch)  # the width only when used: epoch 0's is a host sync
        loss, ce, mi = _terms(outputs, targets, f, self.width() if f < 1 else None, **_kw(c))
        self._step = {"mi_ce.ce": ce.detach()} | ({} if mi is None else {"mi_ce.mi": mi.detach()})
        return loss

    @hookimpl
    def infoshape_metrics(
        self,
        session: Any,
        captures: Mapping[str, torch.Tensor],
        outputs: torch.Tensor | None,
        targets: torch.Tensor | None,
        stage: str,
    ) -> dict[str, Any]:
        """Step: the batch's CE and MI. Epoch: width, alignment and the probe diagnostics."""
        if stage == "step":
            step, self._step = self._step, {}
            return step
        out: dict[str, Any] = {"mi_ce.f": self._f(session.epoch)}
        if self._curve is not None:
            out["mi_ce.alignment"] = (self._curve / self._batches).numpy(force=True)
        sigma = self.width()
        if sigma is None:
            return out
        out["mi_ce.sigma"] = sigma
        if outputs is not None and targets is not None and outputs.ndim == 2:
            names = session.capture_names(self.input_tap) if self.input_tap else []
            x = captures.get(names[0]) if names else None
            out.update(self._probe_metrics(session.module, x, outputs, targets, sigma))
        return out

    def _probe_metrics(
        self,
        model: nn.Module,
        x: torch.Tensor | None,
        outputs: torch.Tensor,
        targets: torch.Tensor,
        sigma: float,
    ) -> dict[str, float]:
        """``I(Y;Ŷ)``, ``I(Y;X)``, the DPI flag and ``‖∇_θ I(Y;Ŷ)‖₂`` on probe chunks."""
        c, y = self.config, torch.as_tensor(targets).reshape(-1)
        chunks = [slice(a, a + c.probe_chunk) for a in range(0, y.numel(), c.probe_chunk)]
        weights = [y[k].numel() / y.numel() for k in chunks]

        def mean(z: torch.Tensor, width: Callable[[torch.Tensor, torch.Tensor], float]) -> float:
            return sum(
                w * float(label_mi(z[k], y[k], width(z[k], y[k]), method="auto", **_kw(c)))
                for w, k in zip(weights, chunks, strict=True)
            )

        with torch.no_grad():
            out = {"mi_ce.I_YYhat": mean(outputs.softmax(1), lambda _z, _y: sigma)}
            if x is None:
                return out
            width_x = (lambda _z, _y: sigma) if c.input_sigma == "shared" else self._align
            out["mi_ce.I_YX"] = mean(x, width_x)
        out["mi_ce.dpi"] = float(out["mi_ce.I_YX"] >= out["mi_ce.I_YYhat"])
        out["mi_ce.grad_norm"] = self._grad_norm(model, x[chunks[0]], y[chunks[0]], sigma)
        return out

    def _align(self, z: torch.Tensor, y: torch.Tensor) -> float:
        c = self.config
        return select_sigma(z, y, c.n_candidates, convention=c.convention)

    def _grad_norm(self, model: Any, x: torch.Tensor, y: torch.Tensor, sigma: float) -> float:
        """``‖∇_θ I_α(Y; Ŷ)‖₂`` on one probe chunk, the model in eval mode (Fig. 6)."""
        params = [p for p in model.parameters() if p.requires_grad]
        device = params[0].device if params else torch.device("cpu")
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                probs = model(x.to(device)).softmax(1)
                mi = label_mi(probs, y.to(device), sigma, **_kw(self.config))
                grads = torch.autograd.grad(mi, params, allow_unused=True)
        finally:
            model.train(was_training)
        return math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads if g is not None))

    @hookimpl
    def infoshape_epoch_end(self, session: Any, epoch: int) -> None:
        """Fold the argmax of the epoch's mean alignment curve into the width (Fig. 1)."""
        if self._curve is not None:
            self.sigma = self.average.update(float(self.grid()[int(self._curve.argmax())]))
        self._curve, self._batches = None, 0

    @hookimpl
    def infoshape_state_dict(self) -> dict[str, Any]:
        """The width, the epoch's alignment sum and count, the width average."""
        return {
            "sigma": self.sigma,
            "average": self.average.value,
            "curve": self._curve,
            "batches": self._batches,
        }

    @hookimpl
    def infoshape_load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`infoshape_state_dict`."""
        self.sigma, self.average.value = state["sigma"], state["average"]
        self._curve, self._batches = state["curve"], int(state["batches"])


def _kw(c: MICEConfig) -> dict[str, Any]:
    """The estimator options of :func:`label_mi` from the plugin's config."""
    return {"alpha": c.alpha, "convention": c.convention, "base": c.base}
