"""A small model zoo for the built-in trainer and the CLI.

Every model has readable, stable module names (``fc1``, ``relu1``, ``conv2``
...) so taps can name them, and a ``default_taps`` list: the hidden
representations worth storing by default (the trainer stores these when no
``--tap`` is given)::

    model = build_model("mlp", (1, 8, 8), 10, hidden=(64, 32))
    model.default_taps          # ['relu1', 'relu2']
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from infoshape.errors import ConfigError
from infoshape.registry import unknown_name

__all__ = ["CNN", "MLP", "MODELS", "build_model", "resnet18_small"]

MODELS: dict[str, str] = {
    "mlp": "Flatten, then Linear+ReLU per hidden width (hidden=(64, 32)), Linear head",
    "cnn": "two 3x3 Conv+ReLU blocks (channels=(16, 32)) with 2x2 max-pooling where the "
    "map is at least 8 pixels wide, Linear head",
    "resnet18": "torchvision ResNet-18 for small images: 3x3 stride-1 stem, no max-pool",
}


def _widths(model: str, option: str, value: Any, n: int | None = None) -> tuple[int, ...]:
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    )
    if not ok or (n is not None and len(value) != n) or not value:
        count = f"{n} " if n is not None else ""
        raise ConfigError(
            f"model {model!r}: option {option!r} is invalid",
            expected=f"a list of {count}positive integers",
            got=repr(value),
            fix=f"e.g. {option}=[64, 32]" if n is None else f"e.g. {option}=[16, 32]",
        )
    return tuple(value)


def _image_shape(model: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ConfigError(
            f"model {model!r} needs image inputs",
            expected="input_shape (channels, height, width)",
            got=repr(shape),
            fix="use the mlp model for inputs that are not images",
        )
    return shape  # type: ignore[return-value]


class _NamedSequential(nn.Sequential):
    """``nn.Sequential`` whose slices are plain ``nn.Sequential`` (subclasses take other args)."""

    def __getitem__(self, index: int | slice) -> nn.Module:  # type: ignore[override]
        if isinstance(index, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[index]))
        return super().__getitem__(index)


class MLP(_NamedSequential):
    """A multilayer perceptron: ``flatten, fc1, relu1, ..., fcK, reluK, out``.

    Args:
        input_shape: shape of one input (flattened to its product).
        n_classes: number of outputs (logits).
        hidden: width of each hidden layer.

    Attributes:
        default_taps: ``["relu1", ..., "reluK"]``, the hidden representations.
    """

    def __init__(
        self, input_shape: Sequence[int], n_classes: int, hidden: Sequence[int] = (64, 32)
    ) -> None:
        widths = _widths("mlp", "hidden", hidden)
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        previous = math.prod(input_shape)
        for k, width in enumerate(widths, start=1):
            layers[f"fc{k}"] = nn.Linear(previous, width)
            layers[f"relu{k}"] = nn.ReLU()
            previous = width
        layers["out"] = nn.Linear(previous, n_classes)
        super().__init__(layers)
        self.default_taps = [f"relu{k}" for k in range(1, len(widths) + 1)]


class CNN(_NamedSequential):
    """A small CNN: ``conv1, relu1, pool1, conv2, relu2, pool2, flatten, fc``.

    Convolutions are 3×3 with padding 1 (they keep the map size). ``poolK`` is a
    2×2 max-pool when the map entering it is at least 8 pixels wide, else an
    ``Identity`` (so module names are the same for every input size): an 8×8
    input gives maps 8→4→4, 28×28 gives 28→14→7, 32×32 gives 32→16→8.

    Args:
        input_shape: ``(channels, height, width)``.
        n_classes: number of outputs (logits).
        channels: output channels of ``conv1`` and ``conv2``.

    Attributes:
        default_taps: ``["pool1", "pool2"]``: each block's output (after ReLU and pooling),
            the representation the next layer sees and 4× smaller to store than ``reluK``.
    """

    def __init__(
        self, input_shape: Sequence[int], n_classes: int, channels: Sequence[int] = (16, 32)
    ) -> None:
        c, h, w = _image_shape("cnn", input_shape)
        widths = _widths("cnn", "channels", channels, n=2)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        previous = c
        for k, width in enumerate(widths, start=1):
            layers[f"conv{k}"] = nn.Conv2d(previous, width, kernel_size=3, padding=1)
            layers[f"relu{k}"] = nn.ReLU()
            pool = min(h, w) >= 8
            layers[f"pool{k}"] = nn.MaxPool2d(2) if pool else nn.Identity()
            h, w = (h // 2, w // 2) if pool else (h, w)
            previous = width
        layers["flatten"] = nn.Flatten()
        layers["fc"] = nn.Linear(previous * h * w, n_classes)
        super().__init__(layers)
        self.default_taps = ["pool1", "pool2"]


def resnet18_small(input_shape: Sequence[int], n_classes: int) -> nn.Module:
    """ResNet-18 of torchvision (random weights) adapted to 8–32 pixel images.

    As usual for CIFAR-sized inputs, the stem ``conv1`` is 3×3 with stride 1 (taking
    ``input_shape[0]`` channels) and the stem ``maxpool`` is an ``Identity``, so
    a 32×32 input reaches ``layer4`` at 4×4 instead of 1×1.

    The returned model's ``default_taps`` are ``["layer3", "layer4", "avgpool"]``:
    ``layer1``/``layer2`` outputs are 4–8× larger to store (64×32×32 values a sample on
    CIFAR-10); tap them explicitly when wanted.
    """
    import torchvision  # imported here: it costs seconds and only this model needs it

    c, _, _ = _image_shape("resnet18", input_shape)
    model = torchvision.models.resnet18(weights=None, num_classes=n_classes)
    model.conv1 = nn.Conv2d(c, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    model.default_taps = ["layer3", "layer4", "avgpool"]  # type: ignore[assignment]
    return model


_BUILDERS: dict[str, tuple[Callable[..., nn.Module], tuple[str, ...]]] = {
    "mlp": (MLP, ("hidden",)),
    "cnn": (CNN, ("channels",)),
    "resnet18": (resnet18_small, ()),
}


def build_model(name: str, input_shape: Sequence[int], n_classes: int, **options: Any) -> nn.Module:
    """Build zoo model ``name`` for inputs of ``input_shape`` and ``n_classes`` outputs.

    Args:
        name: one of :data:`MODELS`.
        input_shape: shape of one input, e.g. ``(1, 28, 28)``.
        n_classes: number of classes (output logits).
        **options: the model's options (``hidden`` for mlp, ``channels`` for cnn).

    Returns:
        the model, with a ``default_taps`` attribute (module names).

    Raises:
        UnknownNameError: ``name`` is no zoo model (the error lists them).
        ConfigError: an unknown option, an invalid option value or an unfit input shape.
    """
    if name not in _BUILDERS:
        raise unknown_name("model", name, list(MODELS), "see `infoshape train --help`")
    builder, known = _BUILDERS[name]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"model {name!r} has no option {', '.join(map(repr, unknown))}",
            expected=f"options among: {', '.join(known) or '(none)'}",
            got=", ".join(f"{k}={options[k]!r}" for k in unknown),
            fix="correct the option's name, or drop it",
        )
    if not isinstance(n_classes, int) or isinstance(n_classes, bool) or n_classes < 1:
        raise ConfigError(
            f"model {name!r}: invalid number of classes",
            expected="an integer >= 1",
            got=repr(n_classes),
            fix="pass the data set's n_classes",
        )
    return builder(tuple(input_shape), n_classes, **options)
