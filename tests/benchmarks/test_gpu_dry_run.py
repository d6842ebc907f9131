"""``benchmarks/gpu.py --dry-run``: the GPU benchmark's code path, at tiny sizes on the CPU.

Runs the script as a subprocess (as a user would before renting a GPU) and checks that it
exits 0 and writes one JSON row per model × configuration, and that on the CPU counter
(:func:`infoshape.testing.count_host_syncs`) no training step reads a value back except
the step that flushes the buffered metrics, once per ``log_every`` window.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.py"
MODELS = ("resnet18", "vit")
CONFIGS = ["bare", "session"]
CONFIGS += [
    f"plugin {p}"
    for p in (
        *("shade", "cr", "cw_cr", "vr", "cw_vr", "l1r", "rr", "cw_rr"),
        *("irnn", "l1w", "l2w", "mi_ce", "information_dropout"),
    )
]
CONFIGS += ["capture", "stream"]
# mi_ce's σ search reads its candidates back in every step (reported, not yet sync-free)
KNOWN_SYNCS = {"plugin mi_ce"}


@pytest.mark.slow
def test_dry_run_writes_a_row_per_model_and_configuration_without_step_syncs(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["device"] == "cpu"
    assert report["skipped"] == {}
    rows = {(r["model"], r["mode"], r["config"]): r for r in report["rows"]}
    assert sorted(rows) == sorted((m, "eager", c) for m in MODELS for c in CONFIGS)
    window = report["log_every"]
    for (model, _, config), row in rows.items():
        assert row["ms_per_step"] > 0 and row["ratio_to_bare"] > 0, (model, config)
        syncs = row["syncs_by_step"]
        assert len(syncs) == window
        if config in KNOWN_SYNCS:
            continue
        flush = 0 if config == "bare" else 1  # the session's one read-back per window
        assert syncs == [0] * (window - 1) + [flush], (model, config, syncs)
        assert row["sync_goal_met"] is True
    assert "plugin shade" in done.stdout and "wrote" in done.stderr
