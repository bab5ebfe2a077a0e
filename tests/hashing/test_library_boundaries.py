"""`hashing/` stays a plain PyTorch library: no Ray, MLflow, web or CLI imports, no fixed
devices."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[2] / "hashing"
FORBIDDEN = {"ray", "mlflow", "fastapi", "starlette", "click", "typer", "pipelines", "boto3"}
MODULES = sorted(LIBRARY.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(LIBRARY)))
def test_no_forbidden_imports(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN, f"{path.name} imports {sorted(imported & FORBIDDEN)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(LIBRARY)))
def test_no_fixed_device_or_absolute_path(path: Path) -> None:
    text = path.read_text()
    assert not re.search(r"cuda:\d", text)
    assert not re.search(r"[\"'](/home|/root|/tmp|/work|C:\\\\)", text)
