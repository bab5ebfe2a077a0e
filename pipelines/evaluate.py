"""``hashray evaluate``: retrieval metrics of query codes against database codes -> report + plots.

Reads two complete codes directories (checksums verified), computes every number with
``hashing.metrics.retrieval_report``, and writes ``report.json``, ``pr_curve.png`` and
``precision_at_n.png``. When the codes name an MLflow run (or one is given) the metrics and files
are attached to that run. Relevance, tie rule and cut-off are written into the report
(docs/evaluation.md: numbers are only comparable when all three match).
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from mlflow.exceptions import MlflowException

from hashing import metrics
from pipelines import storage, tracking
from pipelines.codes_io import Codes, read_codes
from pipelines.config import default_tracking_uri
from pipelines.report_html import REPORT_HTML, render_report_html

log = logging.getLogger(__name__)

__all__ = ["REPORT_FILE", "evaluate"]

REPORT_FILE = "report.json"
TIES_NOTE = (
    "map_tie_aware: expected AP under a uniformly random order inside each Hamming distance "
    "(He et al., CVPR 2018), the headline number; map_id_order: ties broken by database id"
)
RELEVANCE_NOTE = (
    "relevant = shares at least one label; a query with no relevant item in its top-k scores 0"
)


def evaluate(
    codes: str | None = None,
    *,
    queries: str | None = None,
    database: str | None = None,
    out: str | None = None,
    radius: int = 2,
    topk: int | None = None,
    mlflow_run_id: str | None = None,
    tracking_uri: str | None = None,
    html: bool = False,
) -> dict[str, Any]:
    """Evaluate ``codes/query`` against ``codes/database`` (or explicit dirs); returns the report.

    ``out`` defaults to ``codes``; with neither, nothing is written to disk. ``topk=None`` is mAP
    over the whole database. The MLflow run is ``mlflow_run_id`` or the one in the codes metadata.
    ``html`` also writes ``report.html`` (the table and both plots in one file).
    """
    if codes is None and (queries is None or database is None):
        raise ValueError("give an encode output dir (codes) or both queries and database dirs")
    query_dir = queries or storage.join(codes, "query")
    database_dir = database or storage.join(codes, "database")
    query, db = read_codes(query_dir, verify=True), read_codes(database_dir, verify=True)
    meta = _shared_metadata(query, db)
    num_classes = _num_classes(query, db)
    result = metrics.retrieval_report(
        query.codes,
        db.codes,
        query.multi_hot(num_classes),
        db.multi_hot(num_classes),
        db_ids=db.ids,
        radius=radius,
        topk=topk,
    )
    run_id = mlflow_run_id or meta.get("mlflow_run_id")
    report = {
        "method": meta.get("method"),
        "bits": result["bits"],
        "protocol": meta.get("protocol"),
        "dataset": meta.get("dataset"),
        "model_uri": meta.get("model_uri"),
        "model_version": meta.get("model_version"),
        "map_tie_aware": result["map_tie_aware"],
        "map_id_order": result["map_id_order"],
        f"precision_radius_{radius}": result["precision_radius"],
        f"mean_returned_radius_{radius}": result["mean_returned_radius"],
        "radius": radius,
        "topk": topk,
        "n_queries": result["n_queries"],
        "n_database": result["n_database"],
        "zero_relevant_queries": result["zero_relevant_queries"],
        "ties": TIES_NOTE,
        "relevance": RELEVANCE_NOTE,
        "pr_curve": result["pr_curve"],
        "precision_at_n": {str(n): p for n, p in result["precision_at_n"].items()},
        "codes": {"query": query_dir, "database": database_dir},
        "mlflow_run_id": run_id,
    }
    out = out if out is not None else codes
    with tempfile.TemporaryDirectory() as tmp:
        files = _render(report, Path(tmp), html=html)
        if out is not None:
            for path in files:
                storage.write_bytes(storage.join(out, path.name), path.read_bytes())
            report["files"] = [storage.join(out, path.name) for path in files]
        report["mlflow_logged"] = bool(run_id) and _log_to_run(
            tracking_uri or default_tracking_uri(),
            run_id,
            report,
            files,
            explicit=bool(mlflow_run_id),
        )
    return report


def _log_to_run(
    uri: str, run_id: str, report: dict[str, Any], files: list[Path], *, explicit: bool
) -> bool:
    """Log into the run; a run id read from the codes may live in another store: warn, don't
    fail."""
    try:
        tracking.log_report(uri, run_id, mlflow_metrics(report), files)
    except MlflowException as err:
        if explicit:
            raise ValueError(
                f"cannot log the report to MLflow run {run_id}: {err.message}"
            ) from err
        log.warning(
            "MLflow run %s (named in the codes) is not in this tracking store; the report was not "
            "logged. Set MLFLOW_TRACKING_URI to the store the model was trained with.",
            run_id,
        )
        return False
    return True


def mlflow_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's numbers as MLflow metric names: ``eval_`` prefix, ``_top<k>`` on cut-off
    mAPs."""
    suffix = "" if report["topk"] is None else f"_top{report['topk']}"
    r = report["radius"]
    values = {
        f"eval_map_tie_aware{suffix}": report["map_tie_aware"],
        f"eval_map_id_order{suffix}": report["map_id_order"],
        f"eval_precision_radius_{r}": report[f"precision_radius_{r}"],
        f"eval_mean_returned_radius_{r}": report[f"mean_returned_radius_{r}"],
    }
    values.update({f"eval_precision_at_{n}": p for n, p in report["precision_at_n"].items()})
    return values


