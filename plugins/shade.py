"""The ``shade`` plugin: SHADE, SHAnnon DEcay (Blot, Robert, Thome, Cord, ICIP 2018).

SHADE penalizes the class-conditional entropy ``H(Y | C)`` of every unit's
pre-activation ``Y`` through a binary latent ``Z`` per unit (eq. 6) and the
variance bound of ``H(Y | Z)`` (eqs. 7–8), estimated on the batch (eqs. 10–11)
with two moving averages per unit (Algorithm 1). METHODS.md §2 fixes the
details:

- ``y`` is the **input** of each chosen activation module (default: every
  ``nn.ReLU``), captured with ``Tap(..., point="pre")``. A unit is a feature of a
  ``(N, u)`` tensor or a channel of a ``(N, C, ...)`` map; the spatial positions of a
  channel are extra samples (as batch norm does), so SHADE keeps two moving averages
  per channel.
- ``p(Z=1 | y) = 1 − exp(−ReLU(y))`` (§3.3, ``p_z="exp"``) or ``sigmoid(y)`` (the
  authors' other choice, ``p_z="sigmoid"``); ``p(Z=0 | y) = 1 − p(Z=1 | y)``.
- Algorithm 1, per unit, from ``μ⁰ = −1, μ¹ = 1, p⁰ = p¹ = 0.5`` and ``λ = 0.8``,
  for ``z`` in ``{0, 1}``:
  ``p^z ← λ p^z + (1−λ) mean_k p(z | y_k)``, then, with that new ``p^z``,
  ``μ^z ← λ μ^z + (1−λ) mean_k p(z | y_k) y_k / p^z``.
  The update runs without grad at ``infoshape_step_end`` on the batch of the latest
  ``Session.loss`` call, from the per-unit batch means that the penalty's forward pass
  computed (nothing is recomputed). In the division ``p^z`` is clamped at the dtype's
  smallest normal number: a unit that never fires has ``p¹ → 0`` geometrically, and
  ``0/0`` would otherwise follow.
- Penalty (eq. 11) ``Ω = Σ_layers Σ_units mean_k Σ_z p(z | y_k) (y_k − μ^z)²`` with the
  moving averages of the previous steps (eq. 11 has no gradient through ``μ``: "the
  expected values are not changed by the optimization"). **Batch mean**, where the
  paper sums over the ``K`` samples: a mean keeps ``β`` independent of the batch size
  (eq. 1 writes the loss as an expectation over samples, so our ``β`` is the paper's ``β``
  when its ``CE`` is a batch mean too). Loss ``CE + β Ω``.
- Default ``β = 10⁻³``. The paper reports no chosen value, only its validation grids
  ``{10⁻ⁱ, i = 1..7}`` (MNIST-M, App. B) and ``{1, 5}·10⁻ⁱ`` (CIFAR-10, App. A); METHODS.md's
  ``β = 0.1`` is the grid's top. Ω sums over units, and starts near one per unit (Algorithm 1's
  ``μ⁰ = −1``, ``μ¹ = 1`` against small pre-activations), so ``β Ω`` grows with the width:
  on the zoo ``mlp`` (64 + 32 units, Ω ≈ 90 at step 0) ``β = 0.1`` pulls every
  pre-activation to ``μ⁰ = −1``, all ReLUs die and accuracy falls to chance, and ``β = 10⁻²``
  loses 16 % accuracy (digits, 5 epochs). ``10⁻³``, the largest value of the paper's grid
  that keeps accuracy there, gives the paper's effect: the within-class variance of the
  regularized pre-activations falls (−13 %) at equal accuracy
  (``tests/plugins/test_defaults.py``). For wider models (a ResNet: thousands of channels)
  scale ``β`` down in proportion to the number of units.

The binary-activation experiment of §4.4 (Table 2) is the companion plugin
``shade_binary``: it replaces chosen ReLUs by ``ȳ⁺ 1(y ≥ ȳ⁺)``
(:class:`BinaryActivation`) for fine-tuning the layers above, and puts the ReLUs back
at session end.

Functional API (no session needed): :func:`p_active`, :func:`shade_penalty`,
:class:`ShadeAverages`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs
import torch
from torch import nn

from infoshape.capture import Tap
from infoshape.errors import CaptureError, ConfigError
from infoshape.hookspecs import hookimpl
from infoshape.math.linalg import full_precision
from infoshape.objective import Penalty
from infoshape.syntax import option_syntax

__all__ = [
    "P_Z",
    "BinaryActivation",
    "Shade",
    "ShadeAverages",
    "ShadeBinary",
    "ShadeBinaryConfig",
    "ShadeConfig",
    "p_active",
    "shade_penalty",
]

P_Z = ("exp", "sigmoid")
"""The choices of ``p(Z=1 | y)``: ``1 − exp(−ReLU(y))`` (the paper) or ``sigmoid(y)``."""

PZ = Literal["exp", "sigmoid"]


def p_active(y: torch.Tensor, p_z: PZ = "exp") -> torch.Tensor:
    """``p(Z=1 | y)`` elementwise (§3.3): ``1 − exp(−ReLU(y))`` or ``sigmoid(y)``.

    Raises:
        ConfigError: for an unknown ``p_z``.
    """
    _check_p_z(p_z)
    if p_z == "exp":
        return -torch.expm1(-y.clamp_min(0.0))
    return torch.sigmoid(y)


def _check_p_z(p_z: str) -> None:
    if p_z not in P_Z:
        raise ConfigError(
            "unknown p(Z=1|y) form",
            expected=" or ".join(map(repr, P_Z)),
            got=repr(p_z),
            fix='use p_z="exp" (the paper) or p_z="sigmoid"',
        )


def _unit_layout(y: torch.Tensor, channel_dim: int) -> tuple[int, list[int], list[int]]:
    """``(units, reduce dims, broadcast shape)`` of ``y`` with units along ``channel_dim``."""
    if y.ndim < 2:
        raise CaptureError(
            "SHADE needs a batch of activations",
            expected="a tensor (N, units) or (N, channels, ...)",
            got=f"a tensor of shape {tuple(y.shape)}",
            fix="tap a module whose input carries a batch dimension",
        )
    d = channel_dim % y.ndim
    if d == 0:
        raise ConfigError(
            "channel_dim names the batch dimension",
            expected="the units' dimension (1 for (N, u) and (N, C, H, W))",
            got=f"channel_dim={channel_dim} for a tensor of shape {tuple(y.shape)}",
            fix="use channel_dim=1 (or -1 for (N, T, features))",
        )
    shape = [1] * y.ndim
    shape[d] = y.shape[d]
    return y.shape[d], [k for k in range(y.ndim) if k != d], shape


class _Omega(torch.autograd.Function):
    """One layer's Ω (eq. 11, batch mean) from per-unit sums, with a closed-form gradient.

    With ``d = y − μ⁰``, ``c = μ⁰ − μ¹`` and ``p = p(Z=1|y)``, the element of eq. 11 is
    ``(1 − p) d² + p (d + c)² = d² + p (2cd + c²)``, so a unit's Ω needs only the sums
    ``Σd``, ``Σd²``, ``Σq`` and ``Σqd`` over its samples, where ``q = 1 − p = p(Z=0|y)``:
    ``n Ω_u = Σd² + 2c(Σd − Σqd) + c²(n − Σq)``. Centering on ``μ⁰`` keeps the sums free of
    cancellation when the activations sit at the averages (Ω → 0). The same sums give
    Algorithm 1's batch means (``mean p``, ``mean p·y``, ``mean y``), returned (not
    differentiable) for the update at step end: nothing is recomputed.

    Gradient: ``n dΩ/dy = 2d + c (2p + p′(y)(2d + c))`` with ``p′ = q 1(y > 0)`` for
    ``"exp"``, so ``c 1(y > 0)(2 + q(2d + c − 2))``, and ``p′ = pq`` for ``"sigmoid"``, so
    ``c p (2 + q(2d + c))``. The moving averages get no gradient (§3.3). About a third of
    the passes over the activations of autograd's graph of the same expression.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, y: torch.Tensor, mu: torch.Tensor, p_z: PZ, channel_dim: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        units, dims, shape = _unit_layout(y, channel_dim)
        if mu.shape != (2, units):
            raise CaptureError(
                "the moving averages do not fit the activations",
                expected=f"mu of shape (2, {units})",
                got=f"mu of shape {tuple(mu.shape)}",
                fix="keep the layer's width fixed during a session (or start a new one)",
            )
        _check_p_z(p_z)
        mu = mu.to(device=y.device, dtype=y.dtype)
        mu0, c = mu[0], mu[0] - mu[1]
        n = y.numel() // units
        d = y - mu0.view(shape)
        # q = p(Z=0|y): exp(−ReLU(y)), or 1 − sigmoid(y)
        q = torch.relu(y).neg_().exp_() if p_z == "exp" else torch.sigmoid(y).neg_().add_(1.0)
        product = torch.mul(q, d)  # one buffer for both products
        sum_p, sum_qd = n - q.sum(dims), product.sum(dims)
        sum_d, sum_dd = d.sum(dims), torch.mul(d, d, out=product).sum(dims)  # per unit
        sum_pd = sum_d - sum_qd
        omega = (sum_dd + c * (2.0 * sum_pd + c * sum_p)).sum() / n
        # Algorithm 1's batch means: p(Z=1), p(Z=1)·y and y
        means = torch.stack((sum_p, sum_pd + mu0 * sum_p, sum_d + n * mu0)) / n
        ctx.p_z, ctx.shape, ctx.n = p_z, shape, n
        ctx.save_for_backward(y, d, q, c)
        ctx.mark_non_differentiable(means)
        return omega, means

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, grad: torch.Tensor, _grad_means: torch.Tensor | None
    ) -> tuple[torch.Tensor, None, None, None]:
        y, d, q, c = ctx.saved_tensors
        scale = grad / ctx.n
        c = c.view(ctx.shape)
        if ctx.p_z == "exp":  # c 1(y > 0)(2 + q(2d + c − 2))
            g = torch.add(c - 2.0, d, alpha=2.0).mul_(q).add_(2.0)
            torch.ops.aten.threshold_backward(g, y, 0.0, grad_input=g)  # ReLU's backward kernel
        else:  # c p (2 + q(2d + c)) with p = 1 − q
            g = torch.add(c, d, alpha=2.0).mul_(q).add_(2.0)
            g.addcmul_(g, q, value=-1.0)
        g.mul_(c * scale).addcmul_(d, 2.0 * scale)
        return g, None, None, None


