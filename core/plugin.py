"""The base class of plugins, :class:`Plugin`, and of estimator plugins, :class:`EstimatorPlugin`.

A plugin may be any object with ``infoshape_*`` hook implementations (a module, an
instance); subclassing :class:`Plugin` saves the parts every plugin repeats::

    class Shade(infoshape.Plugin):
        name = "shade"
        weight_option = "beta"
        Config = ShadeConfig          # attrs frozen class; its instance is ``self.config``

        def __init__(self) -> None:
            super().__init__()
            self.add_state("counts", torch.zeros(3))   # saved, restored, moved with the model

        @infoshape.hookimpl
        def infoshape_penalty(self, captures): ...

What the base gives:

- ``config``: the validated options (an instance of ``Config``; the defaults until the
  session starts), kept by the base's ``infoshape_configure``;
- ``session``: the :class:`~infoshape.Session` the plugin runs in (set by the same hook);
- states declared with :meth:`Plugin.add_state` (modelled on torchmetrics'
  ``Metric.add_state``): a tensor, or a dict of tensors by key (e.g. by capture name), that
  :meth:`Plugin.state_dict` returns, :meth:`Plugin.load_state_dict` restores,
  :meth:`Plugin.reset_states` puts back to the default and :meth:`Plugin.to` moves; a
  plugin that declares states gets ``infoshape_state_dict`` and
  ``infoshape_load_state_dict`` hooks built from them (unless its class defines its own),
  and a restored state moves to the model's device.

pluggy finds hook implementations on the base class too (it reads the instance's
attributes), so a subclass gets them without a line. A subclass that overrides one of them
must mark its method with ``@infoshape.hookimpl`` again (an unmarked override is no hook),
and call ``super()`` where it still wants the base's work (``infoshape_configure`` keeps
``config`` and ``session``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import torch

from infoshape.capture import Tap
from infoshape.errors import ConfigError
from infoshape.hookspecs import hookimpl
from infoshape.registry import Estimator

if TYPE_CHECKING:
    from infoshape.session import Session

__all__ = ["EstimatorPlugin", "Plugin"]


@attrs.frozen(kw_only=True)
class NoOptions:
    """The ``Config`` of a plugin that takes no options."""


def _copy(value: Any) -> Any:
    """A detached copy of a state value (a tensor or a dict of them)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return {key: _copy(item) for key, item in value.items()}


def _moved(value: Any, device: Any, dtype: torch.dtype | None) -> Any:
    """A state value on ``device``; floating tensors in ``dtype`` too (when given)."""
    if isinstance(value, torch.Tensor):
        cast = dtype if dtype is not None and value.is_floating_point() else None
        return value.to(device=device, dtype=cast)
    return {key: _moved(item, device, dtype) for key, item in value.items()}


def _is_empty(value: Any) -> bool:
    return isinstance(value, Mapping) and not value


