"""``infoshape compare`` and the report of a sweep's folder, on a real 4-cell sweep.

The sweep trains 2 groups (cr at coefficients 0.001 and 1) x 2 seeds of a tiny mlp
for 2 epochs, and each cell is analyzed with the binning estimator. The table is
checked against numpy's mean and std (ddof=1) of values read from each store with
xarray alone (not through open_runs or compare).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import xarray as xr
from matplotlib.image import imread

from infoshape.apps.analysis import analyze
from infoshape.apps.cli import main
from infoshape.apps.compare import compare
from infoshape.apps.sweep import SweepConfig, run_sweep
from infoshape.errors import ConfigError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GROUPS = {("cr", 0.001): ["cr-0.001-seed0", "cr-0.001-seed1"],
          ("cr", 1.0): ["cr-1-seed0", "cr-1-seed1"]}  # fmt: skip


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "sw"
    base = {
        "model": "mlp", "dataset": "digits", "epochs": 2, "batch_size": 128, "lr": 0.01,
        "model_options": {"hidden": [8]}, "probe_size": 40, "progress": False,
    }  # fmt: skip
    grid = {"out": str(out), "seeds": [0, 1], "plugins": ["cr"], "coefficients": [0.001, 1.0]}
    config = SweepConfig.from_mapping({**base, "sweep": {**grid, "baseline": False}})
    result = run_sweep(config, progress=False, log=lambda _: None)
    assert result.failed == {} and len(result.ran) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the estimator's assumption notes on 40 samples
        for cell in result.ran:
            analyze(out / "cells" / f"{cell}.zarr", "binning", progress=False, n_bins=4)
    return out


def _by_hand(sweep, group, variable):
    """``variable`` at each cell's last epoch, read with xarray alone."""
    values = []
    for cell in GROUPS[("cr", 0.001)] + GROUPS[("cr", 1.0)]:
        tree = xr.open_datatree(sweep / "cells" / f"{cell}.zarr", engine="zarr")
        values.append(tree[group].to_dataset()[variable].isel(epoch=-1).values)
    return np.asarray(values)


def test_table_is_mean_and_std_over_seeds_per_group(sweep):
    comparison, written = compare(sweep, ["test_accuracy", "I_TY"], analysis="binning")
    assert comparison.by == ("plugin", "coefficient")
    assert comparison.columns == ("test.accuracy", "I_TY[relu1]")
    assert [(key, runs) for key, runs, _ in comparison.rows] == [
        (key, tuple(names)) for key, names in GROUPS.items()
    ]
    accuracy = _by_hand(sweep, "metrics", "test.accuracy")
    i_ty = _by_hand(sweep, "analysis/binning", "I_TY")[:, 0]  # the one tap, relu1
    for k, (_, _, stats) in enumerate(comparison.rows):
        for column, values in (("test.accuracy", accuracy), ("I_TY[relu1]", i_ty)):
            mine = values[2 * k : 2 * k + 2]
            mean, std, n = stats[column]
            assert n == 2
            assert mean == pytest.approx(np.mean(mine), rel=1e-12)
            assert std == pytest.approx(np.std(mine, ddof=1), rel=1e-12)
    means = [stats["test.accuracy"][0] for _, _, stats in comparison.rows]
    assert means[0] != means[1]  # the groups differ, so a mixed-up grouping would show
    lines = comparison.to_text().splitlines()
    assert lines[1].split()[:4] == ["cr", "0.001", "2", f"{means[0]:.4g}"] and "±" in lines[1]
    (figure,) = written
    assert figure == sweep / "compare" / "test.accuracy+I_TY.png"
    assert figure.read_bytes().startswith(PNG_MAGIC)
    height, width, _ = imread(figure).shape
    assert width > 2.5 * height  # 3 panels in a row: accuracy, I_TY, the information plane


def test_bad_names_are_refused_with_what_exists(sweep, tmp_path):
    with pytest.raises(ConfigError, match="no metric 'accuracy'") as err:
        compare(sweep, "accuracy", figure=False)
    assert "test.accuracy" in str(err.value) and "train.loss" in str(err.value)
    assert "--analysis NAME (binning): I_XT, I_TY" in str(err.value)
    with pytest.raises(ConfigError, match="no analysis 'kl'") as err:
        compare(sweep, "I_XT", analysis="kl", figure=False)
    assert "binning" in str(err.value)
    with pytest.raises(ConfigError, match="cannot group runs by colour"):
        compare(sweep, "test.accuracy", by=["plugin", "colour"], figure=False)


def test_compare_command_in_a_subprocess(sweep, tmp_path, capsys):
    out, table = tmp_path / "fig" / "acc.png", tmp_path / "t.csv"
    child = subprocess.run(
        [sys.executable, "-m", "infoshape", "compare", str(sweep / "cells" / "*.zarr"),
         "--metric", "test.accuracy", "--metric", "train.loss", "--by", "coefficient",
         "--out", str(out), "--csv", str(table), "--json", str(tmp_path / "t.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    assert child.stdout.splitlines()[0].split() == [
        "coefficient",
        "n",
        "test.accuracy",
        "train.loss",
    ]
    assert f"wrote {out}" in child.stdout and out.read_bytes().startswith(PNG_MAGIC)
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    accuracy = _by_hand(sweep, "metrics", "test.accuracy")
    got = {r["coefficient"]: float(r["mean"]) for r in rows if r["metric"] == "test.accuracy"}
    assert got == pytest.approx({"0.001": accuracy[:2].mean(), "1": accuracy[2:].mean()})
    groups = json.loads((tmp_path / "t.json").read_text())["groups"]
    assert [g["coefficient"] for g in groups] == [0.001, 1.0] and groups[0]["runs"][0] == (
        "cr-0.001-seed0"
    )
    assert main(["compare", str(sweep), "--metric", "nope", "--no-figure"]) == 2
    err = capsys.readouterr().err
    assert "no metric 'nope'" in err and "test.accuracy" in err and "Traceback" not in err


def test_report_of_a_sweep_folder_links_the_comparison(sweep, capsys):
    assert main(["report", str(sweep)]) == 0
    printed = capsys.readouterr().out.split()
    folder = sweep / "report"
    names = ["metrics.png", "information_plane_binning.png", "comparison.md", "index.md"]
    assert printed == [str(folder / n) for n in names]
    for name in names[:2]:
        assert (folder / name).read_bytes().startswith(PNG_MAGIC)
    index = (folder / "index.md").read_text()
    assert "![metrics](metrics.png)" in index
    assert "![information_plane_binning](information_plane_binning.png)" in index
    assert "[summary.md](../summary.md)" in index and (sweep / "summary.md").is_file()
    table = (folder / "comparison.md").read_text()
    assert table in index and "| cr | 0.001 | 2 |" in table and "| cr | 1 | 2 |" in table
