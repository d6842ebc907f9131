"""The embedded default data set ``digits``: real handwritten digits, no download.

The 1,797 8×8 grey-level images of UCI's "Optical Recognition of Handwritten
Digits" ship inside scikit-learn (``sklearn.datasets.load_digits``). Pixels
count 0–16 on-bits of a 4×4 block; they are scaled to ``[0, 1]`` by /16.
The train/test split (1,437/360) is stratified by label and fixed by
:data:`SPLIT_SEED`, so every run on every machine sees the same samples.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from infoshape.datasets.image_tensors import ImageTensorDataset, check_split

__all__ = ["N_TEST", "SPLIT_SEED", "load_digits"]

SPLIT_SEED = 0
N_TEST = 360


@functools.cache
def _split_arrays() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``split -> (images (n, 8, 8) float64 in 0..16, labels (n,), source index (n,))``."""
    from sklearn.datasets import load_digits as sklearn_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_load_digits()
    index = np.arange(len(bunch.target))
    train_index, test_index = train_test_split(
        index, test_size=N_TEST, stratify=bunch.target, random_state=SPLIT_SEED
    )
    return {
        split: (bunch.images[rows], bunch.target[rows], rows)
        for split, rows in (("train", np.sort(train_index)), ("test", np.sort(test_index)))
    }


def load_digits(split: str, root: object = None) -> ImageTensorDataset:
    """The ``train`` (1,437 images) or ``test`` (360 images) split of the digits.

    Args:
        split: ``"train"`` or ``"test"``.
        root: ignored (the data ship with scikit-learn); accepted for the loader protocol.

    Returns:
        a data set of ``(x, y)``: ``x`` float32 ``(1, 8, 8)`` in ``[0, 1]``, ``y`` int64
        in ``0..9``. Its ``data`` attribute holds the scaled images ``(n, 1, 8, 8)`` and
        ``source_index`` each image's index in ``sklearn.datasets.load_digits()``.

    Raises:
        ConfigError: for a split other than ``"train"`` or ``"test"``.
    """
    check_split("digits", split)
    images, labels, rows = _split_arrays()[split]
    data = torch.tensor(images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    return ImageTensorDataset(
        data,
        torch.tensor(labels, dtype=torch.int64),
        name="digits",
        split=split,
        classes=[str(k) for k in range(10)],
        source_index=torch.tensor(rows, dtype=torch.int64),
    )