class Plugin:
    """Base of a plugin: ``name``, ``Config``, the validated ``config``, ``session`` and states.

    Class attributes:
        name: the plugin's registered name (its entry-point name).
        Config: its options, an ``attrs.frozen(kw_only=True)`` class (default: none).
        weight_option: the option that holds the plugin's loss weight (``"beta"``), for
            ``infoshape sweep``; ``None``: the plugin adds no weighted penalty.

    Attributes:
        config: the validated options, an instance of ``Config``.
        session: the session the plugin runs in (``None`` before it starts).
    """

    name: ClassVar[str]
    Config: ClassVar[type] = NoOptions
    weight_option: ClassVar[str | None] = None

    def __init__(self) -> None:
        self.config: Any = self.Config()
        self.session: Session | None = None
        self._defaults: dict[str, Any] = {}

    # ------------------------------------------------------------------ declared states
    def add_state(self, name: str, default: torch.Tensor | Mapping[str, torch.Tensor]) -> None:
        """Declare the state ``name``: the attribute ``self.<name>``, a copy of ``default``.

        Args:
            name: the attribute and state-dict key.
            default: a tensor, or a dict of tensors by key (usually empty: one tensor per
                capture, added as captures arrive).

        Raises:
            ConfigError: for a name taken by the plugin or a default of another kind.
        """
        if not isinstance(default, (torch.Tensor, Mapping)):
            raise ConfigError(
                f"state {name!r} of plugin {type(self).__name__} has a default of the wrong kind",
                expected="a tensor, or a dict of tensors",
                got=type(default).__name__,
                fix="declare tensors (numbers: torch.tensor(0.0))",
            )
        if name in self._defaults or (hasattr(self, name) and name not in vars(self)):
            raise ConfigError(
                f"state {name!r} of plugin {type(self).__name__} is declared twice or hides an "
                "attribute",
                expected="a new attribute name",
                got=repr(name),
                fix="give the state another name",
            )
        if not self._defaults:
            self._install_state_hooks()
        self._defaults[name] = _copy(default)
        setattr(self, name, _copy(default))

    def _install_state_hooks(self) -> None:
        """Give the instance ``infoshape_state_dict``/``infoshape_load_state_dict`` hooks.

        Only a plugin with declared states has them (pluggy reads the instance's attributes
        when the plugin is registered), and only where its class defines none of its own.
        """
        if not hasattr(type(self), "infoshape_state_dict"):

            @hookimpl
            def infoshape_state_dict() -> dict[str, Any] | None:
                """The declared states (:meth:`state_dict`); ``None`` when none is set."""
                return self.state_dict() or None

            self.infoshape_state_dict = infoshape_state_dict
        if not hasattr(type(self), "infoshape_load_state_dict"):

            @hookimpl
            def infoshape_load_state_dict(state: Mapping[str, Any]) -> None:
                """Restore the declared states (:meth:`load_state_dict`) on the model's device."""
                self.load_state_dict(state)

            self.infoshape_load_state_dict = infoshape_load_state_dict

    def state_dict(self) -> dict[str, Any]:
        """Each declared state, detached copies (empty dict states left out)."""
        return {
            name: _copy(getattr(self, name))
            for name in self._defaults
            if not _is_empty(getattr(self, name))
        }

    def load_state_dict(self, state: Mapping[str, Any], map_location: Any = None) -> None:
        """Restore :meth:`state_dict` (on ``map_location``, else the model's device if known).

        A declared state missing from ``state`` is reset to its default.
        """
        device = map_location if map_location is not None else self._model_device()
        for name in self._defaults:
            value = _copy(state[name]) if name in state else _copy(self._defaults[name])
            setattr(self, name, _moved(value, device, None) if device is not None else value)

    def reset_states(self) -> None:
        """Put every declared state back to its default."""
        for name, default in self._defaults.items():
            setattr(self, name, _copy(default))

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> Plugin:
        """Move every declared state to ``device`` (floating ones to ``dtype`` too); ``self``."""
        for name in self._defaults:
            setattr(self, name, _moved(getattr(self, name), device, dtype))
        return self

    def _model_device(self) -> torch.device | None:
        model = getattr(self.session, "model", None)
        if model is None:
            return None
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device
        return None

    # ------------------------------------------------------------------ hooks
    def _configure(self, config: Any, session: Session) -> None:
        self.config = config
        if session is not None:
            self.session = session

    @hookimpl
    def infoshape_configure(self, config: Any, session: Session | None = None) -> None:
        """Keep the validated options and the session.

        Called directly (``plugin.infoshape_configure(config)``, in a test) ``session`` may
        be left out.
        """
        self._configure(config, session)  # type: ignore[arg-type]

    # pluggy reads a hook's arguments from the unwrapped function and does not pass those
    # with a default: this makes it pass ``session`` while a direct call may leave it out.
    infoshape_configure.__wrapped__ = _configure  # type: ignore[attr-defined]


def _log_no_layers(plugin: Any) -> None:
    """Say (INFO, on the plugin module's logger) that an estimator measures no layer."""
    logging.getLogger(type(plugin).__module__).info(
        "%s: no layers given; no epoch metrics (the estimator stays available offline: "
        "infoshape analyze); set layers=[...] to measure modules during training",
        plugin.name,
    )


class EstimatorPlugin(Plugin):
    """Registers :attr:`estimator`; taps ``Config.layers`` and reports :meth:`layer_metrics`.

    Subclasses set ``name``, ``estimator`` and a ``Config`` attrs class (with a
    ``layers: tuple[str, ...]`` field to offer epoch metrics), and override
    :meth:`layer_metrics`; each tapped layer's quantities are emitted as
    ``<plugin>.<capture>.<quantity>`` on the probe set at each epoch end::

        class Binning(EstimatorPlugin):
            name = "binning"
            estimator = Estimator(name="binning", function=..., information_plane=...)

            @attrs.frozen(kw_only=True)
            class Config:
                n_bins: int = 30
                layers: tuple[str, ...] = ()

            def layer_metrics(self, t, labels):
                return {"I_TX": ..., "I_TY": ...}
    """

    estimator: ClassVar[Estimator]

    def __init__(self) -> None:
        super().__init__()
        self.taps: list[Tap] = []

    @hookimpl
    def infoshape_taps(self, session: Session) -> list[Tap]:
        """One tap per module glob in the ``layers`` option."""
        self.taps = [Tap(glob) for glob in getattr(self.config, "layers", ())]
        if not self.taps:
            _log_no_layers(self)
        return self.taps

    @hookimpl
    def infoshape_metrics(
        self, session: Session, captures: Mapping[str, torch.Tensor], targets: Any, stage: str
    ) -> dict[str, float]:
        """:meth:`layer_metrics` of each tapped layer on the probe set (epoch stage only)."""
        if stage != "epoch" or not self.taps or not captures or targets is None:
            return {}
        metrics: dict[str, float] = {}
        names = dict.fromkeys(n for tap in self.taps for n in session.capture_names(tap))
        with torch.no_grad():
            for name in names:
                for key, value in self.layer_metrics(captures[name], targets).items():
                    metrics[f"{self.name}.{name}.{key}"] = float(value)
        return metrics

    def layer_metrics(self, t: torch.Tensor, labels: torch.Tensor) -> Mapping[str, Any]:
        """Quantities of one layer's probe representation ``t`` (default: none)."""
        return {}

    @hookimpl
    def infoshape_estimators(self) -> list[Estimator]:
        """The plugin's estimator."""
        return [self.estimator]
