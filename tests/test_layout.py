"""docs/architecture.md's layout names every module of hashing/ and pipelines/, and nothing else.

A reader finds each part by its folder and file name only while the map and the tree agree.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("hashing", "pipelines")


def _layout_block() -> str:
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## Layout", 1)[1]
    return section.split("```", 2)[1]


def _modules() -> list[Path]:
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path.name != "__init__.py" and "__pycache__" not in path.parts:
                found.append(path.relative_to(REPO))
    return found


@pytest.mark.parametrize("module", _modules(), ids=str)
def test_every_module_is_on_the_map(module: Path) -> None:
    named = set(re.findall(r"\b[\w-]+\.py\b", _layout_block()))
    assert module.name in named, f"{module} is missing from docs/architecture.md's layout"
    for folder in module.parent.relative_to(module.parts[0]).parts:
        assert f"{folder}/" in _layout_block(), f"package {folder}/ is missing from the layout"


def test_every_file_on_the_map_exists() -> None:
    named = set(re.findall(r"\b([\w-]+\.py)\b", _layout_block()))
    present = {path.name for path in REPO.glob("*/**/*.py") if ".venv" not in path.parts}
    assert named - present == set()
    assert len(named) >= 20  # the map names files, not just packages
