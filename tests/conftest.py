"""Shared fixtures: small seeded models and data, and fake entry-point distributions."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn


class SmallMLP(nn.Sequential):
    """Linear-ReLU-Linear-ReLU-Linear with readable module names."""

    def __init__(self, d_in: int = 8, hidden: int = 16, n_classes: int = 3) -> None:
        super().__init__()
        self.add_module("fc1", nn.Linear(d_in, hidden))
        self.add_module("relu1", nn.ReLU())
        self.add_module("fc2", nn.Linear(hidden, hidden))
        self.add_module("relu2", nn.ReLU())
        self.add_module("out", nn.Linear(hidden, n_classes))


@pytest.fixture
def mlp() -> SmallMLP:
    torch.manual_seed(0)
    return SmallMLP()


@pytest.fixture
def make_mlp():
    """A factory of small MLPs (seeded by the caller's seed argument)."""

    def make(seed: int = 0) -> SmallMLP:
        torch.manual_seed(seed)
        return SmallMLP()

    return make


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)


@pytest.fixture
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Make a real installed distribution (dist-info on sys.path) with given modules.

    Returns a function ``make(name, entry_points: dict, modules: dict[str, str])``.
    """

    def make(dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
        site = tmp_path / f"site-{dist}"
        info = site / f"{dist}-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
        (info / "entry_points.txt").write_text(f"[infoshape.plugins]\n{lines}\n")
        for module, source in modules.items():
            (site / f"{module}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(site))
        return site

    return make


@pytest.fixture
def hf_trainer_without_shadowed_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the Hugging Face Trainer from taking the repository's ``datasets/`` for HF's.

    ``python -m pytest`` puts the repository on ``sys.path``; its ``datasets/`` folder (the
    source of ``infoshape.datasets``) then imports as a namespace package ``datasets`` that
    the Trainer would take for Hugging Face ``datasets`` (and fail on ``datasets.Dataset``).
    """
    import importlib

    try:
        import transformers.trainer
    except ImportError:  # nothing to guard
        return
    try:
        real = hasattr(importlib.import_module("datasets"), "Dataset")
    except ImportError:
        real = False
    if not real:
        monkeypatch.setattr(transformers.trainer, "is_datasets_available", lambda: False)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible HTTP endpoint on 127.0.0.1 (moto's server mode), for this session.

    Yields the ``storage_options`` that reach it (as s3fs's own tests do). Started only
    by tests that ask for it; skipped where ``moto[server]`` or ``s3fs`` is missing.
    """
    import socket

    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
    }
    try:
        yield options
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    """A fresh bucket on :func:`s3_endpoint`: ``(url prefix, storage_options)``."""
    import re

    import s3fs

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") or "bucket"
    fs = s3fs.S3FileSystem(**s3_endpoint)
    fs.mkdir(name)
    fs.invalidate_cache()
    return f"s3://{name}", s3_endpoint
