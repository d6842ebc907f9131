"""infoshape sweep: the grid, resumability, the summary against the stores, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import attrs
import numpy as np
import pytest
import zarr

import infoshape
from infoshape.apps.sweep import SweepConfig, cell_status, run_sweep, summarize, weight_option
from infoshape.errors import ConfigError

BASE = {
    "model": "mlp",
    "dataset": "digits",
    "epochs": 1,
    "batch_size": 128,
    "model_options": {"hidden": [8, 8]},
    "probe_size": 60,
    "options": {"characteristics": {"bounds": ["lower"]}},
}


def _config(tmp_path, **grid):
    grid = {"out": str(tmp_path / "sw"), "measure": ["characteristics"], **grid}
    return SweepConfig.from_mapping({**BASE, "sweep": grid})


def test_grid_cells_and_their_settings(tmp_path):
    config = _config(
        tmp_path,
        seeds=[0, 1],
        plugins=["l1r"],
        coefficients=[0.01, 1],
        configurations={"bn": {"model_options": {"batch_norm": True}}},
    )
    cells = config.cells()
    assert [c.name for c in cells] == [
        "baseline-seed0", "baseline-seed1", "bn-seed0", "bn-seed1",
        "l1r-0.01-seed0", "l1r-0.01-seed1", "l1r-1-seed0", "l1r-1-seed1",
    ]  # fmt: skip
    bn, l1r = cells[2].settings, cells[6].settings
    assert bn["model_options"] == {"hidden": [8, 8], "batch_norm": True}
    assert l1r["plugins"] == ["characteristics", "l1r"] and l1r["seed"] == 0
    assert l1r["options"] == {"characteristics": {"bounds": ["lower"]}, "l1r": {"coefficient": 1.0}}
    assert cells[0].store == tmp_path / "sw" / "cells" / "baseline-seed0.zarr"
    with pytest.raises(ConfigError, match="unknown sweep setting 'seed'"):
        SweepConfig.from_mapping({"sweep": {"seed": [0]}})
    with pytest.raises(ConfigError, match="not unique"):
        _config(tmp_path, configurations={"baseline": {}}).cells()


def test_runs_resumes_and_summarizes_from_the_stores(tmp_path):
    config = _config(tmp_path, seeds=[0, 1], plugins=["l1r"], coefficients=[0.001])
    first = run_sweep(config, progress=False, log=lambda _: None)
    assert first.failed == {} and len(first.ran) == 4 and first.skipped == ()
    stores = {c.name: c.store for c in config.cells()}
    mtimes = {n: (p / "zarr.json").stat().st_mtime_ns for n, p in stores.items()}

    # a second invocation trains nothing: stores untouched
    second = run_sweep(config, progress=False, log=lambda _: None)
    assert second.ran == () and len(second.skipped) == 4
    assert {n: (p / "zarr.json").stat().st_mtime_ns for n, p in stores.items()} == mtimes

    # an interrupted cell (status still "running") is trained again, the others are not
    group = zarr.open_group(str(stores["l1r-0.001-seed1"]), mode="r+")
    group.attrs["status"] = "running"
    assert cell_status(config.cells()[3]) == "incomplete"
    third = run_sweep(config, progress=False, log=lambda _: None)
    assert third.ran == ("l1r-0.001-seed1",)
    assert cell_status(config.cells()[3]) == "complete"

    # the summary's numbers are the stores' last-epoch values, mean and sample std over seeds
    summary = summarize(tmp_path / "sw")
    assert summary.columns[0] == "test_error" and "sparsity" in summary.columns
    assert "I_zx_lower" in summary.columns and "I_zx_upper" not in summary.columns
    for group_name, n, stats in summary.rows:
        values = []
        for seed in (0, 1):
            metrics = infoshape.open_store(stores[f"{group_name}-seed{seed}"])["metrics"]
            accuracy = metrics["test.accuracy"].values
            sparsity = metrics["characteristics.relu2.sparsity"].values
            values.append(
                (100 * (1 - accuracy[~np.isnan(accuracy)][-1]), sparsity[~np.isnan(sparsity)][-1])
            )
        errors, sparsities = np.array(values).T
        assert n == 2
        assert stats["test_error"][0] == pytest.approx(errors.mean(), abs=1e-9)
        assert stats["test_error"][1] == pytest.approx(errors.std(ddof=1), abs=1e-9)
        assert stats["sparsity"][0] == pytest.approx(sparsities.mean(), abs=1e-12)
    markdown = (tmp_path / "sw" / "summary.md").read_text()
    assert markdown.startswith("| configuration | seeds | test_error |") and "l1r-0.001" in markdown
    rows = (tmp_path / "sw" / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("configuration,seeds,test_error_mean,test_error_std")
    assert float(rows[1].split(",")[2]) == pytest.approx(summary.rows[0][2]["test_error"][0])
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["cells"][0]["group"] == (
        "baseline"
    )


def test_changed_settings_make_a_finished_cell_stale(tmp_path):
    config = _config(tmp_path)
    run_sweep(config, progress=False, log=lambda _: None)
    grid = {"out": str(tmp_path / "sw"), "measure": ["characteristics"]}
    longer = SweepConfig.from_mapping({**BASE, "epochs": 2, "sweep": grid})
    assert cell_status(longer.cells()[0]) == "stale"
    assert cell_status(config.cells()[0]) == "complete"


def test_summary_of_a_single_seed_has_no_std(tmp_path):
    run_sweep(_config(tmp_path), progress=False, log=lambda _: None)
    (_, n, stats), = summarize(tmp_path / "sw").rows  # fmt: skip
    assert n == 1 and math.isnan(stats["test_error"][1])
    assert "±" not in (tmp_path / "sw" / "summary.md").read_text()
    with pytest.raises(ConfigError, match="no sweep"):
        summarize(tmp_path / "nothing")


def test_cli_help_in_a_subprocess():
    done = subprocess.run(
        [sys.executable, "-m", "infoshape", "sweep", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "infoshape sweep --plugin cr --plugin l1r --coefficient 0.01" in done.stdout
    assert "--configuration" in done.stdout and "[sweep.configurations.dropout]" in done.stdout


def test_cli_runs_a_grid_from_a_file_and_flags(tmp_path, capsys):
    from infoshape.apps.cli import main

    config = tmp_path / "sweep.toml"
    config.write_text(
        'model = "mlp"\nepochs = 1\nprobe_size = 40\n[model_options]\nhidden = [8]\n'
        f'[sweep]\nout = "{(tmp_path / "cli").as_posix()}"\nseeds = [3]\n'
    )
    argv = ["sweep", "--config", str(config), "--configuration", "bn:batch_norm=true"]
    argv += ["--measure", "characteristics"]
    argv += ["--option", "characteristics.bounds=[]", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 cells trained" in out and "| bn | 1 |" in out
    assert (tmp_path / "cli" / "cells" / "bn-seed3.zarr").is_dir()
    assert main([*argv, "--summary-only"]) == 0
    assert "| baseline | 1 |" in capsys.readouterr().out


# ------------------------------------------------------------------ weights and failures
def test_coefficient_sets_each_plugins_declared_weight_option(tmp_path):
    config = _config(tmp_path, plugins=["shade", "cr", "irnn", "information_dropout"])
    config = attrs.evolve(config, coefficients=(0.01,))
    options = {c.group: c.settings["options"] for c in config.cells()}
    assert options["shade-0.01"]["shade"] == {"beta": 0.01}
    assert options["cr-0.01"]["cr"] == {"coefficient": 0.01}
    assert options["irnn-0.01"]["irnn"] == {"alpha2": 0.01}
    assert options["information_dropout-0.01"]["information_dropout"] == {"beta": 0.01}
    assert weight_option("l2w") == "coefficient"
    # an explicit coefficient_option still wins, per plugin or for all
    named = _config(tmp_path, plugins=["shade"], coefficients=[1], coefficient_option="decay")
    assert named.cells()[1].settings["options"]["shade"] == {"decay": 1.0}
    with pytest.raises(ConfigError, match="'mi_ce' declares no weight option"):
        _config(tmp_path, plugins=["mi_ce"], coefficients=[0.1]).cells()


def test_every_cell_is_validated_before_the_first_trains(tmp_path):
    config = _config(tmp_path, plugins=["shade", "cr"], coefficients=[-1.0, 0.01])
    with pytest.raises(ConfigError, match="2 of 5 sweep cells are invalid") as info:
        run_sweep(config, progress=False, log=lambda _: None)
    assert "shade--1-seed0" in str(info.value) and "cr--1-seed0" in str(info.value)
    assert not (tmp_path / "sw").exists()  # nothing trained, not even the baseline


def test_a_failing_cell_is_listed_and_the_others_train(tmp_path):
    # valid options, but the layer does not exist: the cell fails when its session starts
    broken = {"plugins": ["cr"], "options": {"cr": {"layers": ["no_such_layer"]}}}
    config = _config(
        tmp_path, plugins=["shade", "cr"], coefficients=[0.01], configurations={"broken": broken}
    )
    result = run_sweep(config, progress=False, log=lambda _: None)
    assert set(result.ran) == {"baseline-seed0", "shade-0.01-seed0", "cr-0.01-seed0"}
    assert (
        list(result.failed) == ["broken-seed0"] and "no_such_layer" in result.failed["broken-seed0"]
    )
    assert [row[0] for row in result.summary.rows] == ["baseline", "shade-0.01", "cr-0.01"]
    (name, group, status, error), = result.summary.failed  # fmt: skip
    assert (name, group, status) == (
        "broken-seed0",
        "broken",
        "failed",
    ) and "no_such_layer" in error
    markdown = (tmp_path / "sw" / "summary.md").read_text()
    assert "| broken-seed0 | broken | failed |" in markdown
    assert summarize(tmp_path / "sw").failed == result.summary.failed  # read back from sweep.json


def test_every_first_party_penalty_plugin_declares_its_weight_option():
    from infoshape.plugin_manager import installed_plugins

    for name, ep in installed_plugins().items():
        plugin = ep.load()
        if not ep.value.startswith("infoshape.plugins") or not hasattr(plugin, "infoshape_penalty"):
            continue
        assert hasattr(plugin, "weight_option"), f"{name} declares no weight_option"
        if plugin.weight_option is not None:  # it names a field of the plugin's Config
            assert plugin.weight_option in attrs.fields_dict(plugin.Config), name


# ------------------------------------------------------------------ measured plugins
def test_measure_names_the_summarized_plugins_and_the_old_key_still_works(tmp_path):
    plain = _config(tmp_path, measure=[])
    assert plain.measure == () and plain.cells()[0].settings.get("plugins", []) == []
    with pytest.warns(DeprecationWarning, match=r'write measure = \["characteristics"\]'):
        old = SweepConfig.from_mapping({**BASE, "sweep": {"characteristics": True}})
    assert old.measure == ("characteristics",)
    assert old.cells()[0].settings["plugins"] == ["characteristics"]
    with pytest.warns(DeprecationWarning, match=r"write measure = \[\]"):
        assert SweepConfig.from_mapping({"sweep": {"characteristics": False}}).measure == ()
    with pytest.raises(ConfigError, match="'characteristics' is invalid"):
        SweepConfig.from_mapping({"sweep": {"characteristics": True, "measure": []}})
    with pytest.raises(ConfigError, match="'measure' is invalid"):
        SweepConfig.from_mapping({"sweep": {"measure": [1]}})


def test_summary_columns_follow_the_measured_plugins(tmp_path):
    # nothing measured: the test error alone, although the characteristics plugin runs
    base = {**BASE, "plugins": ["characteristics"]}
    none = SweepConfig.from_mapping({**base, "sweep": {"out": str(tmp_path / "none")}})
    assert run_sweep(none, progress=False, log=lambda _: None).summary.columns == ("test_error",)
    # a sweep.json written before `measure` (characteristics = true) summarizes them still
    manifest = json.loads((tmp_path / "none" / "sweep.json").read_text())
    del manifest["config"]["measure"]
    manifest["config"]["characteristics"] = True
    (tmp_path / "none" / "sweep.json").write_text(json.dumps(manifest))
    old = summarize(tmp_path / "none").columns
    assert old[0] == "test_error" and "sparsity" in old and "I_zx_lower" in old

    # two measured plugins: every metric of each, under its full name
    grid = {"out": str(tmp_path / "two"), "measure": ["characteristics", "renyi"]}
    options = {**BASE["options"], "renyi": {"layers": ["relu2"], "n_candidates": 4}}
    two = SweepConfig.from_mapping({**BASE, "options": options, "sweep": grid})
    summary = run_sweep(two, progress=False, log=lambda _: None).summary
    store = infoshape.open_store(two.cells()[0].store)["metrics"]
    measured = {
        str(name)
        for name in store.data_vars
        if str(name).startswith(("characteristics.", "renyi.")) and store[name].dims == ("epoch",)
    }
    assert "characteristics.relu2.sparsity" in measured and any(
        m.startswith("renyi.") for m in measured
    )
    assert summary.columns == ("test_error", *sorted(measured))
