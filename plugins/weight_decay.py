"""The weight-decay baselines of the Choi–Rhee family: ``l1w`` and ``l2w`` (docs/methods.md §6).

L1W adds ``coefficient · Σ_w |w|`` and L2W ``coefficient · Σ_w w²`` (the squared L2 norm,
without a ½) to the loss, the sums running over the model's weights: by default every
parameter with two or more dimensions (the matrices of ``nn.Linear``, the kernels of
convolutions), so biases and the 1-D scales and shifts of normalization layers are left
out (``biases=True`` takes them in). ``modules`` (module names or globs) restricts the sum
to the parameters those modules own. The selection is made once, on the session's model,
at the first penalty. Emitted as ``penalty.l1w`` / ``penalty.l2w``.

Defaults: ``l1w`` 10⁻⁴, ``l2w`` 10⁻³. The paper (Choi & Rhee, App. D) picks every loss weight
from ``{10⁻³, …, 100}`` by validation and reports none; its Table 6 shows the weight
penalties leaving accuracy and the representation's characteristics near the baseline's.
The gradient ``λ·sign(w)`` or ``2λw`` of a weight does not depend on the network's size, so
there is no width to convert; on the zoo ``mlp`` (digits, 5 epochs, Adam 10⁻³) the first
spec's 0.01 (docs/methods.md §6) drives L1W to chance accuracy (every weight near zero) and
costs L2W 13 % accuracy, and L1W at 10⁻³ costs 10 %. The defaults are the largest powers of
ten that keep the accuracy there while shrinking ``Σ|w|`` and ``Σw²`` by about a quarter
(``tests/plugins/test_defaults.py``).
"""

from __future__ import annotations

import fnmatch
import logging
from typing import Any, ClassVar

import attrs
import torch
from torch import nn

from infoshape.errors import ConfigError, TapError
from infoshape.hookspecs import hookimpl
from infoshape.objective import Penalty
from infoshape.options import non_negative, with_defaults
from infoshape.plugin import Plugin

__all__ = [
    "L1W",
    "L2W",
    "L1WConfig",
    "L2WConfig",
    "WeightDecayConfig",
    "l1_weights",
    "l2_weights",
    "select_weights",
]

log = logging.getLogger(__name__)


def select_weights(
    model: nn.Module, modules: tuple[str, ...] = (), biases: bool = False
) -> list[torch.Tensor]:
    """The trainable parameters a weight penalty sums over (see the module docstring).

    Raises:
        TapError: a glob in ``modules`` matches no module.
        ConfigError: no parameter is selected.
    """
    named = list(model.named_modules())
    for glob in modules:
        if not any(fnmatch.fnmatchcase(n, glob) for n, _ in named):
            raise TapError(
                f"weight decay: module glob {glob!r} matches no module",
                expected="names from model.named_modules()",
                got=repr(glob),
                fix=f"modules of the model: {', '.join(n for n, _ in named if n)[:300]}",
            )
    owners = [m for n, m in named if not modules or any(fnmatch.fnmatchcase(n, g) for g in modules)]
    chosen = {
        id(p): p
        for m in owners
        for p in m.parameters(recurse=False)
        if p.requires_grad and (p.ndim >= 2 or biases)
    }
    if not chosen:
        raise ConfigError(
            "weight decay: no parameter to penalize",
            expected="modules owning trainable weights (>= 2 dimensions, or biases=True)",
            got=f"modules={list(modules)}, biases={biases}",
            fix="name modules with weights (e.g. 'fc*'), or set biases=True",
        )
    return list(chosen.values())


class _L1(torch.autograd.Function):
    """``Σ_w |w|`` with the gradient ``sign(w)``: one pass per parameter each way."""

    @staticmethod
    def forward(ctx: Any, *params: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(*params)
        return torch.stack([p.abs().sum() for p in params]).sum()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        signs = torch._foreach_sign(ctx.saved_tensors)
        torch._foreach_mul_(signs, grad)
        return tuple(signs)


class _L2(torch.autograd.Function):
    """``Σ_w w²`` with the gradient ``2w``: one pass per parameter each way."""

    @staticmethod
    def forward(ctx: Any, *params: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(*params)
        return torch.stack([torch.dot(p.reshape(-1), p.reshape(-1)) for p in params]).sum()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch._foreach_mul(ctx.saved_tensors, 2 * grad))


def l1_weights(params: list[torch.Tensor]) -> torch.Tensor:
    """``Σ_w |w|`` over ``params`` (gradient ``sign(w)``, 0 at 0)."""
    return _L1.apply(*params)


def l2_weights(params: list[torch.Tensor]) -> torch.Tensor:
    """``Σ_w w²`` over ``params`` (the squared L2 norm, no ½; gradient ``2w``)."""
    return _L2.apply(*params)


@attrs.frozen(kw_only=True)
class WeightDecayConfig:
    """Options of ``l1w`` and ``l2w``.

    Attributes:
        coefficient: the loss weight λ (``l1w``: 10⁻⁴, ``l2w``: 10⁻³; module docstring).
        modules: module names or globs whose own parameters are penalized; empty: all.
        biases: also penalize 1-D parameters (biases, normalization scales and shifts).
    """

    coefficient: float = attrs.field(default=0.01, validator=non_negative())
    modules: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    biases: bool = False


class _WeightDecay(Plugin):
    """Add ``coefficient · function(selected weights)`` to the loss."""

    name: ClassVar[str]
    Config: ClassVar[type] = WeightDecayConfig
    weight_option: ClassVar[str] = "coefficient"
    function: ClassVar[Any]

    def __init__(self) -> None:
        super().__init__()
        self.params: list[torch.Tensor] | None = None

    @hookimpl
    def infoshape_penalty(self, session: Any) -> list[Penalty]:
        """The weight penalty of the session's model."""
        if self.params is None:
            self.params = select_weights(session.model, self.config.modules, self.config.biases)
            log.info(
                "%s: penalizing %d parameter tensors (%d weights) of %s%s",
                self.name,
                len(self.params),
                sum(p.numel() for p in self.params),
                ", ".join(self.config.modules) or "every module",
                "" if self.config.biases else " (matrices and kernels; no biases)",
            )
        value = type(self).function(self.params)
        return [Penalty(self.name, value, self.config.coefficient)]


L1WConfig = with_defaults(WeightDecayConfig, "L1WConfig", coefficient=1e-4)
L2WConfig = with_defaults(WeightDecayConfig, "L2WConfig", coefficient=1e-3)


class L1W(_WeightDecay):
    """``l1w``: ``coefficient · Σ_w |w|`` over the selected weights."""

    name = "l1w"
    Config = L1WConfig
    function = staticmethod(l1_weights)


class L2W(_WeightDecay):
    """``l2w``: ``coefficient · Σ_w w²`` over the selected weights."""

    name = "l2w"
    Config = L2WConfig
    function = staticmethod(l2_weights)
