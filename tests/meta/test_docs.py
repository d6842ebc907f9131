"""The pages under docs/: every Python block runs, every link from the README resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = ["write-a-plugin.md", "store-schema.md", "integrations.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(page: Path) -> list[str]:
    """The fenced ```python blocks of a Markdown page, in order."""
    return BLOCK.findall(page.read_text(encoding="utf-8"))


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.usefixtures("hf_trainer_without_shadowed_datasets")
def test_every_python_block_runs(page, tmp_path, monkeypatch):
    blocks = python_blocks(DOCS / page)
    assert blocks, f"docs/{page} has no python block"
    monkeypatch.chdir(tmp_path)  # the blocks write their stores and files here
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    namespace: dict = {"__name__": f"docs_{page}"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"docs/{page} block {i + 1}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"docs/{page}, python block {i + 1} fails: {err!r}") from err


def test_the_readme_links_every_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in PAGES:
        assert f"(docs/{page})" in readme, f"README.md does not link docs/{page}"


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
    text = (DOCS / page).read_text(encoding="utf-8")
    for target in re.findall(r"\]\((\.\./[^)#]+|[a-z-]+\.md)\)", text):
        assert (DOCS / target).resolve().exists(), f"docs/{page} links {target}: missing"
