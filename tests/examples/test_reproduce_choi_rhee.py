"""The Choi–Rhee reproduction script runs end to end in its --quick form."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import attrs

from infoshape.apps.sweep import SweepConfig


def test_quick_run_writes_the_table_from_the_sweep_stores(tmp_path, script):
    assert script.main(["--quick", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "results.md").read_text()
    for name in ("| Baseline |", "| CR |", "| L1R |", "| RR |", "Error (%)", "Sparsity"):
        assert name in text
    assert "Rank Z (stable" in text and "Rank C (stable" in text
    payload = json.loads((tmp_path / "results.json").read_text())
    assert set(payload["results"]) == {"Baseline", "CR", "L1R", "RR"}
    assert {"stable_rank", "stable_rank_cov"} <= set(payload["results"]["RR"])
    checks = payload["checks"]
    assert len(checks) == 4 and all("baseline" in c for c in checks)
    assert sum("RR lowers the stable rank of" in c for c in checks) == 2
    assert (tmp_path / "characteristics.png").stat().st_size > 0
    assert len(list((tmp_path / "sweep" / "cells").glob("*.zarr"))) == 4


def test_the_shipped_toml_is_the_scripts_grid(script):
    """``infoshape sweep --config examples/choi_rhee_sweep.toml`` runs the script's cells."""
    path = Path(script.__file__).with_name("choi_rhee_sweep.toml")
    with path.open("rb") as f:
        from_file = SweepConfig.from_mapping(tomllib.load(f))
    from_script = script.sweep_config(Path("examples/results/choi_rhee"), quick=False)
    assert attrs.asdict(from_file) == attrs.asdict(from_script)