@full_precision
def _omega(
    y: torch.Tensor, mu: torch.Tensor, p_z: PZ, channel_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Ω, batch means)`` of one layer (:class:`_Omega`); ``mu`` is taken as a constant."""
    return _Omega.apply(y, mu.detach(), p_z, channel_dim)


def shade_penalty(
    y: torch.Tensor, mu: torch.Tensor, p_z: PZ = "exp", channel_dim: int = 1
) -> torch.Tensor:
    """SHADE's ``Ω`` of one layer (eq. 11, batch mean): ``Σ_u mean_k Σ_z p(z|y)(y − μ^z)²``.

    Args:
        y: pre-activations ``(N, u)`` or ``(N, C, ...)``; spatial positions of a channel
            count as samples.
        mu: ``(2, u)``: ``mu[0] = μ⁰``, ``mu[1] = μ¹`` (treated as constants: detached).
        p_z: ``"exp"`` or ``"sigmoid"`` (:func:`p_active`).
        channel_dim: the units' dimension of ``y``.

    Returns:
        a scalar tensor, differentiable in ``y`` (through ``y`` and ``p(z|y)``).
    """
    return _omega(y, mu, p_z, channel_dim)[0]


class ShadeAverages:
    """The moving averages of Algorithm 1 for one layer: ``p`` and ``mu``, each ``(2, u)``.

    Row ``z`` of ``p`` estimates ``p(Z=z)`` and row ``z`` of ``mu`` estimates ``E(Y | Z=z)``.

    Args:
        units: number of units (features or channels).
        decay: λ of Algorithm 1.
        device: where the averages live (the layer's device).
        dtype: their dtype: the layer's, float32 at least (half-precision activations
            under autocast keep float32 averages).
    """

    def __init__(
        self, units: int, decay: float = 0.8, device: Any = None, dtype: torch.dtype | None = None
    ) -> None:
        self.decay = float(decay)
        dtype = torch.float64 if dtype == torch.float64 else torch.float32
        self.p = torch.full((2, units), 0.5, device=device, dtype=dtype)
        self.mu = torch.tensor([[-1.0], [1.0]], device=device, dtype=dtype).repeat(1, units)

    @torch.no_grad()
    def update(
        self,
        y: torch.Tensor,
        p1: torch.Tensor | None = None,
        p_z: PZ = "exp",
        channel_dim: int = 1,
    ) -> None:
        """One step of Algorithm 1 on the batch ``y`` (``p1 = p(Z=1|y)`` if already known)."""
        units, dims, _ = _unit_layout(y, channel_dim)
        self._check_width(units, tuple(y.shape))
        y = y.detach().to(self.p.dtype)
        p1 = (p_active(y, p_z) if p1 is None else p1.detach()).to(self.p.dtype)
        self.update_means(torch.stack((p1.mean(dims), (p1 * y).mean(dims), y.mean(dims))))

    @torch.no_grad()
    def update_means(self, means: torch.Tensor) -> None:
        """One step of Algorithm 1 from a batch's means per unit, ``(3, u)``.

        Rows: ``mean_k p(Z=1|y_k)``, ``mean_k p(Z=1|y_k) y_k`` and ``mean_k y_k`` (the
        second row of ``p(Z=0|y)`` follows from them: ``1 − p`` and ``y − p·y``).
        """
        self._check_width(means.shape[-1], tuple(means.shape))
        m1, m1y, my = means.detach().to(device=self.p.device, dtype=self.p.dtype)
        batch_p = torch.stack((1.0 - m1, m1))
        batch_py = torch.stack((my - m1y, m1y))
        lam = self.decay
        self.p.mul_(lam).add_(batch_p, alpha=1.0 - lam)
        tiny = torch.finfo(self.p.dtype).tiny
        self.mu.mul_(lam).add_(batch_py / self.p.clamp_min(tiny), alpha=1.0 - lam)

    def _check_width(self, units: int, shape: tuple[int, ...]) -> None:
        if units != self.p.shape[1]:
            raise CaptureError(
                "the layer's width changed",
                expected=f"{self.p.shape[1]} units",
                got=f"{units} units in a tensor of shape {shape}",
                fix="keep the layer's width fixed during a session (or start a new one)",
            )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"p": ..., "mu": ...}`` (copies on CPU)."""
        return {"p": self.p.detach().cpu().clone(), "mu": self.mu.detach().cpu().clone()}

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], decay: float = 0.8, device: Any = None
    ) -> ShadeAverages:
        """Averages restored from :meth:`state_dict`, in their saved dtype, on ``device``."""
        p = torch.as_tensor(state["p"])
        averages = cls(p.shape[1], decay, device, p.dtype)
        averages.p.copy_(p)
        averages.mu.copy_(torch.as_tensor(state["mu"]))
        return averages


