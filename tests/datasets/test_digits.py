"""The embedded ``digits`` data set: real sklearn images, fixed stratified split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sklearn_load_digits
from torch.utils.data import DataLoader

import infoshape
from infoshape.datasets import ImageTensorDataset, load_digits


@pytest.fixture(scope="module")
def splits() -> dict[str, ImageTensorDataset]:
    return {split: load_digits(split) for split in ("train", "test")}


def test_sizes_shapes_and_types(splits):
    assert (len(splits["train"]), len(splits["test"])) == (1437, 360)
    for dataset in splits.values():
        x, y = dataset[0]
        assert x.shape == (1, 8, 8) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and y.ndim == 0
        assert dataset.targets.dtype == torch.int64
        assert dataset.data.shape == (len(dataset), 1, 8, 8)
        assert float(dataset.data.min()) == 0.0 and float(dataset.data.max()) == 1.0


def test_pixels_are_sklearn_images_over_16(splits):
    bunch = sklearn_load_digits()
    for dataset in splits.values():
        rows = dataset.source_index.numpy()
        expected = torch.tensor(bunch.images[rows] / 16.0, dtype=torch.float32).unsqueeze(1)
        torch.testing.assert_close(dataset.data, expected, rtol=0, atol=0)
        np.testing.assert_array_equal(dataset.targets.numpy(), bunch.target[rows])
        x, y = dataset[5]
        torch.testing.assert_close(x, expected[5], rtol=0, atol=0)
        assert int(y) == bunch.target[rows[5]]


def test_split_is_a_stratified_partition(splits):
    train_rows = set(splits["train"].source_index.tolist())
    test_rows = set(splits["test"].source_index.tolist())
    assert not train_rows & test_rows
    assert train_rows | test_rows == set(range(1797))
    # 360 of 1797 is 20.03 %; each class (174..183 images) has 35..37 test images when stratified
    counts = torch.bincount(splits["test"].targets, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37, counts


def test_split_is_deterministic(splits):
    again = load_digits("test")
    assert torch.equal(again.source_index, splits["test"].source_index)
    assert torch.equal(again.data, splits["test"].data)
    again.data[0] += 1  # a fresh copy: mutating it leaves later loads intact
    assert torch.equal(load_digits("test").data, splits["test"].data)


def test_unknown_split_is_refused():
    with pytest.raises(infoshape.ConfigError, match="no split 'val'") as info:
        load_digits("val")
    assert "'train' or 'test'" in str(info.value)


def test_batches_collate(splits):
    x, y = next(iter(DataLoader(splits["train"], batch_size=16)))
    assert x.shape == (16, 1, 8, 8) and y.shape == (16,) and y.dtype == torch.int64
