"""Every public name is exported and documented; every error type is exported at top level."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

import infoshape
from infoshape import errors

ROOT = Path(__file__).resolve().parents[2]


def _modules(folder: str, package: str) -> list[str]:
    names = [package]
    for path in sorted((ROOT / folder).rglob("*.py")):
        parts = path.relative_to(ROOT / folder).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and parts[-1] != "__main__" and not any(p.startswith("_") for p in parts):
            names.append(".".join((package, *parts)))
    return sorted(set(names))


MODULES = _modules("core", "infoshape") + _modules("plugins", "infoshape.plugins")


def _undocumented(owner: object, names: list[str]) -> list[str]:
    missing = []
    for name in names:
        obj = getattr(owner, name)
        if (inspect.isclass(obj) or inspect.isroutine(obj)) and not (obj.__doc__ or "").strip():
            missing.append(name)
        if inspect.isclass(obj) and obj.__module__.startswith("infoshape"):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not (
                    inspect.isroutine(member) or isinstance(member, property)
                ):
                    continue
                if not (getattr(member, "__doc__", None) or "").strip():
                    missing.append(f"{name}.{attr}")
    return missing


def test_top_level_names_exist_and_are_documented():
    names = [n for n in infoshape.__all__ if n != "__version__"]
    assert [n for n in names if not hasattr(infoshape, n)] == []
    assert _undocumented(infoshape, names) == []
    assert len(set(infoshape.__all__)) == len(infoshape.__all__)


@pytest.mark.parametrize("name", MODULES)
def test_module_has_docstring_and_documented_all(name):
    module = importlib.import_module(name)
    assert (module.__doc__ or "").strip(), f"{name} has no module docstring"
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert [n for n in exported if not hasattr(module, n)] == [], f"{name}.__all__ names missing"
    assert _undocumented(module, list(exported)) == [], f"{name} exports undocumented names"


def test_every_error_type_is_exported_at_top_level():
    types = [
        obj
        for name, obj in vars(errors).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == errors.__name__
        and not name.startswith("_")
    ]
    assert len(types) >= 10
    missing = [t.__name__ for t in types if getattr(infoshape, t.__name__, None) is not t]
    assert missing == [], f"errors not exported by infoshape: {missing}"
    assert [t.__name__ for t in types if t.__name__ not in infoshape.__all__] == []
