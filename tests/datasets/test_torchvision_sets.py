"""MNIST / Fashion-MNIST / CIFAR-10 from a local root: real IDX roots, precise errors."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

import infoshape
from infoshape.datasets import load_cifar10, load_digits, write_mnist_idx


def _digits_as_mnist(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n digits of a split, upsampled 8x8 -> 28x28 (bilinear), as uint8 0..255."""
    dataset = load_digits(split)
    big = F.interpolate(dataset.data[:n], size=(28, 28), mode="bilinear", align_corners=False)
    images = (big.squeeze(1) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return images, dataset.targets[:n].numpy()


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    root = tmp_path_factory.mktemp("data")
    written = {"train": _digits_as_mnist("train", 120), "test": _digits_as_mnist("test", 40)}
    for split, (images, labels) in written.items():
        write_mnist_idx(root, images, labels, split)
    return root, written


@pytest.mark.parametrize("split", ["train", "test"])
def test_idx_root_loads_through_torchvision(mnist_root, split):
    root, written = mnist_root
    images, labels = written[split]
    dataset = infoshape.get_dataset("mnist").load(split, root)
    assert len(dataset) == len(labels)
    assert dataset.targets.dtype == torch.int64
    np.testing.assert_array_equal(dataset.targets.numpy(), labels)
    x, y = dataset[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and int(y) == labels[3]
    # pixel values: exactly uint8 / 255, as torchvision's ToTensor gives
    torch.testing.assert_close(x, torch.from_numpy(images[3]).float().div(255).unsqueeze(0))
    reference = torchvision.datasets.MNIST(
        str(root), train=split == "train", transform=torchvision.transforms.ToTensor()
    )
    for i in (0, len(labels) - 1):
        torch.testing.assert_close(dataset[i][0], reference[i][0], rtol=0, atol=0)
        assert int(dataset[i][1]) == reference[i][1]


def test_gzipped_fashion_mnist_root_is_decompressed(tmp_path):
    for split in ("train", "test"):
        images, labels = _digits_as_mnist(split, 10)
        paths = write_mnist_idx(
            tmp_path, images, labels, split, folder="FashionMNIST", compress=True
        )
        assert all(p.suffix == ".gz" for p in paths)
        assert gzip.decompress(paths[1].read_bytes())[:4] == bytes([0, 0, 8, 1])
    dataset = infoshape.get_dataset("fashion_mnist").load("test", tmp_path)
    assert len(dataset) == 10 and dataset[0][0].shape == (1, 28, 28)
    assert (tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()


def test_missing_mnist_files_are_named(tmp_path):
    write_mnist_idx(tmp_path, *_digits_as_mnist("train", 4), "train")  # test files missing
    with pytest.raises(infoshape.DatasetNotFoundError) as info:
        infoshape.get_dataset("mnist").load("train", tmp_path)
    message = str(info.value)
    assert f"data set 'mnist' is not under {tmp_path}" in message
    assert "<root>/MNIST/raw/" in message and "train-images-idx3-ubyte" in message
    assert "missing in" in message and "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte" in message
    assert "(each may be gzipped, *.gz)" in message
    assert "--data-root" in message and "download=True" in message
    assert isinstance(info.value, FileNotFoundError)


def test_no_root_says_to_pass_one():
    with pytest.raises(infoshape.DatasetNotFoundError, match="needs a local root") as info:
        infoshape.get_dataset("fashion_mnist").load("train", None)
    assert "FashionMNIST/raw" in str(info.value) and "--data-root" in str(info.value)


def test_missing_cifar10_names_the_batches(tmp_path):
    with pytest.raises(infoshape.DatasetNotFoundError) as info:
        load_cifar10("train", tmp_path)
    message = str(info.value)
    assert "<root>/cifar-10-batches-py/" in message and "data_batch_1" in message
    assert "test_batch" in message and "batches.meta" in message and "--data-root" in message


def test_cifar10_archive_present_suggests_extracting(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(infoshape.DatasetNotFoundError, match="tar -xzf"):
        load_cifar10("test", tmp_path)


def test_corrupted_cifar10_fails_the_md5_check(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}
    for name in (*(f"data_batch_{k}" for k in range(1, 6)), "test_batch", "batches.meta"):
        (folder / name).write_bytes(pickle.dumps(batch))
    with pytest.raises(infoshape.DatasetNotFoundError, match="corrupted") as info:
        load_cifar10("test", tmp_path)
    assert "MD5" in str(info.value)


def test_unknown_split_is_refused(mnist_root):
    with pytest.raises(infoshape.ConfigError, match="no split 'validation'"):
        infoshape.get_dataset("mnist").load("validation", mnist_root[0])


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (np.full((2, 4, 4), 0.5), [0, 1], "cannot be stored"),
        (np.full((2, 4, 4), 300), [0, 1], "values 300..300"),
        (np.zeros((2, 16)), [0, 1], "of shape"),
        (np.zeros((2, 4, 4)), [0, 1, 2], "differ in length"),
    ],
)
def test_write_mnist_idx_refuses_non_bytes(tmp_path, images, labels, match):
    with pytest.raises(infoshape.ConfigError, match=match):
        write_mnist_idx(tmp_path, images, labels, "train")


def test_idx_header_layout(tmp_path):
    images = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    image_path, label_path = write_mnist_idx(tmp_path, images, [7, 9], "test")
    assert image_path.name == "t10k-images-idx3-ubyte"
    data = image_path.read_bytes()
    assert data[:4] == bytes([0, 0, 0x08, 3])
    assert np.frombuffer(data[4:16], ">u4").tolist() == [2, 3, 5]
    assert data[16:] == images.tobytes()
    assert label_path.read_bytes() == bytes([0, 0, 0x08, 1, 0, 0, 0, 2, 7, 9])
