"""The third-party plugin example: a real pip install, discovery by entry point, its own tests.

``examples/third_party_plugin`` is copied to a temporary folder (so the build
writes nothing into the repository), pip-installed into a temporary target folder
(``pip install --target``: never into the shared environment, so that parallel
pytest-xdist workers, each with its own install, cannot uninstall it from under
each other) and exercised in fresh subprocesses that have that folder on
``PYTHONPATH`` (as a user's environment would). Its own test suite runs here too,
in a subprocess against the installed package (the main pytest does not collect it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "third_party_plugin"
DIST = "infoshape-unitstats"

pytestmark = pytest.mark.slow


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300
    )


class Installed(NamedTuple):
    """The copied example and the environment of a process that sees its installed package."""

    source: Path
    env: dict[str, str]


def _python(code: str, installed: Installed) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=installed.source.parent,
        env=installed.env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    """The example, copied and pip-installed into its own target folder (deleted with tmp)."""
    root = tmp_path_factory.mktemp("third_party")
    source, site = root / "third_party_plugin", root / "site"
    shutil.copytree(
        EXAMPLE,
        source,
        ignore=shutil.ignore_patterns(
            "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis"
        ),
    )
    done = _pip(
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--no-input",
        "--target",
        str(site),
        str(source),
    )
    assert done.returncode == 0, f"pip install failed:\n{done.stdout}\n{done.stderr}"
    path = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    return Installed(source, {**os.environ, "PYTHONPATH": path})


def test_install_wrote_nothing_into_the_repository(installed):
    leftovers = [p.name for p in EXAMPLE.iterdir() if p.name == "build" or p.suffix == ".egg-info"]
    leftovers += [p.name for p in (EXAMPLE / "src").iterdir() if p.suffix == ".egg-info"]
    assert leftovers == []


def test_entry_point_is_discovered_and_loads(installed):
    done = _python(
        """
        import json
        from importlib.metadata import distribution
        import infoshape
        from infoshape.plugin_manager import installed_plugins

        eps = installed_plugins()
        manager = infoshape.build_plugin_manager(enable=["unit_stats"])
        info = manager.infos["unit_stats"]
        print(json.dumps({
            "listed": sorted(eps),
            "value": eps["unit_stats"].value,
            "dist": eps["unit_stats"].dist.name,
            "requires": distribution("infoshape-unitstats").requires,
            "version": info.version,
            "hooks": info.hooks,
            "type": type(info.plugin).__name__,
        }))
        """,
        installed,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert "unit_stats" in found["listed"]
    assert found["value"] == "infoshape_unitstats:UnitStats"
    assert found["dist"] == DIST and found["version"] == "0.1.0"
    assert "infoshape" in found["requires"]  # plus the optional test extras
    assert found["type"] == "UnitStats"
    assert set(found["hooks"]) == {"infoshape_configure", "infoshape_taps", "infoshape_metrics"}


def test_cli_lists_the_plugin(installed):
    script = Path(sys.executable).with_name("infoshape")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "infoshape"]
    done = subprocess.run(
        [*command, "plugins"],
        capture_output=True,
        text=True,
        cwd=installed.source.parent,
        env=installed.env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    line = next(row for row in done.stdout.splitlines() if row.split()[:1] == ["unit_stats"])
    assert DIST in line and "0.1.0" in line


def test_session_emits_its_metrics(installed):
    done = _python(
        """
        import json
        from collections import OrderedDict
        import torch
        from torch import nn
        import infoshape

        torch.manual_seed(0)
        model = nn.Sequential(OrderedDict(
            fc1=nn.Linear(6, 5), relu1=nn.ReLU(), fc2=nn.Linear(5, 3), relu2=nn.ReLU()))
        x, y = torch.randn(24, 6), torch.randint(0, 3, (24,))
        with infoshape.Session(model, plugins=["unit_stats"],
                               options={"unit_stats": {"every_step": True}}) as s:
            opt = torch.optim.SGD(s.model.parameters(), lr=0.1)
            loss = s.loss(s.model(x), y)
            loss.backward(); opt.step(); opt.zero_grad()
            s.step_end()
            metrics = s.epoch_end(probe=(x, y))
        print(json.dumps({k: getattr(v, "tolist", lambda: v)() for k, v in metrics.items()}))
        """,
        installed,
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    for capture, width in (("relu1", 5), ("relu2", 3)):
        prefix = f"unit_stats.{capture}."
        assert 0.0 <= metrics[prefix + "active_fraction"] <= 1.0
        assert 0.0 <= metrics[prefix + "dead_units"] <= 1.0
        assert metrics[prefix + "mean"] >= 0.0  # ReLU outputs
        assert len(metrics[prefix + "unit_mean"]) == width


def test_the_plugins_own_tests_pass(installed):
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        capture_output=True,
        text=True,
        cwd=installed.source,
        env=installed.env,
        timeout=600,
    )
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    assert " passed" in done.stdout
