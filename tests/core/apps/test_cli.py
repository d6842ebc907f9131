"""The ``infoshape`` command line, run as real subprocesses.

Each subprocess imports torch (about 5 s of CPU on a small machine), so the
commands are started together, once per module, and the tests read their
results; the help texts of ``plugins`` and ``datasets`` and the option parsing
are checked in-process, through the same ``main``.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import xarray

CLI = [sys.executable, "-m", "infoshape"]
SCRIPT = Path(sys.executable).with_name("infoshape")  # the installed console script
TRAIN_FLAGS = ["--epochs", "2", "--lr", "0.01", "--seed", "3", "--tap", "fc*", "--no-progress"]
TRAIN_TOML = """\
epochs = 2
lr = 0.01
seed = 3
taps = ["fc*"]
progress = false
plugins = ["csv"]
[options.csv]
path = "{csv}"
"""


def _broken_site(root: Path) -> Path:
    """A site folder with an installed distribution whose plugin cannot be imported."""
    info = root / "brokenplug-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[infoshape.plugins]\nbroken = brokenplug_mod\n")
    (root / "brokenplug_mod.py").write_text("import a_module_that_does_not_exist\n")
    return root


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp("cli")
    config = work / "run.toml"
    config.write_text(TRAIN_TOML.format(csv=(work / "file.csv").as_posix()))
    env = {**os.environ, "COLUMNS": "100"}
    broken_env = {**env, "PYTHONPATH": str(_broken_site(work / "site"))}
    commands = {
        "help train": (["train", "--help"], env),
        "train flags": (
            [
                *("train", *TRAIN_FLAGS, "--store", "flags.zarr", "--plugin", "csv"),
                *("--option", f"csv.path={(work / 'flags.csv').as_posix()}"),
            ],
            env,
        ),
        "train config": (["train", "--config", str(config), "--store", "file.zarr"], env),
        "unknown plugin": (["train", "--plugin", "nope", "--store", "nope.zarr"], env),
        "plugins": (["plugins", "--options"], broken_env),
        "datasets": (["datasets"], env),
    }
    running = {
        name: subprocess.Popen(
            [*([str(SCRIPT)] if name == "help train" else CLI), *args],  # the script once
            cwd=work,
            env=e,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (args, e) in commands.items()
    }
    done = {}
    for name, process in running.items():
        stdout, stderr = process.communicate(timeout=300)
        done[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    done["work"] = work  # type: ignore[assignment]
    return done


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_train_help_from_the_console_script(results):
    out = _ok(results["help train"])
    for flag in (
        "--config FILE.toml",
        "--option PLUGIN.KEY=VALUE",
        "--data-root DIR",
        "--no-probe",
    ):
        assert flag in out
    assert "examples:" in out and "config file (TOML)" in out and "open_datatree" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--help"], ["train", "plugins", "datasets", "examples:"]),
        (["plugins", "--help"], ["--options", "examples:", "fails to load"]),
        (["datasets", "--help"], ["--data-root", "examples:"]),
    ],
)
def test_help_of_each_command(capsys, argv, expected):
    from infoshape.apps.cli import main

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert all(text in out for text in expected), out


def test_usage_error_exits_2(capsys):
    from infoshape.apps.cli import main

    assert main(["train", "--epochs", "many"]) == 2
    assert "invalid int value: 'many'" in capsys.readouterr().err


def test_train_with_flags_writes_store_csv_and_summary(results):
    out = _ok(results["train flags"])
    work = results["work"]
    assert "trained mlp on digits for 2 epochs" in out
    accuracy = float(out.split("test accuracy")[1].split()[0])
    assert accuracy > 0.5  # 2 epochs at lr 0.01 reach ~0.9 (see tests/core/test_trainer.py)
    assert 'xarray.open_datatree("flags.zarr", engine="zarr")' in out
    tree = xarray.open_datatree(work / "flags.zarr", engine="zarr")
    probe = tree["probe"].to_dataset()
    assert set(probe.data_vars) == {"fc1", "fc2", "input"}  # --tap 'fc*', and the inputs X
    assert probe["fc1"].dims == ("epoch", "sample", "fc1_unit")
    with (work / "flags.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert {"stage", "index", "name", "value"} == set(rows[0])
    assert any(r["stage"] == "epoch" and r["name"] == "test.accuracy" for r in rows)


def test_config_file_equals_flags(results):
    _ok(results["train config"])
    work = results["work"]
    configs = {}
    for name in ("flags", "file"):
        config = dict(xarray.open_datatree(work / f"{name}.zarr", engine="zarr").attrs["config"])
        assert config.pop("store") == f"{name}.zarr"
        config["options"]["csv"].pop("path")
        configs[name] = config
    assert configs["flags"] == configs["file"]
    assert configs["file"]["seed"] == 3 and configs["file"]["taps"] == ["fc*"]
    assert (work / "file.csv").is_file()


def test_unknown_plugin_exits_2_with_the_message(results):
    result = results["unknown plugin"]
    assert result.returncode == 2
    assert "plugin 'nope': is not installed" in result.stderr
    assert "`infoshape plugins` lists what is installed" in result.stderr
    assert "Traceback" not in result.stderr


def test_plugins_lists_installed_and_broken(results):
    out = _ok(results["plugins"])
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "configure, sinks" in lines["csv"] and "infoshape" in lines["csv"]
    assert "datasets" in lines["builtin_datasets"]
    assert "BROKEN" in lines["broken"]
    assert "a_module_that_does_not_exist" in out  # the error, listed
    assert "    path: str | None = None" in out  # --options: csv's Config field


def test_datasets_lists_digits(results):
    out = _ok(results["datasets"])
    row = next(line for line in out.splitlines() if line.startswith("digits"))
    assert row.split()[:4] == ["digits", "10", "1x8x8", "no"]
    assert "cifar10" in out and "3x32x32" in out


def test_option_values_are_toml():
    from infoshape.apps.cli import parse_assignment

    assert parse_assignment("shade.beta=0.1", dotted=True) == ("shade", "beta", 0.1)
    assert parse_assignment("csv.path=m.csv", dotted=True) == ("csv", "path", "m.csv")
    assert parse_assignment('a.name="x y"', dotted=True) == ("a", "name", "x y")
    assert parse_assignment("a.ks=[1, 2]", dotted=True) == ("a", "ks", [1, 2])
    assert parse_assignment("hidden=[8]", dotted=False) == (None, "hidden", [8])


@pytest.mark.parametrize("text", ["beta=0.1", "shade.beta", ".beta=1"])
def test_malformed_option_is_refused(text):
    import infoshape
    from infoshape.apps.cli import parse_assignment

    with pytest.raises(infoshape.ConfigError, match=r"PLUGIN\.KEY=VALUE"):
        parse_assignment(text, dotted=True)


def test_flags_override_the_file(tmp_path):
    from infoshape.apps.cli import build_parser, train_settings

    file = tmp_path / "c.toml"
    file.write_text(
        textwrap.dedent(
            """\
            epochs = 5
            plugins = ["csv"]
            store = false
            [options.csv]
            path = "a.csv"
            append = true
            """
        )
    )
    args = build_parser().parse_args(
        ["train", "--config", str(file), "--epochs", "1", "--option", "csv.path=b.csv"]
    )
    settings = train_settings(args)
    assert settings["epochs"] == 1 and settings["store"] is None
    assert settings["options"] == {"csv": {"path": "b.csv", "append": True}}
    assert settings["plugins"] == ["csv"]


# ------------------------------------------------------------------ analyze, report
SHIPPED_ESTIMATOR = "kl_pairwise"  # a first-party estimator with an information plane


@pytest.fixture(scope="module")
def pipeline(results) -> dict:
    """``infoshape analyze`` then ``infoshape report`` on the ``train flags`` run's store.

    That store is a real run on the embedded digits (2 epochs, probe taps fc1 and fc2):
    train, analyze, report is the path from a run to its information-plane PNG.
    """
    estimator = SHIPPED_ESTIMATOR
    work = results["work"]
    store = str(work / "flags.zarr")
    env = {**os.environ, "COLUMNS": "100"}
    analyze = ["analyze", store, "--estimator", estimator, "--max-samples", "300", "--no-progress"]
    done: dict = {"estimator": estimator, "store": work / "flags.zarr"}
    for name, args in (("analyze", analyze), ("report", ["report", store])):
        done[name] = subprocess.run(
            [*CLI, *args], cwd=work, env=env, capture_output=True, text=True, timeout=300
        )
    return done


def test_analyze_prints_the_table_and_writes_the_store(pipeline):
    out = _ok(pipeline["analyze"])
    estimator, store = pipeline["estimator"], pipeline["store"]
    assert f"wrote {store}/analysis/{estimator}" in out
    assert "I(X;T) [nats]" in out and "I(T;Y) [nats]" in out and "300 probe samples" in out
    rows = [line.split() for line in out.splitlines() if "fc1" in line or "fc2" in line]
    assert len(rows) == 4  # 2 epochs x 2 taps
    written = xarray.open_datatree(store, engine="zarr")[f"analysis/{estimator}"].to_dataset()
    assert written["I_XT"].dims == ("epoch", "tap")
    assert list(written["epoch"].values) == [0, 1] and written.sizes["sample"] == 300
    assert {str(t) for t in written["tap"].values} == {"fc1", "fc2"}


def test_report_draws_the_information_plane_png(pipeline):
    from matplotlib.image import imread

    out = _ok(pipeline["report"])
    folder = pipeline["store"].parent / "flags.report"
    plane = folder / f"information_plane_{pipeline['estimator']}.png"
    assert out.split() == [str(plane), str(folder / "metrics.png")]
    height, width, _ = imread(plane).shape
    assert height >= 400 and width >= 600


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["analyze", "--help"], ["--estimator NAME", "--max-samples N", "examples:", "::2"]),
        (["report", "--help"], ["--out DIR", "examples:", "information_plane_NAME.png"]),
        (["--help"], ["analyze", "report"]),
    ],
)
def test_help_of_analyze_and_report(capsys, argv, expected):
    from infoshape.apps.cli import main

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert all(text in out for text in expected), out


def test_analyze_and_report_errors_exit_2(capsys, results, tmp_path):
    from infoshape.apps.cli import main

    estimator = SHIPPED_ESTIMATOR
    store = str(results["work"] / "flags.zarr")
    cases = [
        (["analyze", store, "--estimator", "no_such_estimator"], "unknown estimator"),
        (["analyze", store, "--estimator", estimator, "--tap", "fc3"], "unknown tap 'fc3'"),
        (["analyze", store, "--estimator", estimator, "--option", "rdge=1"], "no option 'rdge'"),
        (["analyze", store, "--estimator", estimator, "--epochs", "x"], "cannot read --epochs"),
        (["analyze", store], "the following arguments are required: --estimator"),
        (["report", str(tmp_path / "none.zarr")], "no infoshape store"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


# ------------------------------------------------------------------ messages
def test_user_errors_of_train_exit_2_with_cli_syntax_in_the_fix(capsys, tmp_path, monkeypatch):
    import torch

    from infoshape.apps.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    (tmp_path / "p.toml").write_text('plugins = "shade"\nepochs = 1\n')
    cases = [
        (
            ["train", "--device", "mps", "--no-store"],
            ["device 'mps' is not available on this machine", "expected: a device this machine "
             "has: cpu", "fix: use --device "],
        ),
        (
            ["train", "--config", "p.toml", "--no-store"],
            ["train setting 'plugins' is invalid", "got: 'shade' (str)",
             'plugins = ["shade"] in the config file, or --plugin shade'],
        ),
        (
            ["train", "--plugin", "shade", "--option", "shade.p_z=gauss", "--no-store"],
            ["option 'p_z' is not one of 'exp', 'sigmoid'", "e.g. --option shade.p_z=exp"],
        ),
    ]  # fmt: skip
    for argv, expected in cases:
        assert main([*argv, "--epochs", "1", "--no-progress"]) == 2, argv
        err = capsys.readouterr().err
        assert all(text in err for text in expected) and "Traceback" not in err, err
        assert "options={" not in err and "wrong type" not in err, err
    assert not (tmp_path / "runs").exists()


@contextlib.contextmanager
def _read_only(folder: Path):
    """Make ``folder`` and its sub-folders unwritable, for root too (``chattr +i``)."""
    folders = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
    if os.geteuid() != 0:
        for path in folders:
            path.chmod(0o555)
        undo = lambda: [path.chmod(0o755) for path in folders]  # noqa: E731
    elif (
        shutil.which("chattr")
        and not subprocess.run(["chattr", "+i", *folders], capture_output=True).returncode
    ):
        undo = lambda: subprocess.run(["chattr", "-i", *folders], check=True)  # noqa: E731
    else:
        pytest.skip("cannot make a folder read-only for root here (no chattr +i)")
    try:
        yield
    finally:
        undo()


def test_analyze_refuses_a_read_only_store_before_computing(pipeline, tmp_path, capsys):
    import infoshape
    from infoshape.apps.analysis import analyze
    from infoshape.apps.cli import main

    store = tmp_path / "ro.zarr"
    shutil.copytree(pipeline["store"], store)
    calls = []
    record = infoshape.Estimator(
        name="counting", function=len, information_plane=lambda *a: calls.append(a) or (0, 0)
    )
    with _read_only(store):
        with pytest.raises(infoshape.StoreError, match="cannot write the analysis into"):
            analyze(store, record)
        assert calls == []  # refused before the first slab
        assert main(["analyze", str(store), "--estimator", SHIPPED_ESTIMATOR]) == 2
    err = capsys.readouterr().err
    assert f"cannot write the analysis into {store}" in err and "nothing was computed" in err
    assert "Traceback" not in err, err


def test_analyze_replaces_only_a_group_an_analysis_wrote(pipeline, tmp_path, capsys):
    import zarr

    from infoshape.apps.cli import main

    store = tmp_path / "a.zarr"
    shutil.copytree(pipeline["store"], store)
    mine = zarr.open_group(str(store / "analysis"), mode="r+").create_group("mine")
    mine.attrs["author"] = "me"
    mine.create_array("x", shape=(2,), dtype="f8")[...] = [1.0, 2.0]
    analyze = ["analyze", str(store), "--estimator", SHIPPED_ESTIMATOR, "--max-samples", "30"]
    assert main([*analyze, "--name", "mine", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{store}/analysis/mine was not written by infoshape analyze" in err
    assert "got: a group with attrs ['author']" in err and "--name NAME" in err
    kept = zarr.open_group(str(store / "analysis" / "mine"), mode="r")
    assert dict(kept.attrs) == {"author": "me"} and list(kept["x"][...]) == [1.0, 2.0]
    assert main([*analyze, "--no-progress"]) == 0  # its own group: replaced


def test_report_never_overwrites_a_file_it_did_not_write(pipeline, tmp_path, capsys):
    from infoshape.apps.cli import main

    store = str(pipeline["store"])
    figures, notes = tmp_path / "figures", tmp_path / "notes.txt"
    figures.mkdir()
    (figures / "metrics.png").write_text("my own plot")
    (figures / "notes.txt").write_text("mine")
    notes.write_text("mine too")
    cases = [
        (figures, "the report would overwrite files it did not write"),
        (notes, f"the report folder {notes} is a file"),
        (notes / "sub", f"cannot write the report to {notes / 'sub'}"),
    ]
    for out, message in cases:
        assert main(["report", store, "--out", str(out)]) == 2, out
        err = capsys.readouterr().err
        assert message in err and "--out DIR" in err and "Traceback" not in err, err
    assert (figures / "metrics.png").read_text() == "my own plot"
    assert sorted(p.name for p in figures.iterdir()) == ["metrics.png", "notes.txt"]
    assert notes.read_text() == "mine too"
    for _ in range(2):  # its own files it replaces
        assert main(["report", store, "--out", str(tmp_path / "ours")]) == 0


def test_train_flags_for_device_precision_compile_and_log_every(tmp_path, monkeypatch, capsys):
    import infoshape
    from infoshape.apps.cli import main

    monkeypatch.chdir(tmp_path)
    argv = ["train", "--epochs", "1", "--no-probe", "--store", "r.zarr", "--no-progress"]
    argv += ["--model-option", "hidden=[16]", "--device", "auto", "--amp", "bf16"]
    argv += ["--compile", "aot_eager", "--log-every", "5"]
    assert main(argv) == 0
    config = infoshape.open_store(tmp_path / "r.zarr").attrs["config"]
    assert (config["device"], config["amp"], config["compile"], config["log_every"]) == (
        "cpu",
        "bf16",
        "aot_eager",
        5,
    )
