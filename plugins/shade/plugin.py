"""The ``shade`` plugin: SHADE, SHAnnon DEcay (Blot, Robert, Thome, Cord, ICIP 2018).

SHADE penalizes the class-conditional entropy ``H(Y | C)`` of every unit's
pre-activation ``Y`` through a binary latent ``Z`` per unit (eq. 6) and the
variance bound of ``H(Y | Z)`` (eqs. 7–8), estimated on the batch (eqs. 10–11)
with two moving averages per unit (Algorithm 1). docs/methods.md §2 fixes the
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
  ``{10⁻ⁱ, i = 1..7}`` (MNIST-M, App. B) and ``{1, 5}·10⁻ⁱ`` (CIFAR-10, App. A); the first
  spec's ``β = 0.1`` is the grid's top (docs/methods.md §2). Ω sums over units, and starts
  near one per unit (Algorithm 1's ``μ⁰ = −1``, ``μ¹ = 1`` against small pre-activations),
  so ``β Ω`` grows with the width: on the zoo ``mlp`` (64 + 32 units, Ω ≈ 90 at step 0)
  ``β = 0.1`` pulls every pre-activation to ``μ⁰ = −1``, all ReLUs die and accuracy falls to
  chance, and ``β = 10⁻²`` loses 16 % accuracy (digits, 5 epochs). ``10⁻³``, the largest value of
  the paper's grid that keeps accuracy there, gives the paper's effect: the within-class variance
  of the regularized pre-activations falls (−13 %) at equal accuracy
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

import logging
from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import nn

from infoshape.capture import Tap
from infoshape.hookspecs import hookimpl
from infoshape.objective import Penalty
from infoshape.options import at_least, in_range, non_negative, one_of
from infoshape.plugin import Plugin
from infoshape.plugins.shade.averages import ShadeAverages
from infoshape.plugins.shade.functional import P_Z, PZ, _omega, _unit_layout

__all__ = ["Shade", "ShadeConfig"]

log = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class ShadeConfig:
    """Options of the ``shade`` plugin (defaults: docs/methods.md's option tables).

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

    beta: float = attrs.field(default=1e-3, validator=non_negative())
    layers: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    p_z: PZ = attrs.field(default="exp", validator=one_of(*P_Z))
    decay: float = attrs.field(default=0.8, validator=in_range(0.0, 1.0, example=0.8))
    channel_dim: int = 1
    per_layer: bool = False
    call: int | None = attrs.field(default=None, validator=at_least(0, optional=True))


class Shade(Plugin):
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
        super().__init__()
        self.taps: list[Tap] = []
        self.averages: dict[str, ShadeAverages] = {}
        self._modules: dict[str, str] = {}  # capture name -> module name
        self._pending: dict[str, torch.Tensor] = {}  # capture name -> batch means

    @hookimpl
    def infoshape_taps(self, session: Any) -> list[Tap]:
        """The input of every ``nn.ReLU``, or of the modules named by ``layers``."""
        layers = self.config.layers
        targets = layers or (nn.ReLU,)
        self.taps = [Tap(g, point="pre", call=self.config.call) for g in targets]
        if not layers:
            relus = [n for n, m in session.model.named_modules() if isinstance(m, nn.ReLU)]
            log.info(
                "shade: no layers given; regularizing the input of every nn.ReLU: %s",
                ", ".join(relus) or "none (the session will refuse the tap)",
            )
        return self.taps

    def _layers(self, session: Any) -> dict[str, str]:
        if not self._modules:
            for tap in self.taps:
                names = session.capture_names(tap)  # "<name>#i" per call of a module
                bases = dict.fromkeys(n.split("#")[0] for n in names)
                module_of = dict(zip(bases, tap.select(session.model), strict=True))
                self._modules.update({n: module_of[n.split("#")[0]] for n in names})
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
        terms: dict[str, torch.Tensor] = {}
        for name, module in self._layers(session).items():
            if (y := captures.get(name)) is None:
                continue
            omega, self._pending[name] = _omega(y, self._averages(name, y).mu, c.p_z, c.channel_dim)
            terms[module] = terms[module] + omega if module in terms else omega  # each call
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

        c, out = self.config, dict[str, Any]()
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
