"""A map-style data set of images held in one tensor, with their labels.

Every built-in loader returns an :class:`ImageTensorDataset`: the raw pixels
stay in their compact type (``uint8`` for MNIST and CIFAR-10) and each item is
converted on access to ``float32`` in ``[0, 1]``, exactly what torchvision's
``ToTensor`` gives, without a PIL round trip per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from infoshape.errors import ConfigError

__all__ = ["SPLITS", "ImageTensorDataset", "check_split"]

SPLITS = ("train", "test")


def check_split(dataset: str, split: str) -> None:
    """Refuse a split other than ``"train"`` or ``"test"``.

    Raises:
        ConfigError: naming the data set and the split.
    """
    if split not in SPLITS:
        raise ConfigError(
            f"data set {dataset!r} has no split {split!r}",
            expected=" or ".join(map(repr, SPLITS)),
            got=repr(split),
            fix='call load("train", root) or load("test", root)',
        )


class ImageTensorDataset(Dataset):
    """Images ``(N, C, H, W)`` and labels ``(N,)``; item ``i`` is ``(data[i] / scale, targets[i])``.

    Args:
        data: raw pixel values, ``(N, C, H, W)``, any real dtype.
        targets: one integer label per image.
        scale: the raw value of a full-intensity pixel (255 for ``uint8``, 16 for the
            scikit-learn digits, 1 for data already in ``[0, 1]``).
        name: the data set's registry name (for ``repr``).
        split: ``"train"`` or ``"test"``.
        classes: class names, index ``k`` naming label ``k``.
        source_index: each image's index in the collection it was drawn from, if that
            differs from its position here.

    Attributes:
        data: the raw pixel tensor.
        targets: ``int64`` labels (a ``LongTensor``).
        classes: class names.
    """

    def __init__(
        self,
        data: torch.Tensor,
        targets: torch.Tensor | Sequence[int],
        *,
        scale: float = 1.0,
        name: str = "images",
        split: str = "train",
        classes: Sequence[str] = (),
        source_index: torch.Tensor | None = None,
    ) -> None:
        targets = torch.as_tensor(targets, dtype=torch.int64)
        if data.ndim != 4 or targets.shape != (data.shape[0],):
            raise ConfigError(
                f"data set {name!r}: images and labels do not fit together",
                expected="images of shape (N, C, H, W) and N labels",
                got=f"images {tuple(data.shape)}, labels {tuple(targets.shape)}",
                fix="reshape single-channel images to (N, 1, H, W); pass one label per image",
            )
        self.data = data
        self.targets = targets
        self.scale = float(scale)
        self.name = name
        self.split = split
        self.classes = list(classes)
        self.source_index = source_index

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.data[index].to(torch.float32)
        if self.scale != 1.0:
            x = x / self.scale
        return x, self.targets[index]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one image ``(C, H, W)``."""
        return tuple(self.data.shape[1:])

    def __repr__(self) -> str:
        return (
            f"ImageTensorDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"input_shape={self.input_shape})"
        )
