"""``--quiet`` and ``--verbose``, and the per-epoch lines without a terminal (issue 17).

``infoshape train`` runs as two real subprocesses (their stderr is a pipe, no terminal),
started together: the default prints one line per epoch on stderr, ``--quiet`` prints the one
result line and nothing on stderr. ``--verbose`` (the records of the ``infoshape`` loggers
with their names: the layers Information Dropout chose by default), ``analyze`` and
``report`` run in process, through the same ``main``, on the default run's store.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import pytest

from infoshape.apps.cli import main

CLI = [sys.executable, "-m", "infoshape", "train"]
TINY = ["--epochs", "2", "--seed", "0", "--probe-size", "40", "--tap", "relu1"]
EPOCH_LINE = re.compile(r"^epoch (\d)/2  train loss \d+\.\d{4}  test accuracy 0\.\d{4}  \d+\.\d s$")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp("verbosity")
    commands = {
        "default": [*TINY, "--store", "a.zarr"],
        "quiet": [*TINY, "--store", "q.zarr", "--quiet"],
    }
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    running = {
        name: subprocess.Popen(
            [*CLI, *args],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for name, args in commands.items()
    }
    done: dict = {}
    for name, process in running.items():
        out, err = process.communicate(timeout=300)
        done[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
        assert process.returncode == 0, f"{name}: {err}"
    done["work"] = work
    return done


def test_one_line_per_epoch_without_a_terminal(runs):
    lines = runs["default"].stderr.splitlines()
    epochs = [EPOCH_LINE.match(line) for line in lines]
    assert [m.group(1) for m in epochs if m] == ["1", "2"], runs["default"].stderr
    assert "test accuracy" in runs["default"].stdout  # the summary still goes to stdout


def test_quiet_prints_only_the_result_line(runs):
    assert runs["quiet"].stderr == ""
    out = runs["quiet"].stdout.splitlines()
    assert len(out) == 1, out
    assert re.fullmatch(
        r"trained mlp on digits for 2 epochs in \d+\.\d s: test accuracy 0\.\d{4}, store .*q\.zarr",
        out[0],
    )


def test_verbose_logs_what_plugins_chose(capsys):
    argv = ["train", "--epochs", "1", "--no-store", "--no-probe", "--plugin", "information_dropout"]
    assert main([*argv, "-v"]) == 0
    err = capsys.readouterr().err
    assert "INFO infoshape.progress: epoch 1/1" in err
    chose = [line for line in err.splitlines() if "infoshape.plugins.information_dropout" in line]
    assert chose and "relu1" in chose[0] and "relu2" in chose[0], err


def test_the_default_says_what_plugins_chose(capsys):
    argv = ["train", "--epochs", "1", "--no-store", "--no-probe", "--plugin", "information_dropout"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    chose = [line for line in err.splitlines() if line.startswith("information_dropout")]
    assert chose and "relu1" in chose[0] and "relu2" in chose[0], err
    assert main([*argv, "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_an_error_still_prints_when_quiet(capsys):
    assert main(["train", "--plugin", "nope", "--no-store", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "infoshape: error:" in err and "nope" in err


def test_analyze_and_report_quiet(runs, capsys):
    store = str(runs["work"] / "a.zarr")
    handlers = list(logging.getLogger("infoshape").handlers)
    assert main(["analyze", store, "--estimator", "kl_pairwise", "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {store}/analysis/kl_pairwise"]
    out_dir = runs["work"] / "figures"
    assert main(["report", store, "--out", str(out_dir), "-q"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("wrote ") and "information_plane" in out[0]
    # main installs its handler for one command only
    assert logging.getLogger("infoshape").handlers == handlers
    assert main(["analyze", store, "--estimator", "kl_pairwise", "--name", "kl2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) > 1  # the table, without --quiet


def test_quiet_and_verbose_exclude_each_other(capsys):
    assert main(["train", "--quiet", "--verbose"]) == 2
    assert "not allowed with" in capsys.readouterr().err
