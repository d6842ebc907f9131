"""Data sets of infoshape: real loaders, the embedded default and file writers.

The loaders follow :class:`infoshape.DatasetSpec`'s protocol,
``load(split, root) -> Dataset`` of ``(x, y)`` with a ``targets`` attribute, and
are registered by the ``builtin_datasets`` plugin:

- ``digits``: 1,797 real 8×8 handwritten digits shipped inside scikit-learn (no
  download, no root); the default data set.
- ``mnist``, ``fashion_mnist``, ``cifar10``: torchvision's classes reading a local
  root (never downloading).

:func:`write_mnist_idx` writes MNIST-format files, so an MNIST-layout root can be
built offline (tests build one from the digits).
"""

from infoshape.datasets.digits import load_digits
from infoshape.datasets.idx import mnist_file_names, write_mnist_idx
from infoshape.datasets.image_tensors import SPLITS, ImageTensorDataset, check_split
from infoshape.datasets.torchvision_sets import load_cifar10, load_fashion_mnist, load_mnist

__all__ = [
    "SPLITS",
    "ImageTensorDataset",
    "check_split",
    "load_cifar10",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "mnist_file_names",
    "write_mnist_idx",
]
