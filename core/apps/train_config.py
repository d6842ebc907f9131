"""The settings of a built-in training run: :class:`TrainConfig`, and :class:`TrainResult`.

The ``infoshape train`` flags and the TOML config file map onto :class:`TrainConfig`;
every field is validated on construction (an attrs validator per field raising
:class:`~infoshape.ConfigError` with the field, the value and the constraint).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attr
import attrs
import torch

from infoshape.errors import ConfigError
from infoshape.syntax import by_syntax, plugin_syntax

__all__ = ["TrainConfig", "TrainResult"]


def _setting(expected: str, test: Callable[[Any], bool], example: str) -> Callable[..., None]:
    """An attrs validator raising :class:`ConfigError` with the field, value and constraint."""

    def validate(_instance: object, attribute: attrs.Attribute, value: Any) -> None:
        if not test(value):
            raise ConfigError(
                f"train setting {attribute.name!r} is invalid",
                expected=expected,
                got=f"{value!r} ({type(value).__name__})",
                fix=f"give {attribute.name} {expected}, e.g. {example}",
            )

    return validate


def _text(what: str, example: str, optional: bool = False) -> Callable[..., None]:
    """A non-empty string (or, when ``optional``, also None)."""
    expected = f"{what} (text){' or None' if optional else ''}"
    return _setting(expected, lambda v: _is_str(v) or (optional and v is None), example)


def _int_at_least(low: int, example: str) -> Callable[..., None]:
    return _setting(f"an integer >= {low}", lambda v: _is_int(v) and v >= low, example)


def _boolean() -> Callable[..., None]:
    return _setting("true or false", lambda v: isinstance(v, bool), "true")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _to_float(value: Any) -> Any:
    return float(value) if _is_int(value) else value


def _to_optional_str(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def _to_names(value: Any) -> Any:
    if value is None or isinstance(value, tuple):
        return value
    if isinstance(value, str):
        return (value,)
    return tuple(value) if isinstance(value, list) else value


def _list_to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _names(value: Any) -> bool:
    return isinstance(value, tuple) and all(_is_str(v) for v in value)


def _plugin_names(_instance: object, _attribute: attrs.Attribute, value: Any) -> None:
    """A list of plugin names; a string is refused, not read as one name or as letters."""
    if _names(value):
        return
    names = [value] if _is_str(value) else ["csv"]
    in_file = f"plugins = {json.dumps(names)} in the config file, or {plugin_syntax(*names)}"
    raise ConfigError(
        "train setting 'plugins' is invalid",
        expected="a list of plugin names",
        got=f"{value!r} ({type(value).__name__})",
        fix=f"write it as a list: {by_syntax(plugin_syntax(*names), in_file)}",
    )


def _options(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, Mapping) for k, v in value.items()
    )


def _device(value: Any) -> bool:
    if value == "auto":
        return True
    try:
        torch.device(value)
    except (RuntimeError, TypeError):
        return False
    return True


def _default_store(config: TrainConfig) -> str:
    return f"runs/{config.dataset}-{config.model}.zarr"


@attrs.frozen(kw_only=True)
class TrainConfig:
    """Everything a built-in training run needs; the CLI flags and the TOML file map onto it.

    Attributes:
        model: zoo model name (``infoshape.models.MODELS``).
        dataset: registered data-set name (``infoshape datasets`` lists them).
        data_root: local folder of data sets that need files (MNIST, CIFAR-10).
        epochs: number of passes over the training split.
        batch_size: training batch size.
        lr: learning rate.
        optimizer: ``"adam"`` (Adam) or ``"sgd"`` (plain SGD, no momentum).
        seed: seeds torch, numpy, random, the shuffling and the probe draw.
        plugins: plugin names to enable (entry points of ``infoshape.plugins``).
        options: per-plugin options, ``{"csv": {"path": "m.csv"}}``.
        model_options: options of the zoo model (``hidden`` for mlp, ``channels`` for cnn).
        store: path of the zarr store (default ``runs/<dataset>-<model>.zarr``); ``None``
            writes no store.
        overwrite: replace an existing store.
        probe: pass a probe set (test samples) at each epoch end and store its taps.
        probe_size: at most this many probe samples.
        taps: module names (globs) whose outputs are stored for the probe set; ``None``
            means the model's ``default_taps``.
        device: torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``), or ``"auto"``: CUDA
            when this machine has it, else the CPU.
        amp: mixed precision of the training step: ``"off"``, ``"bf16"`` (bfloat16
            autocast) or ``"fp16"`` (float16 autocast with a ``torch.amp.GradScaler``);
            penalties and estimators compute in float32 inside it.
        compile: train through ``torch.compile(model)`` (the capture hooks are traced into
            the graph; evaluation and the probe pass run the model uncompiled): ``True``
            (inductor) or a backend name (``"aot_eager"``); ``False``: eager.
        log_every: steps between reads of the step metrics back to the host
            (``Session(log_every=...)``): the training step itself never waits for the device.
        progress: show a progress bar (only on a terminal).
    """

    model: str = attrs.field(default="mlp", validator=_text("a model name", "'cnn'"))
    dataset: str = attrs.field(default="digits", validator=_text("a data-set name", "'mnist'"))
    data_root: str | None = attrs.field(
        default=None,
        converter=_to_optional_str,
        validator=_text("a folder", "'~/data'", optional=True),
    )
    epochs: int = attrs.field(default=10, validator=_int_at_least(1, "10"))
    batch_size: int = attrs.field(default=64, validator=_int_at_least(1, "64"))
    lr: float = attrs.field(
        default=1e-3,
        converter=_to_float,
        validator=_setting("a float > 0", lambda v: isinstance(v, float) and v > 0, "0.001"),
    )
    optimizer: str = attrs.field(
        default="adam",
        validator=_setting("'adam' or 'sgd'", lambda v: v in ("adam", "sgd"), "'sgd'"),
    )
    seed: int = attrs.field(default=0, validator=_int_at_least(0, "0"))
    plugins: tuple[str, ...] = attrs.field(
        default=(),
        converter=_list_to_tuple,  # a string ("shade") is refused, not read as letters
        validator=_plugin_names,
    )
    options: dict[str, dict[str, Any]] = attrs.field(
        factory=dict,
        validator=_setting(
            "a table per plugin: {plugin: {option: value}}", _options, "{csv = {path = 'm.csv'}}"
        ),
    )
    model_options: dict[str, Any] = attrs.field(
        factory=dict,
        validator=_setting(
            "a table {option: value}", lambda v: isinstance(v, Mapping), "{hidden = [128, 64]}"
        ),
    )
    store: str | None = attrs.field(
        default=attrs.Factory(_default_store, takes_self=True),
        converter=_to_optional_str,
        validator=_text("a store path", "'runs/a.zarr'", optional=True),
    )
    overwrite: bool = attrs.field(default=False, validator=_boolean())
    probe: bool = attrs.field(default=True, validator=_boolean())
    probe_size: int = attrs.field(default=1000, validator=_int_at_least(1, "1000"))
    taps: tuple[str, ...] | None = attrs.field(
        default=None,
        converter=_to_names,
        validator=_setting(
            "a list of module names (or None)", lambda v: v is None or _names(v), "['relu1']"
        ),
    )
    device: str = attrs.field(
        default="auto", validator=_setting("'auto' or a torch device name", _device, "'cuda'")
    )
    amp: str = attrs.field(
        default="off",
        validator=_setting(
            "'off', 'bf16' or 'fp16'", lambda v: v in ("off", "bf16", "fp16"), "'bf16'"
        ),
    )
    compile: bool | str = attrs.field(
        default=False,
        validator=_setting(
            "true, false or a torch.compile backend name",
            lambda v: isinstance(v, (bool, str)) and v != "",
            "true",
        ),
    )
    log_every: int = attrs.field(default=50, validator=_int_at_least(1, "50"))
    progress: bool = attrs.field(default=True, validator=_boolean())

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> TrainConfig:
        """Build a config from a mapping (a parsed TOML file), refusing unknown keys.

        Raises:
            ConfigError: an unknown key (listing the valid ones) or an invalid value.
        """
        known = [f.name for f in attrs.fields(cls)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.6)
            raise ConfigError(
                f"unknown train setting {unknown[0]!r}",
                expected=f"settings among: {', '.join(known)}",
                got=", ".join(unknown),
                fix=f"did you mean {close[0]!r}?" if close else "remove it",
            )
        return cls(**settings)

    def as_dict(self) -> dict[str, Any]:
        """The config as plain data (lists, dicts), as recorded in the run manifest."""
        return attr.asdict(self, retain_collection_types=False)


@attrs.frozen(kw_only=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        train_accuracy: accuracy on the whole training split after the last epoch.
        train_loss: mean cross-entropy on the training split after the last epoch.
        test_accuracy: accuracy on the whole test split after the last epoch.
        test_loss: mean cross-entropy on the test split after the last epoch.
        store: the store's path, or ``None`` when no store was written.
        elapsed_s: wall-clock seconds of the whole run (loading data included).
        history: per epoch, the metrics logged at its end (``train.*``, ``test.*``, and
            those returned by ``Session.epoch_end``).
        config: the config run, with ``taps`` resolved to the module names stored.
    """

    train_accuracy: float
    train_loss: float
    test_accuracy: float
    test_loss: float
    store: Path | str | None
    elapsed_s: float
    history: tuple[dict[str, Any], ...]
    config: TrainConfig
