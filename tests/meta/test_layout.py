"""The layout's promises: dependencies point one way, plugins use public names, core stays small.

Parts (core/README.md): the runtime and the contract at the top of ``core/`` with
``core/store/`` and ``core/math/``; ``core/testing/`` (the plugin author's kit);
``core/apps/`` (trainer, sweep, analysis, report, Lightning, the command line); and the
plugins. Dependencies point one way: apps -> runtime/store/math -> errors. Each rule reads
every module's imports with ``ast`` (imports inside functions and ``TYPE_CHECKING`` blocks
included) and fails naming the file, the line and the import. No module of ``core/`` or
``plugins/`` is over 500 lines.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

import infoshape

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "core"
PACKAGES = {"core": "infoshape", "plugins": "infoshape.plugins", "datasets": "infoshape.datasets"}
TOP_LEVEL_MAX = 14
"""At most this many modules at the top of ``core/`` (``__init__``, ``__main__`` not counted)."""
MODULE_LINES_MAX = 500
"""At most this many lines in any module of ``core/`` and ``plugins/`` (STYLE.md §10)."""
# Modules allowed past the limit (none).
LINES_EXEMPT: set[str] = set()

# Private names a plugin may import (none: plugins use public names only).
PRIVATE_IMPORTS_ALLOWED: set[tuple[str, str, str]] = set()


def _module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = rest[:-1] if rest[-1] == "__init__" else rest
    return ".".join((PACKAGES[folder], *parts))


def _imports(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line, module, name)`` of each import; ``name`` is None for ``import module``."""
    found: list[tuple[int, str, str | None]] = []
    package = _module_name(path) if path.relative_to(ROOT).parts[0] in PACKAGES else ""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                base = package.split(".")
                base = base[: len(base) - node.level + (path.stem == "__init__")]
                module = ".".join([*base, *([module] if module else [])])
            found += [(node.lineno, module, alias.name) for alias in node.names]
    return found


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, module)``: ``from a import b`` counts as ``a`` and ``a.b`` (b may be a module)."""
    found = []
    for line, module, name in _imports(path):
        found.append((line, module))
        if name is not None:
            found.append((line, f"{module}.{name}"))
    return found


def _sources(*folders: str) -> list[Path]:
    paths = (p for folder in folders for p in (ROOT / folder).rglob("*.py"))
    return sorted(p for p in paths if "build" not in p.relative_to(ROOT).parts)


def _runtime_modules() -> list[Path]:
    top = sorted(p for p in CORE.glob("*.py") if p.stem != "__main__")  # __main__ runs the CLI
    return top + _sources("core/store", "core/math")


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _offenders(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line}: imports {module}"
        for path in paths
        for line, module in _imported_modules(path)
        if _within(module, forbidden)
    ]


def test_the_runtime_imports_no_app_plugin_or_testing_kit():
    forbidden = (
        "infoshape.apps",
        "infoshape.integrations",
        "infoshape.plugins",
        "infoshape.testing",
    )
    offenders = _offenders(_runtime_modules(), forbidden)
    assert offenders == [], (
        "the runtime (core/*.py, core/store, core/math) must not depend on an application, "
        "a plugin or the testing kit; move the code, or pass what it needs in:\n"
        + "\n".join(offenders)
    )


def test_the_store_and_the_math_do_not_import_the_session():
    offenders = _offenders(_sources("core/store", "core/math"), ("infoshape.session",))
    assert offenders == [], (
        "core/store and core/math sit below the session; take what you need as arguments:\n"
        + "\n".join(offenders)
    )


def test_the_math_imports_only_the_errors():
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: imports {module}"
        for path in _sources("core/math")
        for line, module in _imported_modules(path)
        if _within(module, ("infoshape",))
        and not _within(module, ("infoshape.math", "infoshape.errors"))
        and module != "infoshape"
    ]
    assert offenders == [], "core/math depends on infoshape.errors only:\n" + "\n".join(offenders)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _plugin_private_imports() -> list[tuple[str, str, str, str]]:
    """``(plugin module, source module, name, where)`` of each private name a plugin imports."""
    found = []
    for path in _sources("plugins"):
        importer = _module_name(path)
        own = importer.split(".")[:3]  # a plugin subpackage may share its own private names
        for line, module, name in _imports(path):
            if not _within(module, ("infoshape",)) or module.split(".")[:3] == own:
                continue
            private_module = any(_private(part) for part in module.split("."))
            if private_module or (name is not None and _private(name)):
                what = f"import {module}" if name is None else f"from {module} import {name}"
                where = f"{path.relative_to(ROOT)}:{line}: {what}"
                found.append((importer, module, name or "", where))
    return found


def test_plugins_import_only_public_names():
    offenders = [
        where
        for importer, module, name, where in _plugin_private_imports()
        if (importer, module, name) not in PRIVATE_IMPORTS_ALLOWED
    ]
    assert offenders == [], (
        "a plugin uses only public names of infoshape (and of other plugins); give the name a "
        "public spelling in its module's __all__:\n" + "\n".join(offenders)
    )


def test_the_private_import_allow_list_is_current():
    found = {(importer, module, name) for importer, module, name, _ in _plugin_private_imports()}
    stale = sorted(PRIVATE_IMPORTS_ALLOWED - found)
    assert stale == [], f"no longer imported: remove from PRIVATE_IMPORTS_ALLOWED: {stale}"


def test_the_repository_uses_the_new_module_paths():
    old = tuple(infoshape._MOVED)
    offenders = _offenders(
        _sources("core", "plugins", "datasets", "tests", "examples", "benchmarks"), old
    )
    assert offenders == [], (
        "these paths only stay importable for code written against the flat layout; "
        "import from the new path (infoshape._MOVED):\n" + "\n".join(offenders)
    )


def test_the_moved_paths_import_the_same_modules():
    import importlib

    for old, new in infoshape._MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old


def test_core_top_level_is_small():
    modules = sorted(p.name for p in CORE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(modules) <= TOP_LEVEL_MAX, (
        f"core/ holds {len(modules)} modules at its top level, at most {TOP_LEVEL_MAX}: "
        f"{modules}; the runtime and the contract live there, the rest in a subpackage"
    )


def test_no_module_is_over_500_lines():
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for path in _sources("core", "plugins")
    }
    longest = sorted(sizes.items(), key=lambda item: -item[1])
    over = [f"{name}: {n}" for name, n in longest if n > MODULE_LINES_MAX]
    over = [o for o in over if o.split(":")[0] not in LINES_EXEMPT]
    assert over == [], (
        f"modules over {MODULE_LINES_MAX} lines (split each by responsibility, STYLE.md §10):\n"
        + "\n".join(over)
        + "\nthe longest: "
        + ", ".join(f"{name} {n}" for name, n in longest[:5])
    )


def test_the_line_exemptions_are_current():
    stale = sorted(p for p in LINES_EXEMPT if not (ROOT / p).exists())
    assert stale == [], f"no such module any more: remove from LINES_EXEMPT: {stale}"


@pytest.mark.parametrize("folder", sorted(PACKAGES))
def test_every_package_folder_is_installed(folder):
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(declared["tool"]["setuptools"]["packages"])
    wanted = {_module_name(p) for p in (ROOT / folder).rglob("__init__.py")}
    missing = sorted(wanted - listed)
    assert missing == [], f"add to [tool.setuptools] packages in pyproject.toml: {missing}"
