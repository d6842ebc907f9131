"""The ``builtin_datasets`` plugin: registers infoshape's own data sets.

The loaders live in :mod:`infoshape.datasets`; this module only describes
them, through the same hook a third-party data-set package implements.
"""

from __future__ import annotations

from infoshape.datasets import load_cifar10, load_digits, load_fashion_mnist, load_mnist
from infoshape.hookspecs import hookimpl
from infoshape.registry import DatasetSpec

__all__ = ["infoshape_datasets"]


@hookimpl
def infoshape_datasets() -> list[DatasetSpec]:
    """The embedded ``digits`` and the torchvision sets read from a local root."""
    return [
        DatasetSpec(
            name="digits",
            load=load_digits,
            n_classes=10,
            input_shape=(1, 8, 8),
            needs_root=False,
            description="1,797 real 8x8 handwritten digits inside scikit-learn "
            "(1,437 train / 360 test); no download",
        ),
        DatasetSpec(
            name="mnist",
            load=load_mnist,
            n_classes=10,
            input_shape=(1, 28, 28),
            needs_root=True,
            description="MNIST digits, 60,000 / 10,000, from <root>/MNIST/raw",
        ),
        DatasetSpec(
            name="fashion_mnist",
            load=load_fashion_mnist,
            n_classes=10,
            input_shape=(1, 28, 28),
            needs_root=True,
            description="Fashion-MNIST clothing, 60,000 / 10,000, from <root>/FashionMNIST/raw",
        ),
        DatasetSpec(
            name="cifar10",
            load=load_cifar10,
            n_classes=10,
            input_shape=(3, 32, 32),
            needs_root=True,
            description="CIFAR-10 colour images, 50,000 / 10,000, from <root>/cifar-10-batches-py",
        ),
    ]
