"""The code stays lint-clean and formatted with the pinned ruff (pyproject's dev extra), so style
review is about design, not whitespace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff(command: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "--output-format", "concise", "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


# Spelled in two parts so that this file does not count itself.
FMT_SKIP = "# fmt" + ": skip"
# The two class-name tables, five names a row (ruff would put one per line); nowhere else.
ALLOWED_FMT_SKIPS = {"pipelines/sources/cifar10.py": 1, "pipelines/sources/mnist.py": 1}


def test_fmt_skip_only_on_the_class_name_tables() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "--", "*.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found: dict[str, list[int]] = {}
    for name in filter(None, tracked.split("\0")):
        text = (REPO / name).read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), start=1):
            if FMT_SKIP in line:
                found.setdefault(name, []).append(number)
    offending = [
        f"{name}:{number}"
        for name, numbers in sorted(found.items())
        if len(numbers) != ALLOWED_FMT_SKIPS.get(name, 0)
        for number in numbers
    ]
    missing = sorted(name for name in ALLOWED_FMT_SKIPS if name not in found)
    assert not offending and not missing, (
        f"{FMT_SKIP!r} is allowed once in each of {sorted(ALLOWED_FMT_SKIPS)} only; "
        f"offending: {', '.join(offending) or 'none'}; missing from: {', '.join(missing) or 'none'}"
    )
