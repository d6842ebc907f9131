"""Writing MNIST-format IDX files, to build an MNIST-layout root without internet.

The IDX format (LeCun et al.): a big-endian header ``0x00 0x00 <type> <ndim>``
(type ``0x08`` = unsigned byte), one big-endian ``uint32`` per dimension, then
the values in C order. torchvision's ``MNIST`` and ``FashionMNIST`` read

    <root>/<folder>/raw/train-images-idx3-ubyte   train-labels-idx1-ubyte
    <root>/<folder>/raw/t10k-images-idx3-ubyte    t10k-labels-idx1-ubyte

with ``folder`` the class name (``MNIST``, ``FashionMNIST``) and need all four
files present, whichever split is loaded.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from infoshape.datasets.image_tensors import check_split
from infoshape.errors import ConfigError

__all__ = ["UBYTE", "mnist_file_names", "write_mnist_idx"]

UBYTE = 0x08
_PREFIX = {"train": "train", "test": "t10k"}


def mnist_file_names(split: str) -> tuple[str, str]:
    """The image and label file names torchvision's MNIST reads for ``split``."""
    check_split("mnist", split)
    prefix = _PREFIX[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, UBYTE, array.ndim])
    dims = np.asarray(array.shape, dtype=">u4").tobytes()
    return header + dims + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _as_uint8(name: str, values: object, ndim: int, shape_text: str) -> np.ndarray:
    array = np.asarray(values)
    integral = array.dtype.kind in "ui" or (array.dtype.kind == "f" and np.all(array % 1 == 0))
    if (
        array.ndim != ndim
        or not integral
        or (array.size and (array.min() < 0 or array.max() > 255))
    ):
        raise ConfigError(
            f"write_mnist_idx: {name} cannot be stored as IDX unsigned bytes",
            expected=f"integers in 0..255 of shape {shape_text}",
            got=f"{array.dtype} array of shape {array.shape}"
            + (f", values {array.min()}..{array.max()}" if array.size else ""),
            fix="convert images to uint8 (e.g. (x * 255).round().astype('uint8'))",
        )
    return array.astype(np.uint8)


def write_mnist_idx(
    root: str | Path,
    images_uint8: object,
    labels: object,
    split: str,
    folder: str = "MNIST",
    compress: bool = False,
) -> tuple[Path, Path]:
    """Write one split's images and labels as MNIST IDX files under ``root``.

    Args:
        root: the data root (what ``--data-root`` names).
        images_uint8: ``(N, H, W)`` grey levels 0..255 (numpy array or tensor).
        labels: ``N`` labels in 0..255.
        split: ``"train"`` (``train-*`` files) or ``"test"`` (``t10k-*`` files).
        folder: the torchvision class name: ``"MNIST"`` or ``"FashionMNIST"``.
        compress: write gzip files (``*.gz``, as distributed) instead of raw ones.

    Returns:
        the paths of the image file and the label file written.

    Raises:
        ConfigError: for images or labels that are not unsigned bytes of matching length.
    """
    images = _as_uint8("images", images_uint8, 3, "(N, H, W)")
    targets = _as_uint8("labels", labels, 1, "(N,)")
    if targets.shape[0] != images.shape[0]:
        raise ConfigError(
            "write_mnist_idx: images and labels differ in length",
            expected=f"{images.shape[0]} labels",
            got=f"{targets.shape[0]} labels",
            fix="pass one label per image",
        )
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    paths = tuple(raw / (name + suffix) for name in mnist_file_names(split))
    for path, array in zip(paths, (images, targets), strict=True):
        data = _idx_bytes(array)
        path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return paths[0], paths[1]