def _shared_metadata(query: Codes, db: Codes) -> dict[str, str]:
    """Metadata both sides agree on; codes of different bit lengths or models cannot be compared."""
    for key in ("bits", "model_version"):
        a, b = query.metadata.get(key), db.metadata.get(key)
        if a is not None and b is not None and a != b:
            raise ValueError(
                f"query and database codes differ in {key}: {a} vs {b}; encode both with one model"
            )
    if query.label_values is None or db.label_values is None:
        raise ValueError("evaluation needs labels in both query and database codes")
    return {**db.metadata, **query.metadata}


def _num_classes(query: Codes, db: Codes) -> int:
    """Classes from the codes metadata, else the largest label seen + 1."""
    declared = query.metadata.get("num_classes") or db.metadata.get("num_classes")
    if declared is not None:
        return int(declared)
    seen = [int(c.label_values.max()) for c in (query, db) if len(c.label_values)]
    return max(seen, default=-1) + 1


def _render(report: dict[str, Any], directory: Path, *, html: bool = False) -> list[Path]:
    """Write report.json, pr_curve.png and precision_at_n.png (and with ``html`` report.html)
    into ``directory``; their paths."""
    title = f"{report['method'] or 'codes'}, {report['bits']} bits, {report['n_queries']} queries"
    curve = report["pr_curve"]
    pr = _plot(
        curve["recall"],
        curve["precision"],
        "recall",
        "precision",
        f"{title}\nprecision-recall over Hamming radius 0..{report['bits']}",
    )
    ns = [int(n) for n in report["precision_at_n"]]
    p_at = _plot(
        ns,
        list(report["precision_at_n"].values()),
        "N (id-order ranking)",
        "precision@N",
        f"{title}\nprecision of the first N",
    )
    outputs = {
        REPORT_FILE: (json.dumps(report, indent=2, sort_keys=True) + "\n").encode(),
        "pr_curve.png": pr,
        "precision_at_n.png": p_at,
    }
    if html:
        plots = {"precision-recall over Hamming radius": pr, "precision of the first N": p_at}
        outputs[REPORT_HTML] = render_report_html(report, plots).encode()
    for name, data in outputs.items():
        (directory / name).write_bytes(data)
    return [directory / name for name in outputs]


def _plot(x: list, y: list, xlabel: str, ylabel: str, title: str) -> bytes:
    """One line plot as PNG bytes; a bare ``Figure`` renders with Agg and leaves pyplot
    untouched."""
    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.add_subplot()
    ax.plot(x, y, marker="o", markersize=3)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
