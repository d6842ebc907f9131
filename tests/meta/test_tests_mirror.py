"""The tests mirror the source: each module of ``core/`` and ``plugins/`` has its test file.

``core/store/writer.py`` is tested in ``tests/core/store/test_writer.py``,
``plugins/choi_rhee/ion.py`` in ``tests/plugins/choi_rhee/test_ion.py``: the test of a
module is found where the module is. A module tested in another module's file (a helper of
one command, a submodule of one plugin) is listed in ``TESTED_ELSEWHERE`` with that file;
the list stays small, and an entry that is no longer needed (the mirrored file exists, or
the module is gone) fails too. Package ``__init__`` files are not counted.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
SOURCES = ("core", "plugins")

TESTED_ELSEWHERE: dict[str, str] = {
    # core: the runtime's contract and helpers
    "core/__main__.py": "tests/core/apps/test_cli.py",  # `python -m infoshape`
    "core/errors.py": "tests/test_error_messages.py",  # every message's expected/got/fix
    "core/testing/check_report.py": "tests/core/testing/test_plugin_tester.py",  # check_all
    "core/hookspecs.py": "tests/meta/test_hookspecs.py",
    "core/objective.py": "tests/core/test_session.py",  # Penalty through Session.loss
    "core/probe.py": "tests/core/store/test_run_store.py",
    "core/registry.py": "tests/core/test_hooks.py",
    "core/syntax.py": "tests/test_error_messages.py",  # Python vs command-line spelling
    # core/apps: the helpers of one command or one result
    "core/apps/analysis_slabs.py": "tests/core/apps/test_scheduler.py",  # slabs here and as tasks
    "core/apps/analysis_store.py": "tests/core/apps/test_analysis.py",
    "core/apps/analysis_table.py": "tests/core/apps/test_analysis.py",
    "core/apps/dask_worker.py": "tests/core/apps/test_scheduler.py",  # torch threads on workers
    "core/apps/flags.py": "tests/core/apps/test_cli.py",
    "core/apps/metric_plots.py": "tests/core/apps/test_report.py",
    "core/apps/sweep_command.py": "tests/core/apps/test_sweep.py",
    "core/apps/sweep_summary.py": "tests/core/apps/test_sweep.py",
    "core/apps/sweep_tasks.py": "tests/core/apps/test_scheduler.py",  # cells here and as tasks
    "core/apps/train_command.py": "tests/core/apps/test_cli.py",
    "core/apps/train_config.py": "tests/core/apps/test_trainer.py",
    # core/math: the matrix entropy is the renyi plugin's math
    "core/math/kernel_width.py": "tests/plugins/test_renyi.py",
    "core/math/matrix_entropy.py": "tests/plugins/test_renyi.py",
    # core/store: the run store's parts, through RunStore and Session
    "core/store/appender.py": "tests/core/store/test_writer.py",
    "core/store/checkpoint.py": "tests/core/apps/test_resume.py",
    "core/store/chunks.py": "tests/core/store/test_writer.py",
    "core/store/guard.py": "tests/core/store/test_run_store.py",
    "core/store/layout.py": "tests/core/store/test_writer.py",
    "core/store/manifest.py": "tests/core/store/test_run_store.py",
    "core/store/read.py": "tests/core/store/test_run_store.py",
    "core/store/streams.py": "tests/core/store/test_budget.py",
    "core/store/taps.py": "tests/core/store/test_run_store.py",
    # core/testing: the kit is tested as a whole
    "core/testing/conformance.py": "tests/core/testing/test_plugin_tester.py",
    "core/testing/host_syncs.py": "tests/core/test_metrics.py",
    "core/testing/strategies.py": "tests/core/testing/test_plugin_tester.py",
    # plugin packages: one test file for the functions and the plugin classes
    "plugins/choi_rhee/functional.py": "tests/plugins/choi_rhee/test_regularizers.py",
    "plugins/shade/averages.py": "tests/plugins/shade/test_functional.py",
    "plugins/shade/binary.py": "tests/plugins/shade/test_functional.py",
    "plugins/shade/plugin.py": "tests/plugins/shade/test_functional.py",
}


def _modules() -> list[str]:
    paths = (p for folder in SOURCES for p in (ROOT / folder).rglob("*.py"))
    return sorted(str(p.relative_to(ROOT)) for p in paths if p.name != "__init__.py")


def _mirror(module: str) -> str:
    """``core/store/writer.py`` -> ``tests/core/store/test_writer.py``."""
    path = Path(module)
    return str(Path("tests", *path.parts[:-1], f"test_{path.name}"))


def test_every_module_has_a_test_file_at_its_mirrored_path():
    missing = [
        f"{module}: no {_mirror(module)}"
        for module in _modules()
        if not (ROOT / _mirror(module)).is_file() and module not in TESTED_ELSEWHERE
    ]
    assert not missing, (
        "modules without tests at the mirrored path (add the test file there, or list the "
        "module in TESTED_ELSEWHERE with the file that tests it):\n" + "\n".join(missing)
    )


def test_the_exceptions_are_needed_and_point_at_test_files():
    modules = set(_modules())
    stale = [
        f"{module}: {problem}"
        for module, covering in TESTED_ELSEWHERE.items()
        for problem in (
            "no such module" if module not in modules else None,
            f"{_mirror(module)} exists: drop the entry"
            if (ROOT / _mirror(module)).is_file()
            else None,
            f"its test file {covering} does not exist" if not (ROOT / covering).is_file() else None,
        )
        if problem is not None
    ]
    assert not stale, "stale TESTED_ELSEWHERE entries:\n" + "\n".join(stale)


def test_test_file_names_are_unique():
    """pytest imports test files by their name (no ``__init__.py``): two alike would clash."""
    seen: dict[str, list[str]] = {}
    for path in TESTS.rglob("test_*.py"):
        seen.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert not [paths for paths in seen.values() if len(paths) > 1], seen