def _decay(_instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(
            f"{attribute.name} must be in [0, 1)\n  expected: 0 <= decay < 1\n  got: {value!r}\n"
            "  fix: use the paper's 0.8"
        )


@attrs.frozen(kw_only=True)
class ShadeConfig:
    """Options of the ``shade`` plugin (defaults: METHODS.md's table).

    Attributes:
        beta: weight β of Ω in ``CE + β Ω`` (Ω a batch mean; default 10⁻³, the module
            docstring says why).
        layers: globs over ``model.named_modules()`` of the activation modules whose
            **input** is regularized; empty: every ``nn.ReLU`` (a functional ``F.relu`` is
            no module: give its input's producer here, or use ``nn.ReLU``).
        p_z: ``"exp"``, ``p(Z=1|y) = 1 − exp(−ReLU(y))``, or ``"sigmoid"``.
        decay: λ of the moving averages (Algorithm 1).
        channel_dim: the units' dimension of the tapped tensors (1: features of
            ``(N, u)``, channels of ``(N, C, H, W)``; -1 for ``(N, T, features)``).
        per_layer: emit one penalty ``shade.<module>`` per layer (each weighted by β)
            instead of their sum ``shade``.
        call: for modules called more than once per forward pass, the one call whose input
            is regularized (0-based; torchvision's ``BasicBlock`` calls its ``relu`` twice,
            ``call=1`` is the block's output pre-activation); ``None``: each call.
    """

    beta: float = attrs.field(default=1e-3, validator=attrs.validators.ge(0))
    layers: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    p_z: PZ = attrs.field(default="exp", validator=attrs.validators.in_(P_Z))
    decay: float = attrs.field(default=0.8, validator=_decay)
    channel_dim: int = 1
    per_layer: bool = False
    call: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(0))
    )


