"""docs/methods.md states every method plugin's defaults as the code has them (issue 17).

The page's **Options of `name`** tables are parsed (first column the option, second its
default as a Python literal) and compared, option by option, with the defaults of the
plugin's ``Config``, loaded through the plugin manager as a session loads it. A default
changed in the code and not in the page (or the other way round), an option left out of the
page, or an option the plugin does not have fails here, naming the plugin and the option.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import attrs
import pytest

from infoshape.plugin_manager import build_plugin_manager, installed_plugins

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "methods.md"
HEADING = re.compile(r"^\*\*Options of `(\w+)`\*\*\s*$")
ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*`([^`]*)`\s*\|")
#: first-party plugins that are no method (sinks, data sets): documented in
#: docs/integrations.md and the README instead.
NOT_METHODS = {"builtin_datasets", "csv", "tensorboard", "mlflow"}


def option_tables(text: str) -> dict[str, dict[str, Any]]:
    """``{plugin: {option: default}}`` from the page's **Options of `plugin`** tables."""
    tables: dict[str, dict[str, Any]] = {}
    current: str | None = None
    for line in text.splitlines():
        heading = HEADING.match(line)
        if heading:
            current = heading.group(1)
            assert current not in tables, f"docs/methods.md has two tables for {current!r}"
            tables[current] = {}
            continue
        if current is None:
            continue
        row = ROW.match(line)
        if row:
            option, literal = row.groups()
            try:
                tables[current][option] = ast.literal_eval(literal)
            except (ValueError, SyntaxError) as err:
                raise AssertionError(
                    f"docs/methods.md, {current}.{option}: default {literal!r} is no Python literal"
                ) from err
        elif line.strip() and not line.startswith("|"):
            current = None  # the table ended
    return tables


def config_defaults(name: str) -> dict[str, Any]:
    """The defaults of plugin ``name``'s ``Config``, loaded through the plugin manager."""
    manager = build_plugin_manager([name])
    config = getattr(manager.infos[name].plugin, "Config", None)
    if config is None or not attrs.has(config):
        return {}
    defaults = {}
    for field in attrs.fields(config):
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        defaults[field.name] = default
    return defaults


def method_plugins() -> list[str]:
    return sorted(
        name
        for name, ep in installed_plugins().items()
        if ep.value.startswith("infoshape.plugins") and name not in NOT_METHODS
    )


TABLES = option_tables(PAGE.read_text(encoding="utf-8"))


def test_the_parser_reads_tables():
    assert len(TABLES) >= 15, sorted(TABLES)
    assert TABLES["shade"]["beta"] == 0.001
    assert TABLES["characteristics"]["bounds"] == ("upper", "lower")


@pytest.mark.parametrize("name", method_plugins())
def test_defaults_match_the_code(name):
    code = config_defaults(name)
    if not code:
        assert name not in TABLES or not TABLES[name], (
            f"docs/methods.md lists options of {name!r}, which has none"
        )
        assert f"`{name}`" in PAGE.read_text(encoding="utf-8"), (
            f"docs/methods.md does not mention {name!r}"
        )
        return
    assert name in TABLES, f"docs/methods.md has no **Options of `{name}`** table"
    doc = TABLES[name]
    missing = sorted(set(code) - set(doc))
    extra = sorted(set(doc) - set(code))
    assert not missing, f"docs/methods.md, {name}: options missing from the table: {missing}"
    assert not extra, f"docs/methods.md, {name}: options the plugin does not have: {extra}"
    wrong = [
        f"{name}.{key}: the page says {doc[key]!r}, the code {code[key]!r}"
        for key in code
        if not (doc[key] == code[key] and type(doc[key]) is type(code[key]))
        and not (isinstance(code[key], float) and doc[key] == code[key])
    ]
    assert not wrong, "docs/methods.md disagrees with the code: " + "; ".join(wrong)


def test_a_changed_default_is_caught():
    """The comparison fails on a drifted default (the test above can fail)."""
    text = PAGE.read_text(encoding="utf-8").replace("| `beta` | `0.001` |", "| `beta` | `0.1` |")
    assert option_tables(text)["shade"]["beta"] != config_defaults("shade")["beta"]


def test_no_reference_to_the_old_spec():
    hits = []
    for folder in ("core", "plugins", "docs", "examples", "tests", "datasets", "benchmarks"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in {".py", ".md"} and path != Path(__file__):
                text = path.read_text(encoding="utf-8")
                if "METHODS.md" in text:
                    hits.append(str(path.relative_to(ROOT)))
    if "METHODS.md" in (ROOT / "README.md").read_text(encoding="utf-8"):
        hits.append("README.md")
    assert not hits, f"files still cite METHODS.md instead of docs/methods.md: {hits}"


def test_the_readme_links_the_page():
    assert "(docs/methods.md" in (ROOT / "README.md").read_text(encoding="utf-8")
