"""The ``irnn`` plugin: the information-regularized logit penalty of IRNN and its diagnostics.

"Information Regularized Neural Networks" (ICLR 2019 submission; docs/methods.md §4) splits a
classifier into features ``F(x)`` and a final linear layer ``W`` whose rows ``w_c`` are the
per-class weight vectors (the paper's ``w`` is ``d × C`` and calls them *columns*; torch's
``nn.Linear.weight`` is ``C × d``, so here they are rows). Eq. (7) trains with

    L = α₁‖W‖₁ + (1/n) Σ_k [α₂·‖w_{y_k}‖₂·‖F(x_k)‖₂ − log softmax(W F(x_k) + b)_{y_k}]

(Hölder's bound of ``|w_{y_k}ᵀF(x_k)|``, Prop. 2.1). The plugin adds, as separate penalties,

- ``irnn.logit``: ``mean_k ‖w_{y_k}‖₂·‖F(x_k)‖₂`` with weight α₂ at every step
  (``mode="naive"``, alias ``"l2_logit"``, docs/methods.md §4: ``irnn.naive`` = ``‖W‖²``,
  the squared Frobenius norm, the paper's "NaiveReg" baseline of Table 1);
- ``irnn.l1``: ``‖W‖₁`` with weight α₁ on the steps ``session.step % l1_every == 0`` only
  (0-based steps 0, k, 2k, …: the first step counts, as ``step % 30 == 0`` does in the
  paper's TensorFlow loop, App. E "every 30 iterations"); on other steps it is not computed.
  The schedule follows ``session.step``, which ``Session.load_state_dict`` restores, so a
  resumed run keeps it (the plugin has no other state).

The bias is not penalized. ``F(x)`` is the input of ``W``, tapped with ``Tap(point="pre")``;
no extra forward pass is made. The α₁ term is independent of ``mode`` (set ``alpha1=0`` for
the paper's naive baseline, which used α₁ = 0).

Epoch metrics on the probe set (``p = softmax(outputs)``; the paper's empirical estimators,
Props. 2.1 and 2.2, under its uniform-prior assumption (I)): ``irnn.I_X_Yhat``
(:func:`information_x_yhat`), ``irnn.I_Y_Yhat`` (:func:`information_y_yhat`),
``irnn.constrain`` = their difference (Eq. 3), ``irnn.feature_norm`` (mean ``‖F(x)‖₂``) and,
even without a probe set, ``irnn.weight_norm`` (mean row norm ``‖w_c‖₂``, the paper's
Fig. 4 "average ℓ2 norm of the columns of w") and ``irnn.sparsity`` (fraction of entries
with ``|w| < zero_tol``, Fig. 4). With ``batch_metrics`` the same constrain terms of each
training batch are emitted as ``irnn.batch.*`` step metrics (the paper's Table 1 averages
the constrain "throughout the training process"). All values in nats.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from typing import Any, Literal

import attrs
import torch
from torch import nn

from infoshape.capture import Tap
from infoshape.errors import CaptureError, ConfigError
from infoshape.hookspecs import hookimpl
from infoshape.math.linalg import full_precision, require_class_labels
from infoshape.objective import Penalty
from infoshape.options import at_least, non_negative, one_of, positive
from infoshape.plugin import Plugin

__all__ = [
    "IRNN",
    "IRNNConfig",
    "constrain",
    "find_classifier",
    "information_x_yhat",
    "information_y_yhat",
    "logit_penalty",
    "weight_sparsity",
]

log = logging.getLogger(__name__)


def find_classifier(model: nn.Module, name: str | None = None) -> tuple[str, nn.Linear]:
    """The final linear classifier: module ``name``, or the last ``nn.Linear`` in module order.

    Raises:
        ConfigError: no ``nn.Linear`` in the model, ``name`` matches no module, or it is
            not an ``nn.Linear``.
    """
    modules = dict(model.named_modules())
    if name is None:
        linear = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
        if not linear:
            raise ConfigError(
                f"irnn: {type(model).__name__} has no nn.Linear to regularize",
                expected="a model whose final classifier is an nn.Linear (features -> logits)",
                got=f"module types {sorted({type(m).__name__ for m in modules.values()})}",
                fix="end the model in nn.Linear, or name it with the irnn option classifier=...",
            )
        name = linear[-1]
    if name not in modules or not name:
        close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.3)
        raise ConfigError(
            f"irnn: classifier {name!r} is no module of {type(model).__name__}",
            expected="a name from model.named_modules()",
            got=repr(name),
            fix=f"closest names: {', '.join(close)}" if close else "leave classifier=None",
        )
    if not isinstance(modules[name], nn.Linear):
        raise ConfigError(
            f"irnn: classifier {name!r} is not an nn.Linear",
            expected="the final nn.Linear layer (its weight is W, its input F(x))",
            got=type(modules[name]).__name__,
            fix="name the nn.Linear that produces the logits",
        )
    return name, modules[name]


def _checked_targets(targets: torch.Tensor, n_classes: int, n: int) -> torch.Tensor:
    targets = torch.as_tensor(targets).reshape(-1)
    if targets.shape[0] != n:
        raise ConfigError(
            "irnn: labels and samples differ in number",
            expected=f"{n} labels, one per sample",
            got=f"{targets.shape[0]} labels",
            fix="pass the labels of the same batch",
        )
    require_class_labels(
        targets,
        n_classes,
        "irnn",
        fix="check the data set's number of classes against the classifier's outputs "
        "(one row of W per class)",
    )
    return targets.long()


@full_precision
def logit_penalty(
    weight: torch.Tensor, features: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """``(1/n) Σ_k ‖w_{y_k}‖₂·‖F(x_k)‖₂`` (Eq. 7 without α₂); differentiable in both.

    Args:
        weight: ``W`` of shape ``(C, d)`` (``nn.Linear.weight``).
        features: ``F(x)`` of shape ``(n, d)``, the classifier's input.
        targets: labels ``y_k`` in ``[0, C)``, shape ``(n,)``.
    """
    if features.ndim != 2 or features.shape[1] != weight.shape[1]:
        raise ConfigError(
            "irnn: the classifier's input is not one feature vector per sample",
            expected=f"F(x) of shape (batch, {weight.shape[1]})",
            got=f"shape {tuple(features.shape)}",
            fix="flatten the features before the classifier (nn.Flatten)",
        )
    y = _checked_targets(targets, weight.shape[0], features.shape[0]).to(weight.device)
    return (weight.norm(dim=1)[y] * features.norm(dim=1)).mean()


def weight_sparsity(weight: torch.Tensor, tol: float = 1e-3) -> float:
    """Fraction of the entries of ``weight`` with ``|w| < tol`` (the paper's Fig. 4)."""
    return float((weight.detach().abs() < tol).double().mean())


def _probabilities(probs: torch.Tensor) -> torch.Tensor:
    p = torch.as_tensor(probs).double()
    if p.ndim != 2 or p.shape[0] == 0:
        raise ConfigError(
            "irnn: p(ŷ|x) needs one row of class probabilities per sample",
            expected="a tensor of shape (n, C) with n >= 1",
            got=f"shape {tuple(p.shape)}",
            fix="pass softmax(logits, dim=1)",
        )
    return p


def information_x_yhat(probs: torch.Tensor) -> torch.Tensor:
    """``I(X;Ŷ) ≈ (1/n) Σ_i Σ_ŷ p(ŷ|x_i)·log(|C|·p(ŷ|x_i))`` (Prop. 2.1, uniform ``p(ŷ)``).

    The mean KL divergence of ``p(·|x_i)`` from the uniform distribution over the ``C``
    columns of ``probs``; ``0·log 0 = 0``. Float64, nats.
    """
    p = _probabilities(probs)
    return torch.special.xlogy(p, p * p.shape[1]).sum(1).mean()


def information_y_yhat(
    probs: torch.Tensor, labels: torch.Tensor, n_classes: int | None = None
) -> torch.Tensor:
    """``I(Y;Ŷ) = Σ_{y,ŷ} π̂_{yŷ} log(π̂_{yŷ} / (π̂_{y+} π̂_{+ŷ}))`` (Prop. 2.2, Eqs. 33–34).

    ``π̂_{yŷ} = (1/(|C|·n_y)) Σ_{i: y_i = y} p(ŷ|x_i)`` estimates ``p(y, ŷ)`` under a uniform
    ``p(y)``; ``π̂_{y+}``, ``π̂_{+ŷ}`` are its marginals. ``|C|`` counts the classes present
    in ``labels`` (an absent class has no ``n_y`` to average over); when every class is
    present, as on a probe set, it is the paper's estimator exactly.

    Args:
        probs: ``p(ŷ|x_i)``, shape ``(n, C)``.
        labels: ``y_i`` in ``[0, n_classes)``, shape ``(n,)``.
        n_classes: the number of classes; default ``probs.shape[1]``.
    """
    p = _probabilities(probs)
    c = p.shape[1] if n_classes is None else n_classes
    if c != p.shape[1]:
        raise ConfigError(
            "irnn: probs and n_classes disagree",
            expected=f"probs with n_classes = {c} columns",
            got=f"{p.shape[1]} columns",
            fix="pass n_classes=probs.shape[1] or leave it None",
        )
    y = _checked_targets(labels, c, p.shape[0]).to(p.device)
    sums = p.new_zeros(c, c).index_add_(0, y, p)
    counts = torch.bincount(y, minlength=c).to(p)
    present = counts > 0
    pi = sums[present] / (counts[present, None] * int(present.sum()))
    outer = pi.sum(1, keepdim=True) * pi.sum(0, keepdim=True)
    return (torch.special.xlogy(pi, pi) - torch.special.xlogy(pi, outer)).sum()


def constrain(
    probs: torch.Tensor, labels: torch.Tensor, n_classes: int | None = None
) -> dict[str, float]:
    """``I(X;Ŷ)``, ``I(Y;Ŷ)`` and the constrain ``I(X;Ŷ) − I(Y;Ŷ)`` (Eq. 3), in nats.

    Returns:
        ``{"I_X_Yhat": ..., "I_Y_Yhat": ..., "constrain": ...}``.
    """
    i_x = float(information_x_yhat(probs))
    i_y = float(information_y_yhat(probs, labels, n_classes))
    return {"I_X_Yhat": i_x, "I_Y_Yhat": i_y, "constrain": i_x - i_y}


def _mode(value: str) -> str:
    return "naive" if value == "l2_logit" else value


@attrs.frozen(kw_only=True)
class IRNNConfig:
    """Options of the ``irnn`` plugin (defaults: docs/methods.md §4 and the issue).

    Attributes:
        alpha1: α₁, weight of ``‖W‖₁``; 0 disables the term.
        alpha2: α₂, weight of the logit term (or of ``‖W‖²`` in naive mode); 0 disables it.
            The default 0.01 is the paper's (Table 1) in its own normalization (Eq. 7 averages
            the logit term over the batch, as here); on the zoo ``mlp`` it lowers the test
            constrain by 3 %, the paper's scale at α₂ = 0.01 (1 % on ResNet-32, 6 % on the
            wide ResNet).
        l1_every: the ℓ1 term is added on steps ``step % l1_every == 0`` (0-based).
        mode: ``"irnn"`` (Eq. 7) or ``"naive"`` (``α₂‖W‖²``; ``"l2_logit"`` is the same).
        classifier: name of the final ``nn.Linear`` in ``named_modules()``; ``None``: the last.
        zero_tol: entries with ``|w| <`` this count as zero in ``irnn.sparsity``.
        batch_metrics: also emit ``irnn.batch.{I_X_Yhat, I_Y_Yhat, constrain}`` per step.
    """

    alpha1: float = attrs.field(default=1e-4, validator=non_negative())
    alpha2: float = attrs.field(default=0.01, validator=non_negative())
    l1_every: int = attrs.field(default=30, validator=at_least(1))
    mode: Literal["irnn", "naive", "l2_logit"] = attrs.field(
        default="irnn", converter=_mode, validator=one_of("irnn", "naive")
    )
    classifier: str | None = None
    zero_tol: float = attrs.field(default=1e-3, validator=positive())
    batch_metrics: bool = False


class IRNN(Plugin):
    """Add the IRNN penalties (Eq. 7) and emit the constrain diagnostics (module docstring)."""

    name = "irnn"
    weight_option = "alpha2"
    Config = IRNNConfig

    def __init__(self) -> None:
        super().__init__()
        self.tap: Tap | None = None
        self.linear: nn.Linear | None = None

    @hookimpl
    def infoshape_taps(self, session: Any) -> list[Tap]:
        """Find the classifier ``W`` in the (wrapped) model and tap its input ``F(x)``."""
        name, self.linear = find_classifier(session.model, self.config.classifier)
        if self.config.classifier is None:
            log.info(
                "irnn: no classifier given; W is the last nn.Linear, %s (%d classes x %d features)",
                name,
                self.linear.out_features,
                self.linear.in_features,
            )
        self.tap = Tap(name, point="pre")
        return [self.tap]

    def _found(self) -> tuple[Tap, nn.Linear]:
        """The tap of ``F(x)`` and the classifier ``W``, found when the session started."""
        if self.tap is None or self.linear is None:
            raise CaptureError(
                "irnn: the classifier is not known yet",
                expected="the plugin's hooks called by a started infoshape.Session",
                got="a penalty or metric asked for before infoshape_taps ran",
                fix="enable irnn through infoshape.Session(model, plugins=['irnn'])",
            )
        return self.tap, self.linear

    def _features(self, session: Any, captures: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        return captures.get(session.capture_names(self._found()[0])[0])

    @hookimpl
    def infoshape_penalty(
        self, session: Any, captures: Mapping[str, torch.Tensor], targets: torch.Tensor
    ) -> list[Penalty]:
        """``irnn.logit`` (or ``irnn.naive``) every step, ``irnn.l1`` on scheduled steps."""
        (tap, linear), c = self._found(), self.config
        weight = linear.weight
        out = []
        if c.alpha2 > 0 and c.mode == "naive":
            out.append(Penalty("irnn.naive", weight.pow(2).sum(), c.alpha2))
        elif c.alpha2 > 0:
            features = self._features(session, captures)
            if features is None:
                raise CaptureError(
                    "irnn: the classifier's input was not captured in this forward pass",
                    expected=f"session.model(x) to run {tap.describe()!r}",
                    got=f"captures {sorted(captures)}",
                    fix="compute the loss on the output of session.model(x)",
                )
            out.append(Penalty("irnn.logit", logit_penalty(weight, features, targets), c.alpha2))
        if c.alpha1 > 0 and session.step % c.l1_every == 0:
            out.append(Penalty("irnn.l1", weight.abs().sum(), c.alpha1))
        return out

    @hookimpl
    def infoshape_metrics(
        self,
        session: Any,
        captures: Mapping[str, torch.Tensor],
        outputs: torch.Tensor | None,
        targets: torch.Tensor | None,
        stage: str,
    ) -> dict[str, float]:
        """Constrain terms on the probe set (or each batch) and the statistics of ``W``."""
        out: dict[str, float] = {}
        if (
            outputs is not None
            and targets is not None
            and (stage == "epoch" or self.config.batch_metrics)
        ):
            terms = constrain(torch.softmax(outputs.detach().double(), dim=1), targets)
            prefix = "irnn." if stage == "epoch" else "irnn.batch."
            out.update({prefix + k: v for k, v in terms.items()})
        if stage == "epoch":
            features = self._features(session, captures)
            if features is not None:
                out["irnn.feature_norm"] = float(features.detach().double().norm(dim=1).mean())
            weight = self._found()[1].weight.detach().double()
            out["irnn.weight_norm"] = float(weight.norm(dim=1).mean())
            out["irnn.sparsity"] = weight_sparsity(weight, self.config.zero_tol)
        return out
