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

__all__ = ["CNN", "MLP", "MODELS", "ShadeCNN", "ShallowCNN", "build_model", "resnet18_small"]

MODELS: dict[str, str] = {
    "mlp": "Flatten, then Linear+ReLU per hidden width (hidden=(64, 32)), Linear head; "
    "dropout=p adds Dropout after each ReLU, batch_norm=true BatchNorm before it",
    "cnn": "two 3x3 Conv+ReLU blocks (channels=(16, 32)) with 2x2 max-pooling where the "
    "map is at least 8 pixels wide, Linear head; dropout=p adds Dropout after each pool, "
    "batch_norm=true BatchNorm2d before each ReLU",
    "resnet18": "torchvision ResNet-18 for small images: 3x3 stride-1 stem, no max-pool",
    "shallow_cnn": "Zaugg et al.'s shallow CNN (MI-CE paper): two 5x5 Conv+ReLU+max-pool, two "
    "Linear+ReLU (120, 84), Linear head; 44,426 parameters on 1x28x28, inputs >= 16 pixels",
    "shade_cnn": "SHADE's MNIST-M network (Blot et al. 2018, App. B): 5x5 then two 3x3 "
    "Conv(64)+ReLU, each followed by 2x2 max-pooling (ceil mode), Linear head",
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


def _regularizers(model: str, dropout: Any, batch_norm: Any) -> tuple[float, bool]:
    """Validated ``dropout`` (a probability in [0, 1)) and ``batch_norm`` (a bool)."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(
            f"model {model!r}: option 'dropout' is invalid",
            expected="a drop probability in [0, 1) (0: no dropout layers)",
            got=repr(dropout),
            fix="e.g. dropout=0.5",
        )
    if not isinstance(batch_norm, bool):
        raise ConfigError(
            f"model {model!r}: option 'batch_norm' is invalid",
            expected="true or false",
            got=repr(batch_norm),
            fix="e.g. batch_norm=true",
        )
    return float(dropout), batch_norm


def _add_block(
    layers: OrderedDict[str, nn.Module],
    k: int,
    core: tuple[str, nn.Module],
    norm: nn.Module | None,
    dropout: float,
    pool: nn.Module | None = None,
) -> None:
    """Append block ``k``: ``<core>k``, ``bnk`` (if ``norm``), ``reluk``, ``poolk``, ``dropk``.

    ``bnk``, ``poolk`` and ``dropk`` are present only when asked for, so the names of the
    other modules do not depend on the options.
    """
    layers[f"{core[0]}{k}"] = core[1]
    if norm is not None:
        layers[f"bn{k}"] = norm
    layers[f"relu{k}"] = nn.ReLU()
    if pool is not None:
        layers[f"pool{k}"] = pool
    if dropout > 0:
        layers[f"drop{k}"] = nn.Dropout(dropout)


class _NamedSequential(nn.Sequential):
    """``nn.Sequential`` whose slices are plain ``nn.Sequential`` (subclasses take other args)."""

    def __getitem__(self, index: int | slice) -> nn.Module:  # type: ignore[override]
        if isinstance(index, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[index]))
        return super().__getitem__(index)


class MLP(_NamedSequential):
    """A multilayer perceptron: ``flatten, fc1, relu1, ..., fcK, reluK, out``.

    With ``batch_norm``, ``bnK`` (``BatchNorm1d``) sits between ``fcK`` and ``reluK``; with
    ``dropout`` > 0, ``dropK`` (``Dropout``) follows ``reluK``. The other names stay the same,
    so ``reluK`` is always the hidden post-activation (before dropout).

    Args:
        input_shape: shape of one input (flattened to its product).
        n_classes: number of outputs (logits).
        hidden: width of each hidden layer.
        dropout: drop probability after each hidden ReLU (0: no dropout layers).
        batch_norm: batch normalization before each hidden ReLU.

    Attributes:
        default_taps: ``["relu1", ..., "reluK"]``, the hidden representations.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        hidden: Sequence[int] = (64, 32),
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        widths = _widths("mlp", "hidden", hidden)
        dropout, batch_norm = _regularizers("mlp", dropout, batch_norm)
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        previous = math.prod(input_shape)
        for k, width in enumerate(widths, start=1):
            norm = nn.BatchNorm1d(width) if batch_norm else None
            _add_block(layers, k, ("fc", nn.Linear(previous, width)), norm, dropout)
            previous = width
        layers["out"] = nn.Linear(previous, n_classes)
        super().__init__(layers)
        self.default_taps = [f"relu{k}" for k in range(1, len(widths) + 1)]


class CNN(_NamedSequential):
    """A small CNN: ``conv1, relu1, pool1, conv2, relu2, pool2, flatten, fc``.

    Convolutions are 3×3 with padding 1 (they keep the map size). ``poolK`` is a
    2×2 max-pool when the map entering it is at least 8 pixels wide, else an
    ``Identity`` (so module names are the same for every input size): an 8×8
    input gives maps 8→4→4, 28×28 gives 28→14→7, 32×32 gives 32→16→8. With
    ``batch_norm``, ``bnK`` (``BatchNorm2d``) sits between ``convK`` and ``reluK``; with
    ``dropout`` > 0, ``dropK`` (``Dropout``) follows ``poolK``.

    Args:
        input_shape: ``(channels, height, width)``.
        n_classes: number of outputs (logits).
        channels: output channels of ``conv1`` and ``conv2``.
        dropout: drop probability after each block (0: no dropout layers).
        batch_norm: batch normalization before each ReLU.

    Attributes:
        default_taps: ``["pool1", "pool2"]``: each block's output (after ReLU and pooling),
            the representation the next layer sees and 4× smaller to store than ``reluK``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        channels: Sequence[int] = (16, 32),
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        c, h, w = _image_shape("cnn", input_shape)
        widths = _widths("cnn", "channels", channels, n=2)
        dropout, batch_norm = _regularizers("cnn", dropout, batch_norm)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        previous = c
        for k, width in enumerate(widths, start=1):
            conv = nn.Conv2d(previous, width, kernel_size=3, padding=1)
            norm = nn.BatchNorm2d(width) if batch_norm else None
            pool = min(h, w) >= 8
            _add_block(
                layers, k, ("conv", conv), norm, dropout, nn.MaxPool2d(2) if pool else nn.Identity()
            )
            h, w = (h // 2, w // 2) if pool else (h, w)
            previous = width
        layers["flatten"] = nn.Flatten()
        layers["fc"] = nn.Linear(previous * h * w, n_classes)
        super().__init__(layers)
        self.default_taps = ["pool1", "pool2"]


class ShadeCNN(_NamedSequential):
    """The 3-conv network of SHADE's MNIST-M experiment (Blot et al. 2018, Appendix B).

    ``conv1`` (64 filters 5×5, padding 2), ``relu1``, ``pool1``, ``conv2`` and ``conv3``
    (64 filters 3×3, padding 1) each with ``reluK`` and ``poolK``, then ``flatten`` and
    ``fc``. The pools are 2×2 max-pools in ceil mode, so a 28×28 input gives maps
    28→14→7→4 and ``fc`` has 64·4·4 = 1024 inputs, as the paper's table states (a 32×32
    input gives the same); the paper's final SoftMax is left to the loss.

    Args:
        input_shape: ``(channels, height, width)``.
        n_classes: number of outputs (logits).
        channels: output channels of the three convolutions (the paper: 64 each).

    Attributes:
        default_taps: ``["pool1", "pool2", "pool3"]``, each block's output.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        channels: Sequence[int] = (64, 64, 64),
    ) -> None:
        c, h, w = _image_shape("shade_cnn", input_shape)
        widths = _widths("shade_cnn", "channels", channels, n=3)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        previous = c
        for k, (width, kernel) in enumerate(zip(widths, (5, 3, 3), strict=True), start=1):
            layers[f"conv{k}"] = nn.Conv2d(previous, width, kernel, padding=kernel // 2)
            layers[f"relu{k}"] = nn.ReLU()
            layers[f"pool{k}"] = nn.MaxPool2d(2, ceil_mode=True)
            h, w = -(-h // 2), -(-w // 2)
            previous = width
        layers["flatten"] = nn.Flatten()
        layers["fc"] = nn.Linear(previous * h * w, n_classes)
        super().__init__(layers)
        self.default_taps = ["pool1", "pool2", "pool3"]


class ShallowCNN(_NamedSequential):
    """The shallow CNN of Zaugg et al. (mi_ce_mixing.md §4.2), in the LeNet-5 layout.

    ``conv1, relu1, pool1, conv2, relu2, pool2, flatten, fc1, relu3, fc2, relu4, out``: 5×5
    convolutions without padding, each followed by ReLU and a 2×2 max-pool (28 → 24 → 12 → 8 →
    4 pixels), two fully connected ReLU layers and a linear prediction layer. The paper names
    the layers ("four hidden layers", "approximately 44K network parameters") but not their
    widths; the LeNet-5 widths (6, 16 channels; 120, 84 units) give, on 1×28×28 and 10 classes,
    ``156 + 2,416 + 30,840 + 10,164 + 850 = 44,426`` parameters.

    Args:
        input_shape: ``(channels, height, width)``, at least 16 pixels a side (8×8 digits:
            upsample to 28×28 first).
        n_classes: number of outputs (logits).
        channels: output channels of ``conv1`` and ``conv2``.
        hidden: widths of ``fc1`` and ``fc2``.

    Attributes:
        default_taps: ``["pool1", "pool2", "relu3", "relu4"]``, the four hidden layers.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        channels: Sequence[int] = (6, 16),
        hidden: Sequence[int] = (120, 84),
    ) -> None:
        c, h, w = _image_shape("shallow_cnn", input_shape)
        widths = _widths("shallow_cnn", "channels", channels, n=2)
        units = _widths("shallow_cnn", "hidden", hidden, n=2)
        h, w = (((n - 4) // 2 - 4) // 2 for n in (h, w))  # two (5×5 conv, 2×2 max-pool) blocks
        if min(h, w) < 1:
            raise ConfigError(
                "model 'shallow_cnn' needs images of at least 16x16 pixels",
                expected="input_shape (channels, >= 16, >= 16)",
                got=repr(tuple(input_shape)),
                fix="upsample the images (the MI-CE paper uses 28x28), or use the cnn model",
            )
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        previous = c
        for k, width in enumerate(widths, start=1):
            layers[f"conv{k}"] = nn.Conv2d(previous, width, kernel_size=5)
            layers[f"relu{k}"] = nn.ReLU()
            layers[f"pool{k}"] = nn.MaxPool2d(2)
            previous = width
        layers["flatten"] = nn.Flatten()
        previous *= h * w
        for k, width in enumerate(units, start=1):
            layers[f"fc{k}"] = nn.Linear(previous, width)
            layers[f"relu{k + 2}"] = nn.ReLU()
            previous = width
        layers["out"] = nn.Linear(previous, n_classes)
        super().__init__(layers)
        self.default_taps = ["pool1", "pool2", "relu3", "relu4"]


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
    "mlp": (MLP, ("hidden", "dropout", "batch_norm")),
    "cnn": (CNN, ("channels", "dropout", "batch_norm")),
    "resnet18": (resnet18_small, ()),
    "shallow_cnn": (ShallowCNN, ("channels", "hidden")),
    "shade_cnn": (ShadeCNN, ("channels",)),
}


def build_model(name: str, input_shape: Sequence[int], n_classes: int, **options: Any) -> nn.Module:
    """Build zoo model ``name`` for inputs of ``input_shape`` and ``n_classes`` outputs.

    Args:
        name: one of :data:`MODELS`.
        input_shape: shape of one input, e.g. ``(1, 28, 28)``.
        n_classes: number of classes (output logits).
        **options: the model's options (``hidden`` for mlp, ``channels`` for cnn;
            ``dropout`` and ``batch_norm`` for both).

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
