"""Every entry point loads; every plugin module has an entry point.

That every plugin module has its tests is tests/meta/test_tests_mirror.py's rule.
"""

from __future__ import annotations

import importlib.metadata as metadata
import tomllib
from pathlib import Path

import pytest

import infoshape
from infoshape.plugin_manager import ENTRY_POINT_GROUP

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINTS = sorted(
    metadata.distribution("infoshape").entry_points.select(group=ENTRY_POINT_GROUP),
    key=lambda ep: ep.name,
)
PLUGIN_MODULES = sorted(
    [p.stem for p in (ROOT / "plugins").glob("*.py") if p.stem != "__init__"]
    + [p.parent.name for p in (ROOT / "plugins").glob("*/__init__.py")]
)


def test_installed_entry_points_match_pyproject():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = declared["project"]["entry-points"][ENTRY_POINT_GROUP]
    installed = {ep.name: ep.value for ep in ENTRY_POINTS}
    assert installed == wanted, (
        "the installed metadata differs from pyproject.toml; run `pip install -e .` again"
    )


@pytest.mark.parametrize("ep", ENTRY_POINTS, ids=lambda ep: ep.name)
def test_entry_point_loads_and_registers(ep):
    assert ep.load() is not None
    manager = infoshape.build_plugin_manager(enable=[ep.name])
    info = manager.infos[ep.name]
    assert info.hooks, f"{ep.name} implements no hook"
    assert info.distribution == "infoshape"


@pytest.mark.parametrize("module", PLUGIN_MODULES)
def test_plugin_module_has_an_entry_point(module):
    dotted = f"infoshape.plugins.{module}"
    users = [
        ep.name for ep in ENTRY_POINTS if ep.module == dotted or ep.module.startswith(dotted + ".")
    ]
    assert users, f"plugins/{module} is referenced by no entry point in pyproject.toml"
