"""SHADE's binary-activation experiment (§4.4, Table 2): the ``shade_binary`` plugin.

:class:`BinaryActivation` replaces a ReLU by ``ȳ⁺ 1(y ≥ ȳ⁺)``; :class:`ShadeBinary`
swaps the chosen ReLUs for it during a session (for fine-tuning the layers above) and
puts them back at session end.
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
from infoshape.options import one_of
from infoshape.plugin import Plugin
from infoshape.plugins.shade.functional import _unit_layout
from infoshape.syntax import option_syntax

__all__ = ["BinaryActivation", "ShadeBinary", "ShadeBinaryConfig"]


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
        default="none", validator=one_of("none", "straight_through")
    )
    channel_dim: int = 1
    restore: bool = True


class ShadeBinary(Plugin):
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
        super().__init__()
        self.replaced: dict[str, tuple[nn.Module, str, nn.Module, BinaryActivation]] = {}
        self.taps: list[Tap] = []

    @hookimpl
    def infoshape_configure(self, session: Any, config: ShadeBinaryConfig) -> None:
        """Keep the validated options; ``layers`` must name something."""
        if not config.layers:
            raise ConfigError(
                "shade_binary needs the ReLUs to binarize",
                expected="layers=[...] naming nn.ReLU modules",
                got="layers=[]",
                fix="e.g. " + option_syntax("shade_binary", "layers", ["relu2"]),
            )
        super().infoshape_configure(config=config, session=session)

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
