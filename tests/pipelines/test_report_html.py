"""``hashray evaluate --html``: report.html beside report.json, with the same numbers and plots.

Codes are written here with codes_io (no Ray, no MLflow run): two label groups that the codes
separate perfectly, so mAP is 1 and every number in the page can be checked.
"""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser

import numpy as np

from pipelines.cli import main
from pipelines.codes_io import codes_table, write_codes


class _Page(HTMLParser):
    """Tables as lists of rows of cell texts, and the image sources."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs.get("id")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []
        elif tag == "img":
            self.images.append(attrs["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def write_split(path, ids, codes, labels):
    table = codes_table(ids, np.asarray(codes, dtype=np.uint8)[:, None], labels=labels)
    write_codes(str(path), [table], bits=8, metadata={"method": "adsh", "num_classes": 2})


def test_evaluate_html_writes_the_table_and_plots(tmp_path, capsys):
    codes = tmp_path / "codes"
    write_split(codes / "query", ["q0", "q1"], [0x00, 0xFF], [[0], [1]])
    write_split(
        codes / "database",
        [f"d{i}" for i in range(8)],
        [0x00, 0x01, 0x02, 0x04, 0xFF, 0xFE, 0xFD, 0xFB],
        [[0]] * 4 + [[1]] * 4,
    )
    assert main(["evaluate", "--codes", str(codes), "--html", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["map_tie_aware"] == 1.0
    assert (codes / "report.json").exists() and str(codes / "report.html") in report["files"]

    page = _Page()
    page.feed((codes / "report.html").read_text())
    metrics = dict(page.tables["metrics"])
    assert metrics["mAP@all, tie-aware"] == "1.0000"
    assert metrics["mAP, id order"] == f"{report['map_id_order']:.4f}"
    assert metrics["precision within radius 2"] == f"{report['precision_radius_2']:.4f}"
    header, values = page.tables["precision-at-n"]
    assert header[1:] == list(report["precision_at_n"])
    assert values[1:] == [f"{p:.4f}" for p in report["precision_at_n"].values()]
    assert dict(page.tables["about"])["queries x database"] == "2 x 8"
    assert len(page.images) == 2
    for src, name in zip(page.images, ["pr_curve.png", "precision_at_n.png"], strict=True):
        data = base64.b64decode(re.fullmatch(r"data:image/png;base64,(.+)", src).group(1))
        assert data == (codes / name).read_bytes()  # the same plots evaluate writes beside it


def test_without_html_there_is_no_page(tmp_path):
    codes = tmp_path / "codes"
    write_split(codes / "query", ["q0"], [0x00], [[0]])
    write_split(codes / "database", ["d0", "d1"], [0x00, 0xFF], [[0], [1]])
    assert main(["evaluate", "--codes", str(codes)]) == 0
    assert (codes / "report.json").exists() and not (codes / "report.html").exists()
