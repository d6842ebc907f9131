"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision, from a local root only.

No loader downloads (``download=False`` always): the files must already lie
under the root the user gives (``--data-root``). When they do not, the loader
raises :class:`~infoshape.DatasetNotFoundError` listing the exact paths
torchvision reads and how to put them there. MNIST-style files distributed
gzipped (``*.gz``) are decompressed beside themselves first, as torchvision's
own download step would.

Images are read once by torchvision's classes and kept as ``uint8``; items are
``float32`` in ``[0, 1]`` (torchvision's ``ToTensor``) with ``int64`` labels.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from infoshape.datasets.idx import mnist_file_names
from infoshape.datasets.image_tensors import ImageTensorDataset, check_split
from infoshape.errors import DatasetNotFoundError

__all__ = [
    "CIFAR10_FILES",
    "CIFAR10_FOLDER",
    "load_cifar10",
    "load_fashion_mnist",
    "load_mnist",
]

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = (*(f"data_batch_{k}" for k in range(1, 6)), "test_batch", "batches.meta")
_MNIST_FILES = (*mnist_file_names("train"), *mnist_file_names("test"))
_FIX_COPY = (
    "download them on a machine with internet access (e.g. torchvision.datasets.{cls}"
    "(root, download=True)), copy them to the paths above, and pass --data-root DIR "
    "(data_root in a config file)"
)


def _require_root(name: str, root: str | Path | None, expected: str, cls: str) -> Path:
    if root is None:
        raise DatasetNotFoundError(
            f"data set {name!r} needs a local root folder holding its files",
            expected=expected,
            got="no root (data_root is None)",
            fix=_FIX_COPY.format(cls=cls),
        )
    return Path(root).expanduser()


def _gunzip_missing(raw: Path, names: Sequence[str]) -> None:
    """Decompress ``<name>.gz`` into ``<name>`` where only the archive is present."""
    for name in names:
        target, archive = raw / name, raw / f"{name}.gz"
        if not target.is_file() and archive.is_file():
            try:
                with gzip.open(archive, "rb") as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
            except OSError as err:
                target.unlink(missing_ok=True)
                raise DatasetNotFoundError(
                    f"cannot decompress {archive}",
                    expected=f"a readable gzip file and a writable folder {raw}",
                    got=repr(err),
                    fix=f"decompress it yourself: gunzip -k {archive}",
                ) from err


def _load_mnist_like(
    name: str, cls_name: str, split: str, root: str | Path | None
) -> ImageTensorDataset:
    check_split(name, split)
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    raw_text = f"<root>/{cls_name}/raw"
    expected = f"{raw_text}/ holding {', '.join(_MNIST_FILES)} (each may be gzipped, *.gz)"
    base = _require_root(name, root, expected, cls_name)
    raw = base / cls_name / "raw"
    _gunzip_missing(raw, _MNIST_FILES)
    missing = [f for f in _MNIST_FILES if not (raw / f).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"data set {name!r} is not under {base}",
            expected=expected,
            got=f"missing in {raw}: {', '.join(missing)}",
            fix=_FIX_COPY.format(cls=cls_name),
        )
    try:
        source = cls(str(base), train=split == "train", download=False)
    except (RuntimeError, ValueError, TypeError, AssertionError) as err:
        raise DatasetNotFoundError(
            f"torchvision cannot read data set {name!r} under {base}",
            expected=f"valid IDX files in {raw}",
            got=repr(err),
            fix="replace the files by fresh copies (infoshape.datasets.write_mnist_idx "
            "writes valid ones)",
        ) from err
    return ImageTensorDataset(
        source.data.unsqueeze(1),
        source.targets,
        scale=255.0,
        name=name,
        split=split,
        classes=list(source.classes),
    )


def load_mnist(split: str, root: str | Path | None) -> ImageTensorDataset:
    """MNIST (60,000 train / 10,000 test 28×28 digits) from ``<root>/MNIST/raw``.

    Returns:
        items ``(x, y)``: ``x`` float32 ``(1, 28, 28)`` in ``[0, 1]``, ``y`` int64.

    Raises:
        DatasetNotFoundError: the four IDX files are not under ``<root>/MNIST/raw``.
    """
    return _load_mnist_like("mnist", "MNIST", split, root)


def load_fashion_mnist(split: str, root: str | Path | None) -> ImageTensorDataset:
    """Fashion-MNIST (60,000 / 10,000 28×28 clothing images) from ``<root>/FashionMNIST/raw``.

    Raises:
        DatasetNotFoundError: the four IDX files are not under ``<root>/FashionMNIST/raw``.
    """
    return _load_mnist_like("fashion_mnist", "FashionMNIST", split, root)


def load_cifar10(split: str, root: str | Path | None) -> ImageTensorDataset:
    """CIFAR-10 (50,000 / 10,000 32×32 colour images) from ``<root>/cifar-10-batches-py``.

    Returns:
        items ``(x, y)``: ``x`` float32 ``(3, 32, 32)`` in ``[0, 1]``, ``y`` int64.

    Raises:
        DatasetNotFoundError: the python-version batches are missing or fail torchvision's
            MD5 check.
    """
    check_split("cifar10", split)
    folder_text = f"<root>/{CIFAR10_FOLDER}"
    expected = f"{folder_text}/ holding {', '.join(CIFAR10_FILES)}"
    base = _require_root("cifar10", root, expected, "CIFAR10")
    folder = base / CIFAR10_FOLDER
    missing = [f for f in CIFAR10_FILES if not (folder / f).is_file()]
    if missing:
        archive = base / "cifar-10-python.tar.gz"
        raise DatasetNotFoundError(
            f"data set 'cifar10' is not under {base}",
            expected=expected,
            got=f"missing in {folder}: {', '.join(missing)}",
            fix=(
                f"extract the archive there: tar -xzf {archive} -C {base}"
                if archive.is_file()
                else _FIX_COPY.format(cls="CIFAR10")
            ),
        )
    import torchvision

    try:
        source = torchvision.datasets.CIFAR10(str(base), train=split == "train", download=False)
    except RuntimeError as err:
        raise DatasetNotFoundError(
            f"data set 'cifar10' under {base} is corrupted",
            expected=f"the original files in {folder} (torchvision checks their MD5 sums)",
            got=str(err),
            fix=_FIX_COPY.format(cls="CIFAR10"),
        ) from err
    data = torch.from_numpy(source.data).permute(0, 3, 1, 2).contiguous()
    return ImageTensorDataset(
        data,
        torch.as_tensor(source.targets, dtype=torch.int64),
        scale=255.0,
        name="cifar10",
        split=split,
        classes=list(source.classes),
    )