class Shade:
    """Add ``β Ω`` (eq. 11) to the loss and keep Algorithm 1's moving averages per unit.

    Penalty ``shade`` (or ``shade.<module>`` with ``per_layer``). Epoch metrics, per
    regularized module: ``shade.<module>.mu`` and ``shade.<module>.p`` (the moving
    averages, dims ``shade_z`` × ``shade.<module>.unit``), and with a probe set
    ``shade.<module>.omega``, the layer's Ω on the probe set (eval mode) against the
    current averages. An in-place activation (``nn.ReLU(inplace=True)``) needs nothing:
    a pre-tap on an in-place module holds a copy of its true input
    (:mod:`infoshape.capture`).
    """

    weight_option = "beta"

    name = "shade"
    Config = ShadeConfig

    def __init__(self) -> None:
        self.config = ShadeConfig()
        self.taps: list[Tap] = []
        self.averages: dict[str, ShadeAverages] = {}
        self._modules: dict[str, str] = {}  # capture name -> module name
        self._pending: dict[str, torch.Tensor] = {}  # capture name -> batch means

    @hookimpl
    def infoshape_configure(self, config: ShadeConfig) -> None:
        """Keep the validated options."""
        self.config = config

    @hookimpl
    def infoshape_taps(self, session: Any) -> list[Tap]:
        """The input of every ``nn.ReLU``, or of the modules named by ``layers``."""
        layers = self.config.layers
        targets = layers or (nn.ReLU,)
        self.taps = [Tap(g, point="pre", call=self.config.call) for g in targets]
        return self.taps

    def _layers(self, session: Any) -> dict[str, str]:
        if not self._modules:
            for tap in self.taps:
                modules = tap.select(session.model)
                self._modules.update(zip(session.capture_names(tap), modules, strict=True))
        return self._modules

    def _averages(self, name: str, y: torch.Tensor) -> ShadeAverages:
        averages = self.averages.get(name)
        if averages is None:
            units = _unit_layout(y, self.config.channel_dim)[0]
            averages = self.averages[name] = ShadeAverages(
                units, self.config.decay, y.device, y.dtype
            )
        elif averages.p.device != y.device:  # restored from a state dict, or the model moved
            averages.p, averages.mu = averages.p.to(y.device), averages.mu.to(y.device)
        return averages

    @hookimpl
    def infoshape_penalty(
        self, session: Any, captures: Mapping[str, torch.Tensor]
    ) -> list[Penalty]:
        """β Ω summed over the layers (or one penalty per layer); keeps the batch's means."""
        c = self.config
        self._pending = {}
        terms = {}
        for name, module in self._layers(session).items():
            if (y := captures.get(name)) is None:
                continue
            terms[module], self._pending[name] = _omega(
                y, self._averages(name, y).mu, c.p_z, c.channel_dim
            )
        if not terms:
            return []
        if c.per_layer:
            return [Penalty(f"shade.{m}", value, c.beta) for m, value in terms.items()]
        return [Penalty("shade", torch.stack(list(terms.values())).sum(), c.beta)]

    @hookimpl
    def infoshape_step_end(self) -> None:
        """Algorithm 1 on the batch of the latest loss, without grad."""
        for name, means in self._pending.items():
            self.averages[name].update_means(means)
        self._pending = {}

    @hookimpl
    def infoshape_metrics(
        self, session: Any, captures: Mapping[str, torch.Tensor], stage: str
    ) -> dict[str, Any]:
        """Moving averages per layer, and Ω on the probe set (epoch stage only)."""
        if stage != "epoch" or not self.averages:
            return {}
        import xarray as xr

        c, out = self.config, {}
        for name, module in self._layers(session).items():
            if (averages := self.averages.get(name)) is None:
                continue
            dims = ("shade_z", f"shade.{module}.unit")
            out[f"shade.{module}.mu"] = xr.DataArray(averages.mu.cpu().numpy(), dims=dims)
            out[f"shade.{module}.p"] = xr.DataArray(averages.p.cpu().numpy(), dims=dims)
            if (y := captures.get(name)) is not None:
                with torch.no_grad():
                    omega = _omega(y, averages.mu, c.p_z, c.channel_dim)[0]
                out[f"shade.{module}.omega"] = float(omega)
        return out

    @hookimpl
    def infoshape_state_dict(self) -> dict[str, Any] | None:
        """The moving averages of every layer seen so far, by capture name."""
        if not self.averages:
            return None
        return {"averages": {name: a.state_dict() for name, a in self.averages.items()}}

    @hookimpl
    def infoshape_load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the moving averages (on the device of the first captures they meet)."""
        c = self.config
        self.averages = {
            name: ShadeAverages.from_state(s, c.decay) for name, s in state["averages"].items()
        }
        self._pending = {}

    @hookimpl
    def infoshape_session_end(self) -> None:
        """Drop the pending batch means."""
        self._pending = {}


class BinaryActivation(nn.Module):
    """``ȳ⁺ 1(y ≥ ȳ⁺)`` per unit: the binary activation of SHADE §4.4 (Table 2).

    ``ȳ⁺`` is the mean of the positive pre-activations of the unit (a channel of a map,
    over samples and positions). It is estimated as a cumulative average over every
    training-mode forward pass (buffers ``positive_sum`` and ``positive_count``, created
    at the first pass); eval mode uses the estimate as it stands. With
    ``gradient="none"`` (the paper) nothing flows back through the step, so the layers
    below are fixed, their pre-activations are stationary, and the cumulative average is
    the mean over the training data seen, as in the paper. A unit never positive has
    ``ȳ⁺ = 0`` and outputs 0.

    Args:
        channel_dim: the units' dimension of the input (1 for ``(N, u)`` and ``(N, C, H, W)``).
        gradient: ``"none"`` (the step has zero gradient) or ``"straight_through"`` (the
            backward pass uses the replaced ReLU's gradient ``1(y > 0)``, so the layers
            below keep training).
    """

    positive_sum: torch.Tensor | None
    positive_count: torch.Tensor | None

    def __init__(
        self, channel_dim: int = 1, gradient: Literal["none", "straight_through"] = "none"
    ) -> None:
        super().__init__()
        self.channel_dim = channel_dim
        self.gradient = gradient
        self.register_buffer("positive_sum", None)
        self.register_buffer("positive_count", None)

    @property
    def threshold(self) -> torch.Tensor | None:
        """ȳ⁺ per unit (float64), or ``None`` before the first training pass."""
        if self.positive_sum is None or self.positive_count is None:
            return None
        return self.positive_sum / self.positive_count.clamp_min(1.0)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """``ȳ⁺ 1(y ≥ ȳ⁺)``, updating ȳ⁺ first in training mode."""
        units, dims, shape = _unit_layout(y, self.channel_dim)
        if self.training:
            with torch.no_grad():
                positive = y.detach() > 0
                total = torch.where(positive, y.detach(), 0).sum(dims, dtype=torch.float64)
                count = positive.sum(dims, dtype=torch.float64)
                if self.positive_sum is None or self.positive_count is None:
                    self.positive_sum, self.positive_count = total, count
                else:
                    self.positive_sum += total
                    self.positive_count += count
        threshold = self.threshold
        if threshold is None:
            raise CaptureError(
                "the binary activation has no ȳ⁺ yet",
                expected="at least one training-mode forward pass before eval",
                got="an eval-mode pass first",
                fix="train (or run one batch in model.train() mode) before evaluating",
            )
        if threshold.shape != (units,):
            raise CaptureError(
                "the binary activation's input width changed",
                expected=f"{threshold.shape[0]} units",
                got=f"{units} units in a tensor of shape {tuple(y.shape)}",
                fix="binarize a module whose input keeps its width",
            )
        t = threshold.to(y.dtype).view(shape)
        out = t * (y >= t).to(y.dtype)
        if self.gradient == "straight_through":
            relu = torch.relu(y)
            out = relu + (out - relu).detach()
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        for name in ("positive_sum", "positive_count"):  # materialize the lazy buffers
            if prefix + name in state_dict and getattr(self, name) is None:
                setattr(self, name, torch.zeros_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        """The options, for ``repr(model)``."""
        return f"channel_dim={self.channel_dim}, gradient={self.gradient!r}"


@attrs.frozen(kw_only=True)
class ShadeBinaryConfig:
    """Options of the ``shade_binary`` plugin.

    Attributes:
        layers: globs over ``model.named_modules()`` of the ``nn.ReLU`` modules to replace
            by :class:`BinaryActivation` (required; the paper binarizes one layer at a time
            and fine-tunes the layers above it).
        gradient: ``"none"`` (the paper: only the layers above learn) or
            ``"straight_through"`` (:class:`BinaryActivation`).
        channel_dim: the units' dimension of the replaced modules' inputs.
        restore: put the original ReLUs back at session end (``False`` keeps the binary
            model for evaluation after the session).
    """

    layers: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    gradient: Literal["none", "straight_through"] = attrs.field(
        default="none", validator=attrs.validators.in_(("none", "straight_through"))
    )
    channel_dim: int = 1
    restore: bool = True


class ShadeBinary:
    """Replace chosen ReLUs by ``ȳ⁺ 1(y ≥ ȳ⁺)`` for fine-tuning (SHADE §4.4, Table 2).

    Through ``infoshape_wrap_model`` the modules named by ``layers`` are swapped in place
    for :class:`BinaryActivation`; at session end the original modules come back (unless
    ``restore=False``). Build the optimizer on ``session.model`` after the session starts;
    with ``gradient="none"`` the layers below a binarized one get no gradient through it.
    Epoch metrics: ``shade_binary.<module>.threshold`` (ȳ⁺ per unit, dim
    ``shade_binary.<module>.unit``) and ``shade_binary.<module>.active``, the fraction of
    probe activations at ``ȳ⁺`` (with a probe set).
    """

    name = "shade_binary"
    Config = ShadeBinaryConfig

    def __init__(self) -> None:
        self.config = ShadeBinaryConfig()
        self.replaced: dict[str, tuple[nn.Module, str, nn.Module, BinaryActivation]] = {}
        self.taps: list[Tap] = []

    @hookimpl
    def infoshape_configure(self, config: ShadeBinaryConfig) -> None:
        """Keep the validated options; ``layers`` must name something."""
        if not config.layers:
            raise ConfigError(
                "shade_binary needs the ReLUs to binarize",
                expected="layers=[...] naming nn.ReLU modules",
                got="layers=[]",
                fix="e.g. " + option_syntax("shade_binary", "layers", ["relu2"]),
            )
        self.config = config

    @hookimpl
    def infoshape_wrap_model(self, model: nn.Module) -> None:
        """Swap each chosen ReLU for a :class:`BinaryActivation` (in place)."""
        c = self.config
        modules = dict(model.named_modules())
        for name in dict.fromkeys(n for g in c.layers for n in Tap(g).select(model)):
            original = modules[name]
            if not isinstance(original, nn.ReLU):
                raise ConfigError(
                    f"shade_binary can only binarize ReLUs; {name!r} is a "
                    f"{type(original).__name__}",
                    expected="module names of nn.ReLU modules",
                    got=f"{name}: {type(original).__name__}",
                    fix="name the ReLU that follows the layer (e.g. 'relu2', not 'conv2')",
                )
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            binary = BinaryActivation(c.channel_dim, c.gradient)
            setattr(parent, child, binary)
            self.replaced[name] = (parent, child, original, binary)
        self.taps = [Tap(name, point="pre") for name in self.replaced]

    @hookimpl
    def infoshape_taps(self) -> list[Tap]:
        """The inputs of the binarized modules (for the probe's ``active`` fraction)."""
        return self.taps

    @hookimpl
    def infoshape_metrics(
        self, session: Any, captures: Mapping[str, torch.Tensor], stage: str
    ) -> dict[str, Any]:
        """ȳ⁺ per unit and the probe's fraction of active units (epoch stage only)."""
        if stage != "epoch":
            return {}
        import xarray as xr

        out: dict[str, Any] = {}
        for tap, (name, (*_, binary)) in zip(self.taps, self.replaced.items(), strict=True):
            threshold = binary.threshold
            if threshold is None:
                continue
            dims = (f"shade_binary.{name}.unit",)
            out[f"shade_binary.{name}.threshold"] = xr.DataArray(threshold.cpu().numpy(), dims=dims)
            y = captures.get(session.capture_names(tap)[0])
            if y is not None:
                shape = _unit_layout(y, binary.channel_dim)[2]
                active = y >= threshold.to(y.device, y.dtype).view(shape)
                out[f"shade_binary.{name}.active"] = float(active.float().mean())
        return out

    @hookimpl
    def infoshape_session_end(self) -> None:
        """Put the original ReLUs back (unless ``restore=False``)."""
        if self.config.restore:
            for parent, child, original, _ in self.replaced.values():
                setattr(parent, child, original)
        self.replaced = {}
