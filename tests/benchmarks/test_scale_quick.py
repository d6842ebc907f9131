"""``benchmarks/scale.py --quick``: the scale benchmark's code path on a tiny grid.

Runs the script as a subprocess (a real 2-worker ``LocalCluster``, a real moto S3
endpoint on 127.0.0.1) and checks the JSON it writes: the cluster's sweep summaries and
analysis values equal the serial ones (the summaries exactly at the workers' torch thread
count), and every timing is there. The figures themselves
are not asserted (a tiny grid on a shared machine measures the start-up, not the scaling).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scale.py"


@pytest.mark.slow
def test_quick_run_writes_identical_results_and_every_timing(tmp_path):
    out = tmp_path / "scale.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["workers"] == 2
    assert report["torch_threads_per_worker"] == [max(1, (os.cpu_count() or 1) // 2)]
    sweep, analysis = report["sweep"], report["analyze"]
    assert sweep["cells"] == 4 and sweep["cluster_s"] > 0
    serial = sweep["serial"]  # torch's default thread count, and 1 (the workers' count here)
    assert set(serial) == {str(report["torch_threads_serial"]), "1"}
    assert serial["1"]["max_rel_diff"] == 0  # the same threads: the same summaries, exactly
    for row in serial.values():
        assert row["serial_s"] > 0 and row["ratio"] > row["ratio_warm"] > 0  # start counted
    assert analysis["runs"] == 4 and analysis["identical_values"] is True
    assert analysis["serial_s"] > 0 and analysis["cluster_s"] > 0 and analysis["ratio"] > 0
    s3 = report["s3"]
    assert s3["local_ms"] > 0 and s3["s3_ms"] > 0 and s3["slab_shape"] == [60, 8]
    assert "sweep: 4 cells" in done.stdout and "analyze: 4 runs" in done.stdout
