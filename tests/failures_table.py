"""docs/failures.md read as data: the tests that try each failure take their expectations from it.

A table row is ``| id | input | what the user sees | exit | left on disk |``; the backquoted parts
of the third cell must all appear in what the command prints, ``<path>`` standing for the path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FAILURES_DOC", "Row", "rows"]

FAILURES_DOC = Path(__file__).resolve().parents[1] / "docs" / "failures.md"


@dataclass(frozen=True)
class Row:
    """One tried failure: its id, the messages shown, the exit status and what stays on disk."""

    id: str
    shown: tuple[str, ...]
    exit: int | None
    left: str

    def messages(self, path: str = "") -> list[str]:
        """The backquoted messages with ``<path>`` replaced by ``path``."""
        return [text.replace("<path>", path) for text in self.shown]


def rows(section: str) -> dict[str, Row]:
    """The rows of the table under the ``## section`` heading (its first words), by id."""
    text = FAILURES_DOC.read_text()
    [part] = [p for p in text.split("\n## ")[1:] if p.startswith(section)]
    found = {}
    for line in part.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] in ("id", "---"):
            continue
        exit_status = int(cells[3]) if cells[3].isdigit() else None
        shown = tuple(re.findall(r"`([^`]+)`", cells[2]))
        found[cells[0]] = Row(cells[0], shown, exit_status, cells[4])
    return found
