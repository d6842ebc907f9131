"""The seven Choi–Rhee representation regularizers as plugins, one entry point each.

``cr``, ``cw_cr``, ``vr``, ``cw_vr``, ``l1r``, ``rr``, ``cw_rr`` (docs/methods.md §6; the math is
:mod:`infoshape.plugins.choi_rhee.functional`). Each taps the post-activation of its
``layers`` (module names or globs; by default the last activation module of the model, e.g.
the last ``nn.ReLU`` before the classifier: the paper regularizes the last hidden layer) and
adds ``coefficient · Ω(Z)`` to the loss for every tapped layer, ``Z`` the batch's
activations. A convolutional map ``(N, C, H, W)`` counts its channels as units and its
positions as samples (``(N·H·W, C)``, as batch norm does, read in place: the functions'
``channels=True``; the paper only regularizes fully connected layers; L1R's batch sum
averages each map's positions, so it is the same either way), unless
``conv_units="flatten"`` makes each ``C·H·W`` entry a unit (the covariance then has
``(C·H·W)²`` entries: memory grows fast). The penalty is emitted as ``penalty.<plugin>``
(``penalty.<plugin>.<capture>`` when ``layers`` selects several).

The class-wise variants use the batch's targets as class labels and need the number of
classes ``C`` (for the normalization and the label check): the ``n_classes`` option, or by
default the width of the model's output logits ``(N, C)``. Classes absent from a batch
add nothing.

Default coefficients (docs/methods.md §6). The first spec's ``coefficient 0.01`` is a loss
weight of the paper's Table 5 penalties, which are plain sums (CR sums ``c_ij²`` over
``i ≠ j``, both orders), on its 5-layer MLP (``u = 100`` units in the regularized layer,
``C = 10`` classes). Ours default to ``normalize=True``: divided by ``u(u−1)/2`` (one order of
pairs) for CR, by ``u`` for VR, L1R and RR, and by ``C`` more for the class-wise ones. The same
penalty at the paper's width is ``0.01 × (terms)``, so each plugin's default is that product:

======  ==============================  =========
plugin  paper λ × terms (u=100, C=10)   default
======  ==============================  =========
cr      0.01 × u(u−1) = 99              100
cw_cr   0.01 × C·u(u−1) = 990           1000
vr      0.01 × u                        1
cw_vr   0.01 × C·u                      10
rr      0.01 × u                        1
cw_rr   0.01 × C·u                      10
l1r     0.01 × u = 1 (not used)         0.01
======  ==============================  =========

With the unconverted 0.01, CR left accuracy and every characteristic unchanged to four
decimals on the zoo ``mlp`` (digits, 5 epochs); with the converted values each regularizer
moves its characteristic as the paper's Table 6 does (covariance, variance, stable rank
down) at no loss of accuracy. L1R is the exception: the converted 1 (as 0.1) silences
every unit there (sparsity 1, chance accuracy; the paper's lr is 10⁻⁴, ours 10⁻³), so its
default stays 0.01, which raises the sparsity from 0.34 to 0.52 at 97 % of the baseline's
accuracy (``tests/plugins/test_defaults.py`` checks all of them, and the accuracy on the zoo
``cnn`` too). On a conv map L1R is per map averaged over its positions
(:func:`~infoshape.plugins.choi_rhee.functional.l1r`): the ``C·H·W`` entries count as the
``u`` units of the normalization, as they do for the flattened map the classifier sees.
Summed over every position, the default weighed the digits ``cnn``'s ``4 × 4`` map 16 times
as much as the MLP's layer and drove the model to chance accuracy (0.10, baseline 0.90 after
5 epochs); per map it keeps 0.91 and raises ``relu2``'s sparsity from 0.07 to 0.31. On the
paper's own 5 × 100 MLP (digits, 20 epochs, batch 100) the defaults give the Table 6 values:
CR's covariance falls from 1.96 to 0.017 (paper: 2.08 to 0.01), VR's to 0.03, L1R's sparsity
rises from 0.43 to 0.87 (paper: 0.97), at the baseline's accuracy or better. With
``normalize=False`` give ``coefficient`` on the paper's scale (0.01; CR: twice the paper's
λ, ours counts each pair once).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import attrs
import torch
from torch import nn

from infoshape.capture import Tap
from infoshape.errors import CaptureError, ConfigError, TapError
from infoshape.hookspecs import hookimpl
from infoshape.objective import Penalty
from infoshape.options import non_negative, one_of, positive, with_defaults
from infoshape.plugin import Plugin
from infoshape.plugins.choi_rhee.functional import cr, cw_cr, cw_rr, cw_vr, l1r, rr, vr

__all__ = [
    "ACTIVATIONS",
    "CR",
    "L1R",
    "RR",
    "VR",
    "CRConfig",
    "ClassWiseConfig",
    "CwCR",
    "CwCRConfig",
    "CwRR",
    "CwRRConfig",
    "CwVR",
    "CwVRConfig",
    "L1RConfig",
    "RRConfig",
    "RegularizerConfig",
    "VRConfig",
    "last_activation",
]

log = logging.getLogger(__name__)

#: Module classes counted as activations when choosing the default layer.
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Softplus, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish,
)  # fmt: skip


def last_activation(model: nn.Module) -> str:
    """Name of the last activation module of ``model`` (``named_modules`` order).

    Raises:
        TapError: the model has no activation module.
    """
    names = [n for n, m in model.named_modules() if n and isinstance(m, ACTIVATIONS)]
    if not names:
        raise TapError(
            f"{type(model).__name__} has no activation module to regularize by default",
            expected="a model with an nn.ReLU (or another activation) module",
            got="no activation among named_modules()",
            fix='name the layers to regularize: options {"layers": ["<module name>"]}',
        )
    return names[-1]


@attrs.frozen(kw_only=True)
class RegularizerConfig:
    """Options of every Choi–Rhee regularizer (defaults: docs/methods.md's option tables).

    Attributes:
        coefficient: the loss weight λ of the penalty (each plugin has its own default: the
            module docstring's table).
        normalize: divide by the number of terms (``u(u−1)/2`` for CR, ``u`` otherwise,
            times ``C`` for class-wise variants).
        layers: module names or globs whose outputs are regularized; empty: the model's
            last activation module (:func:`last_activation`).
        conv_units: for maps ``(N, C, ...)``: ``"channels"`` (units are channels, positions
            are samples) or ``"flatten"`` (every entry of ``C × ...`` is a unit).
    """

    coefficient: float = attrs.field(default=0.01, validator=non_negative())
    normalize: bool = True
    layers: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    conv_units: Literal["channels", "flatten"] = attrs.field(
        default="channels", validator=one_of("channels", "flatten")
    )


@attrs.frozen(kw_only=True)
class ClassWiseConfig(RegularizerConfig):
    """Options of the class-wise regularizers ``cw_cr``, ``cw_vr``, ``cw_rr``.

    Attributes:
        n_classes: the number of classes ``C``; ``None``: the model output's width.
    """

    n_classes: int | None = attrs.field(default=None, validator=positive(optional=True))


@attrs.frozen(kw_only=True)
class L1RConfig(RegularizerConfig):
    """Options of ``l1r``.

    Attributes:
        reduction: ``"sum"`` over the batch (the paper) or ``"mean"`` over the batch.
    """

    reduction: Literal["sum", "mean"] = attrs.field(default="sum", validator=one_of("sum", "mean"))


class _Regularizer(Plugin, abc.ABC):
    """Tap ``layers``; add ``coefficient · function(Z)`` per tapped layer to the loss."""

    name: ClassVar[str]
    Config: ClassVar[type] = RegularizerConfig
    weight_option: ClassVar[str] = "coefficient"

    def __init__(self) -> None:
        super().__init__()
        self.taps: list[Tap] = []

    @hookimpl
    def infoshape_taps(self, session: Any) -> list[Tap]:
        """The outputs of ``layers``, or of the model's last activation module."""
        globs = self.config.layers or (last_activation(session.model),)
        if not self.config.layers:
            log.info(
                "%s: no layers given; regularizing the output of the last activation module, %s",
                self.name,
                globs[0],
            )
        self.taps = [Tap(glob) for glob in globs]
        return self.taps

    @hookimpl
    def infoshape_penalty(
        self, session: Any, captures: Mapping[str, torch.Tensor], outputs: Any, targets: Any
    ) -> list[Penalty]:
        """One penalty per tapped layer, weighted by ``coefficient``."""
        names = list(dict.fromkeys(n for tap in self.taps for n in session.capture_names(tap)))
        penalties = []
        for name in names:
            if (z := captures.get(name)) is None:
                raise CaptureError(
                    f"{self.name}: layer {name!r} produced no output in this forward pass",
                    expected=f"the batch's activations of {name!r}",
                    got=f"captures of {sorted(captures)}",
                    fix="call session.loss right after model(x), with every tapped layer run",
                )
            key = self.name if len(names) == 1 else f"{self.name}.{name}"
            value = self.penalty(z, targets, outputs)
            penalties.append(Penalty(key, value, self.config.coefficient))
        return penalties

    @property
    def channels(self) -> bool:
        """Whether a map's channels are the units (the functions' ``channels`` argument)."""
        return self.config.conv_units == "channels"

    @abc.abstractmethod
    def penalty(self, z: torch.Tensor, targets: Any, outputs: Any) -> torch.Tensor:
        """The unweighted penalty of one layer's batch activations ``z`` (each subclass's)."""


class _Whole(_Regularizer):
    """A regularizer of the whole batch: ``function(z, normalize)``."""

    function: ClassVar[Any]

    def penalty(self, z: torch.Tensor, targets: Any, outputs: Any) -> torch.Tensor:
        """``function(z, normalize)`` on the batch."""
        return type(self).function(z, normalize=self.config.normalize, channels=self.channels)


class _ClassWise(_Regularizer):
    """A class-wise regularizer: ``function(z, targets, C, normalize)``."""

    Config = ClassWiseConfig
    function: ClassVar[Any]

    def n_classes(self, outputs: Any) -> int:
        """``C``: the ``n_classes`` option, else the width of the ``(N, C)`` outputs."""
        if self.config.n_classes is not None:
            return self.config.n_classes
        if isinstance(outputs, torch.Tensor) and outputs.ndim == 2:
            return int(outputs.shape[1])
        raise ConfigError(
            f"{self.name}: cannot infer the number of classes from the model's outputs",
            expected="logits of shape (batch, classes), or the n_classes option",
            got=f"outputs of shape {tuple(getattr(outputs, 'shape', ()))}",
            fix=f'set options {{"{self.name}": {{"n_classes": C}}}}',
        )

    def penalty(self, z: torch.Tensor, targets: Any, outputs: Any) -> torch.Tensor:
        """``function`` over the classes present in the batch's ``targets``."""
        if targets is None:
            raise ConfigError(
                f"{self.name} needs the batch's class labels",
                expected="session.loss(outputs, targets) with integer targets",
                got="targets=None",
                fix="pass the labels of the batch to session.loss",
            )
        n = self.n_classes(outputs)
        normalize = self.config.normalize
        return type(self).function(z, targets, n, normalize=normalize, channels=self.channels)


# each regularizer's default coefficient: the module docstring's "Default coefficients"
CRConfig = with_defaults(RegularizerConfig, "CRConfig", coefficient=100.0)
VRConfig = with_defaults(RegularizerConfig, "VRConfig", coefficient=1.0)
RRConfig = with_defaults(RegularizerConfig, "RRConfig", coefficient=1.0)
CwCRConfig = with_defaults(ClassWiseConfig, "CwCRConfig", coefficient=1000.0)
CwVRConfig = with_defaults(ClassWiseConfig, "CwVRConfig", coefficient=10.0)
CwRRConfig = with_defaults(ClassWiseConfig, "CwRRConfig", coefficient=10.0)


class CR(_Whole):
    """``cr``: covariance regularizer (DeCov), ``½(‖C‖_F² − ‖diag C‖²)`` (Table 5)."""

    name = "cr"
    Config = CRConfig
    function = staticmethod(cr)


class VR(_Whole):
    """``vr``: variance regularizer, ``Σ_i Var(z_i)`` (Table 5)."""

    name = "vr"
    Config = VRConfig
    function = staticmethod(vr)


class RR(_Whole):
    """``rr``: rank regularizer, the Hölder bound on the stable rank (eqs. 7–9)."""

    name = "rr"
    Config = RRConfig
    function = staticmethod(rr)


class L1R(_Regularizer):
    """``l1r``: L1 representation regularizer, ``Σ_n Σ_i |z_i^n|`` (Table 5)."""

    name = "l1r"
    Config = L1RConfig

    def penalty(self, z: torch.Tensor, targets: Any, outputs: Any) -> torch.Tensor:
        """:func:`l1r` with the ``normalize`` and ``reduction`` options."""
        config = self.config
        return l1r(z, config.normalize, config.reduction, channels=self.channels)


class CwCR(_ClassWise):
    """``cw_cr``: CR of each class present in the batch, summed (Table 5, eq. 12)."""

    name = "cw_cr"
    Config = CwCRConfig
    function = staticmethod(cw_cr)


class CwVR(_ClassWise):
    """``cw_vr``: VR of each class present in the batch, summed (Table 5, eq. 13)."""

    name = "cw_vr"
    Config = CwVRConfig
    function = staticmethod(cw_vr)


class CwRR(_ClassWise):
    """``cw_rr``: RR of each class present in the batch, summed over all of them (Table 5)."""

    name = "cw_rr"
    Config = CwRRConfig
    function = staticmethod(cw_rr)
