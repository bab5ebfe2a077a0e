"""``report.html``: one self-contained page of an evaluation report (``hashray evaluate --html``).

The page holds the metrics table (mAP tie-aware and in id order, precision within the radius,
P@N) and the two plots ``evaluate`` draws, embedded as PNG data URIs: it opens from any folder,
an S3 console or an MLflow artifact view without the files beside it.
"""

from __future__ import annotations

import base64
import html
from typing import Any

__all__ = ["REPORT_HTML", "render_report_html"]

REPORT_HTML = "report.html"

_STYLE = """
body { font-family: system-ui, sans-serif; color: #1d232b; max-width: 1000px; margin: 16px auto;
  padding: 0 16px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border-bottom: 1px solid #d5dae0; padding: 3px 12px 3px 0; text-align: left; }
td.number { font-variant-numeric: tabular-nums; text-align: right; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
.note { color: #5d6875; font-size: 0.85rem; }
"""


def render_report_html(report: dict[str, Any], plots: dict[str, bytes]) -> str:
    """The page for ``report`` (``evaluate``'s dict); ``plots`` maps a caption to PNG bytes."""
    radius = report["radius"]
    metric_rows = [
        (
            "mAP@all, tie-aware" if report["topk"] is None else f"mAP@{report['topk']}, tie-aware",
            report["map_tie_aware"],
        ),
        ("mAP, id order", report["map_id_order"]),
        (f"precision within radius {radius}", report[f"precision_radius_{radius}"]),
        (f"mean items returned within radius {radius}", report[f"mean_returned_radius_{radius}"]),
    ]
    about = [
        ("method", report.get("method")),
        ("bits", report.get("bits")),
        ("dataset / protocol", f"{report.get('dataset')} / {report.get('protocol')}"),
        ("model version", report.get("model_version")),
        ("queries x database", f"{report['n_queries']} x {report['n_database']}"),
        ("queries with no relevant item", report.get("zero_relevant_queries")),
    ]
    p_at_n = report["precision_at_n"]
    title = f"hashray evaluation: {report.get('method') or 'codes'}, {report.get('bits')} bits"
    figures = "".join(
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,'
        f'{base64.b64encode(data).decode()}"><figcaption>{html.escape(caption)}</figcaption>'
        "</figure>"
        for caption, data in plots.items()
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f'<table id="about">{_rows(about)}</table>'
        f'<h2>Retrieval</h2><table id="metrics">{_rows(metric_rows)}</table>'
        '<h2>Precision of the first N</h2><table id="precision-at-n"><tr><th>N</th>'
        + "".join(f"<th>{html.escape(n)}</th>" for n in p_at_n)
        + "</tr><tr><td>P@N</td>"
        + "".join(f'<td class="number">{p:.4f}</td>' for p in p_at_n.values())
        + f'</tr></table><div class="plots">{figures}</div>'
        f'<p class="note">{html.escape(report["ties"])}. {html.escape(report["relevance"])}.</p>'
        "</body></html>\n"
    )


def _rows(rows: list[tuple[str, Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f'<td class="number">{value:.4f}</td>'
        return f"<td>{html.escape(str(value))}</td>"

    return "".join(f"<tr><th>{html.escape(name)}</th>{cell(value)}</tr>" for name, value in rows)
