"""The example script under test: ``test_<name>.py`` loads ``examples/<name>.py``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def script(request: pytest.FixtureRequest) -> ModuleType:
    """The example module named after the test module (``test_reproduce_irnn`` → ...)."""
    name = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The scripts' ``main`` sets ``torch.set_num_threads`` (``--threads``): undo it after each
    test, or later tests in this process run with another thread count (and other round-off)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
