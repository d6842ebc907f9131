"""The ``information_dropout`` plugin: learned multiplicative log-normal noise (Achille & Soatto).

Information Dropout ("Information Dropout: Learning Optimal Representations through
Noise", §4; docs/methods.md §3) multiplies the output ``f(x)`` of chosen layers by noise whose
scale the network picks per sample and per unit:

- ``z = ε ⊙ f(x)``, ``ε ~ logN(0, α(x)²)``, i.e. ``ε = exp(α·n)``, ``n ~ N(0, 1)`` (§4;
  as in the public code, so ``E[ε] = exp(α²/2)``, not 1); at eval time ``ε = 1``, so the
  model is deterministic;
- ``α(x) = α_min + α_max·sigmoid(g(x))``, with ``g`` a learned layer giving a tensor of
  ``f(x)``'s shape; so ``α_min ≤ α ≤ α_min + α_max``;
- the KL divergence per unit, for ReLU activations (log-uniform prior, Prop. 1, eq. 3,
  shifted, as in the public code, to be 0 at the largest α): ``KL = −log(α/(α_max + α_min))``;
  for Softplus activations (log-normal prior with learned ``μ₁``, ``σ₁``, Prop. 2, eq. 4):
  ``KL = (α² + (μ − μ₁)²)/(2σ₁²) + log(σ₁/α) − ½``, ``μ = log max(f(x), 1e-4)``;
- the loss (eq. 2 and 5, KL divided by the training-set size as in §6):
  ``CE + β·(Σ_units KL, averaged over the batch)/N_train``, with ``N_train`` the session's
  ``n_train``.

How the layers are inserted: for each chosen module ``<m>`` the plugin adds a child
``<m>.information_dropout`` (holding ``g``, the prior's ``μ₁`` and ``log σ₁``, and a
``kl`` point whose output is the per-unit KL) and a forward hook that replaces ``<m>``'s
output ``f(x)`` by ``z``. The original parameter names are kept, the new parameters are part
of ``session.model`` — **create the optimizer from ``session.model.parameters()`` after
the session starts** — and closing the session removes the hook and the child, leaving the
model as it was (its trained weights kept; without noise, as at eval time).

``g`` is, as in the public code, a layer parallel to ``<m>`` on the same input when ``<m>``
is a convolution (same kernel, stride, padding) or a linear layer; for any other module
(pooling, an activation) it is a 3×3 "same" convolution (or a square linear layer) on
``f(x)``, as wide as the last convolution or linear layer up to ``<m>``.

At each epoch end with a probe set the plugin emits, per wrapped module, the KL map
``information_dropout.kl_map.<m>`` (an ``xarray.DataArray`` with dims
``(sample, <m>_channel, <m>_y, <m>_x)`` for conv maps, ``(sample, <m>_unit)`` for linear
ones, prefixed like probe taps so maps of several layers share one Dataset; the store keeps
it in ``metrics/`` over ``epoch``) and ``information_dropout.kl.<m>``, the probe mean of
``Σ_units KL``. The per-unit KL of the latest batch is the capture
``information_dropout.kl.<m>`` (``session.captures``).
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs
import torch
from torch import nn

from infoshape.capture import Tap
from infoshape.errors import CaptureError, ConfigError
from infoshape.hookspecs import hookimpl
from infoshape.math.linalg import full_precision
from infoshape.objective import Penalty
from infoshape.options import non_negative, one_of, positive
from infoshape.plugin import Plugin
from infoshape.store.layout import tap_dims
from infoshape.syntax import by_syntax, option_syntax

__all__ = [
    "MU_FLOOR",
    "InformationDropout",
    "InformationDropoutConfig",
    "InformationDropoutLayer",
    "kl_log_normal",
    "kl_log_uniform",
    "log_normal_noise",
]

Prior = Literal["log_uniform", "log_normal"]
MU_FLOOR = 1e-4
"""Floor of ``f(x)`` before the log in ``μ = log max(f(x), 1e-4)`` (log-normal prior)."""
CHILD = "information_dropout"
_POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_ACTIVATIONS = (nn.ReLU, nn.Softplus)
log = logging.getLogger(__name__)


@full_precision
def kl_log_uniform(alpha: torch.Tensor, alpha_min: float, alpha_max: float) -> torch.Tensor:
    """Per-unit KL against the log-uniform prior (ReLU; Prop. 1, eq. 3): ``−log(α/(α_max+α_min))``.

    The constant of eq. 3 is fixed so that the KL is 0 at the largest α. No reduction.
    """
    return -torch.log(alpha / (alpha_max + alpha_min))


@full_precision
def kl_log_normal(
    alpha: torch.Tensor, mu: torch.Tensor, prior_mu: Any, prior_sigma: Any
) -> torch.Tensor:
    """Per-unit KL against the log-normal prior ``logN(μ₁, σ₁²)`` (Softplus; Prop. 2, eq. 4).

    ``KL(N(μ, α²) ‖ N(μ₁, σ₁²)) = (α² + (μ − μ₁)²)/(2σ₁²) + log(σ₁/α) − ½``, with ``μ`` the
    log of the activation. No reduction.
    """
    prior_sigma = torch.as_tensor(prior_sigma, dtype=alpha.dtype, device=alpha.device)
    return (
        (alpha**2 + (mu - prior_mu) ** 2) / (2 * prior_sigma**2)
        + torch.log(prior_sigma / alpha)
        - 0.5
    )


def log_normal_noise(alpha: torch.Tensor) -> torch.Tensor:
    """``ε = exp(α·n)``, ``n ~ N(0, 1)`` from the global torch RNG: ``log ε ~ N(0, α²)``."""
    return torch.exp(alpha * torch.randn_like(alpha))


@attrs.frozen(kw_only=True)
class InformationDropoutConfig:
    """Options of the ``information_dropout`` plugin (docs/methods.md §3).

    Attributes:
        layers: module names or globs whose outputs get the noise; ``()``: every convolution
            with a stride above 1 and every max/average pooling layer (the downsampling
            stages of a CNN), or, in a model without any (an MLP: the paper's MNIST
            networks), every ``nn.ReLU`` and ``nn.Softplus`` module (the hidden layers).
            Containers (``nn.Sequential`` ...) cannot be wrapped: name their last layer.
        beta: β, the weight of ``Σ KL / N_train``; 3 is the paper's CIFAR-10 value, 0.5 its
            Cluttered-MNIST value.
        alpha_min: α_min, the smallest noise scale (numerical floor).
        alpha_max: α_max, so that α ≤ α_min + α_max; 0.7 is the public code's default, the
            paper's text caps α < 0.5: ``alpha_max=0.499`` (α ≤ 0.5 once the
            float32 sigmoid saturates).
        prior: ``"log_uniform"`` for ReLU activations, ``"log_normal"`` for Softplus ones
            (then the wrapped output must be the positive Softplus activation).
        kl_map: emit the per-location KL map of the probe set at each epoch end.
        init_seed: seed of ``g``'s initialization (the global RNG is left untouched);
            ``None``: the session's ``seed``, or 0.
    """

    layers: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    beta: float = attrs.field(default=3.0, validator=non_negative())
    alpha_min: float = attrs.field(default=0.001, validator=positive())
    alpha_max: float = attrs.field(default=0.7, validator=positive())
    prior: Prior = attrs.field(default="log_uniform", validator=one_of("log_uniform", "log_normal"))
    kl_map: bool = True
    init_seed: int | None = None


class InformationDropoutLayer(nn.Module):
    """The noise of one wrapped module: ``g``, the prior, and the ``kl`` output point.

    Args:
        alpha_layer: ``g``; it reads the wrapped module's input (``alpha_from="input"``) or
            output (``"output"``) and returns a tensor of the output's shape.
        alpha_from: ``"input"`` or ``"output"``.
        alpha_min: α_min.
        alpha_max: α_max.
        prior: ``"log_uniform"`` or ``"log_normal"`` (then ``prior_mu`` μ₁, init 0, and
            ``prior_log_sigma`` log σ₁, init 0 so σ₁ = 1, are learned).
    """

    def __init__(
        self,
        alpha_layer: nn.Module,
        alpha_from: Literal["input", "output"],
        alpha_min: float,
        alpha_max: float,
        prior: Prior,
    ) -> None:
        super().__init__()
        self.alpha_layer = alpha_layer
        self.alpha_from = alpha_from
        self.alpha_min, self.alpha_max, self.prior = alpha_min, alpha_max, prior
        self.kl = nn.Identity()  # its output is the per-unit KL: the plugin taps it
        if prior == "log_normal":
            self.prior_mu = nn.Parameter(torch.zeros(()))
            self.prior_log_sigma = nn.Parameter(torch.zeros(()))

    def alpha(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """``α = α_min + α_max·sigmoid(g(·))`` for input ``x`` and output ``f`` (§4)."""
        g = self.alpha_layer(x if self.alpha_from == "input" else f)
        return self.alpha_min + self.alpha_max * torch.sigmoid(g)

    def forward(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """``z = ε ⊙ f`` in training mode, ``f`` in eval mode; the KL goes through ``kl``."""
        alpha = self.alpha(x, f)
        if self.prior == "log_uniform":
            kl = kl_log_uniform(alpha, self.alpha_min, self.alpha_max)
        else:
            mu = torch.log(f.clamp_min(MU_FLOOR))
            kl = kl_log_normal(alpha, mu, self.prior_mu, self.prior_log_sigma.exp())
        self.kl(kl)
        return f * log_normal_noise(alpha) if self.training else f


def _alpha_layer(
    model: nn.Module, name: str, module: nn.Module
) -> tuple[nn.Module, Literal["input", "output"]]:
    """``g`` for ``module`` (named ``name`` in ``model``) and whether it reads input or output."""
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        m = module
        same_kind: Callable[..., nn.Module] = type(m)  # Conv1d/2d/3d: one signature
        layer = same_kind(
            m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
            m.groups, bias=True, padding_mode=m.padding_mode,
        )  # fmt: skip
        return layer, "input"
    if isinstance(module, nn.Linear):
        return nn.Linear(module.in_features, module.out_features), "input"
    source, seen = None, False  # the last conv/linear layer up to the end of `module`'s subtree
    for other, sub in model.named_modules():
        inside = other == name or other.startswith(name + ".")
        if seen and not inside:
            break
        seen = seen or inside
        if isinstance(sub, (nn.modules.conv._ConvNd, nn.Linear)):
            source = sub
    if isinstance(source, nn.Linear):
        return nn.Linear(source.out_features, source.out_features), "output"
    if isinstance(source, nn.modules.conv._ConvNd):
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[len(source.kernel_size) - 1]
        c = source.out_channels
        return conv(c, c, 3, padding=1), "output"
    raise ConfigError(
        f"information_dropout: cannot size g for {name!r} ({type(module).__name__})",
        expected="a convolution or linear layer at or before the wrapped module",
        got=f"none up to {name!r}",
        fix="wrap a Conv/Linear layer, or a layer that follows one",
    )


class InformationDropout(Plugin):
    """Insert Information Dropout after chosen layers and add ``β·Σ KL / N_train`` to the loss."""

    name = "information_dropout"
    weight_option = "beta"
    Config = InformationDropoutConfig

    def __init__(self) -> None:
        super().__init__()
        self.layers: dict[str, InformationDropoutLayer] = {}
        self.taps: dict[str, Tap] = {}
        self._restore: list[tuple[nn.Module, Any]] = []

    @hookimpl
    def infoshape_configure(self, session: Any, config: InformationDropoutConfig) -> None:
        """Keep the options; refuse a session without ``n_train``."""
        n_train = session.n_train
        if not isinstance(n_train, numbers.Integral) or isinstance(n_train, bool) or n_train < 1:
            raise ConfigError(
                "information_dropout divides the KL by the training-set size, but the session "
                "has no n_train",
                expected="Session(..., n_train=<number of training samples>) with n_train >= 1",
                got=f"n_train={n_train!r}",
                fix=by_syntax(
                    "pass n_train=len(train_set) to infoshape.Session",
                    "infoshape train sets it; report this as a bug",
                ),
            )
        super().infoshape_configure(config=config, session=session)

    def _selected(self, model: nn.Module) -> list[str]:
        if self.config.layers:
            names = [n for glob in self.config.layers for n in Tap(glob).select(model)]
            names = list(dict.fromkeys(names))
        else:
            names = [
                n
                for n, m in model.named_modules()
                if isinstance(m, _POOLS)
                or (
                    isinstance(m, nn.modules.conv._ConvNd)
                    and not m.transposed
                    and max(m.stride) > 1
                )
            ]
            if names:
                log.info(
                    "information_dropout: no layers given; wrapping the downsampling layers "
                    "(strided convolutions, pooling): %s",
                    ", ".join(names),
                )
        if not names and not self.config.layers:  # no downsampling: the hidden activations
            names = [n for n, m in model.named_modules() if isinstance(m, _ACTIVATIONS)]
            if names:
                log.info(
                    "information_dropout: no layers given and no downsampling layer; wrapping "
                    "every ReLU/Softplus module (the hidden layers): %s",
                    ", ".join(names),
                )
        elif self.config.layers:
            log.debug("information_dropout: layers %s match %s", self.config.layers, names)
        if not names:
            weighted = (nn.Linear, nn.modules.conv._ConvNd)
            leaves = [n for n, m in model.named_modules() if isinstance(m, weighted)]
            raise ConfigError(
                f"information_dropout found no layer to wrap in {type(model).__name__}",
                expected="a convolution with stride > 1, a pooling layer, or else a ReLU or "
                "Softplus module (the default)",
                got="none",
                fix="name the layers: " + option_syntax(self.name, "layers", leaves[:1] or ["fc1"]),
            )
        modules = dict(model.named_modules())
        bad = [n for n in names if not n or isinstance(modules[n], _CONTAINERS)]
        if bad:
            raise ConfigError(
                f"information_dropout cannot wrap {bad[0]!r} ({type(modules[bad[0]]).__name__})",
                expected="a layer (Conv, Linear, pooling, activation), not a container",
                got=repr(bad[0] or "the whole model"),
                fix=f"name the container's last layer, e.g. {bad[0] or 'features'}.<last>",
            )
        return names

    @hookimpl
    def infoshape_wrap_model(self, session: Any, model: nn.Module) -> nn.Module:
        """Add ``<m>.information_dropout`` and the noise hook to each chosen module."""
        c = self.config
        modules = dict(model.named_modules())
        seed = c.init_seed if c.init_seed is not None else (session.seed or 0)
        reference = next(model.parameters(), torch.zeros(()))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for name in self._selected(model):
                module = modules[name]
                if hasattr(module, CHILD):
                    raise ConfigError(
                        f"{name!r} already has an attribute {CHILD!r}",
                        expected="each module wrapped by one information_dropout session",
                        got=f"{name}.{CHILD} exists",
                        fix="close the other session first (session.close())",
                    )
                g, source = _alpha_layer(model, name, module)
                layer = InformationDropoutLayer(g, source, c.alpha_min, c.alpha_max, c.prior)
                layer.to(device=reference.device, dtype=reference.dtype)
                module.add_module(CHILD, layer)
                handle = module.register_forward_hook(_noise_hook)
                self._restore.append((module, handle))
                self.layers[name] = layer
                self.taps[name] = Tap(f"{name}.{CHILD}.kl", name=f"{self.name}.kl.{name}")
        return model

    @hookimpl
    def infoshape_taps(self) -> list[Tap]:
        """The per-unit KL of each wrapped module."""
        return list(self.taps.values())

    def _kl(self, captures: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
        capture = self.taps[name].name
        if capture not in captures:
            raise CaptureError(
                f"information_dropout: no KL was captured for {name!r} in this forward pass",
                expected=f"the model's forward pass to run {name!r}",
                got=f"captures {sorted(captures)}",
                fix="call session.model(x) before session.loss(...)",
            )
        return captures[capture]

    @hookimpl
    def infoshape_penalty(self, session: Any, captures: Mapping[str, torch.Tensor]) -> list:
        """``β · Σ_layers (Σ_units KL averaged over the batch) / N_train`` (eq. 2, §6)."""
        total = sum(self._kl(captures, n).flatten(1).sum(1).mean() for n in self.layers)
        return [Penalty(self.name, total / int(session.n_train), weight=float(self.config.beta))]

    @hookimpl
    def infoshape_metrics(self, captures: Mapping[str, torch.Tensor], stage: str) -> dict | None:
        """At epoch end on a probe set: each layer's KL map and mean total KL."""
        if stage != "epoch" or not captures:
            return None
        import xarray

        metrics: dict[str, Any] = {}
        for name in self.layers:
            kl = self._kl(captures, name).detach().float().cpu()
            metrics[f"{self.name}.kl.{name}"] = float(kl.flatten(1).sum(1).mean())
            if self.config.kl_map:
                dims = ("sample", *tap_dims(name, kl.shape[1:]))
                metrics[f"{self.name}.kl_map.{name}"] = xarray.DataArray(kl.numpy(), dims=dims)
        return metrics

    @hookimpl
    def infoshape_session_end(self) -> None:
        """Remove the hooks and the added children: the model is as before the session."""
        while self._restore:
            module, handle = self._restore.pop()
            handle.remove()
            if hasattr(module, CHILD):
                delattr(module, CHILD)


def _noise_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> torch.Tensor:
    """Forward hook of a wrapped module: its output ``f`` becomes ``z = ε ⊙ f``."""
    if not isinstance(output, torch.Tensor) or not args:
        raise CaptureError(
            f"information_dropout needs a tensor in and out of {type(module).__name__}",
            expected="module(x: Tensor) -> Tensor",
            got=f"output {type(output).__name__}",
            fix="wrap a layer returning a single tensor",
        )
    return getattr(module, CHILD)(args[0], output)
