"""``hashray demo``: the whole life cycle on the bundled MNIST digits, on a local Ray.

prepare (mnist5k) -> train (Ray Train, MLflow) -> encode (Ray Data) -> evaluate -> one query,
and with ``serve`` the search service on the result (the page at its URL) until Ctrl-C.
Everything lands under one folder; re-running reuses finished stages (training resumes or returns
the finished run, prepare and encode rewrite identical files).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hashing.index import HammingIndex
from pipelines import cluster
from pipelines.codes_io import read_codes
from pipelines.config import TrainConfig, load_train_config
from pipelines.encode import encode
from pipelines.evaluate import evaluate
from pipelines.prepare import prepare
from pipelines.train import train

__all__ = ["run_demo"]

# The recipe that wins on mnist5k (docs/recipes.md), so the demo shows the headline number.
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "mnist5k-adsh-48-tuned.yaml"


def run_demo(
    out: str = "hashray-demo",
    method: str = "adsh",
    bits: int | None = None,
    epochs: int | None = None,
    workers: int = 1,
    quiet: bool = False,
    serve: bool = False,
    port: int = 8000,
) -> dict[str, Any]:
    """Run every stage into ``out``; returns the evaluation report (what ``--json`` prints).

    With ``serve``, then serves the database codes with the model and the prepared images on
    127.0.0.1:``port`` until SIGINT/SIGTERM; the report gains ``service`` (its URL and info).
    """
    root = Path(out).resolve()
    say = (
        (lambda *a: print(*a, file=sys.stderr, flush=True))
        if quiet
        else (lambda *a: print(*a, flush=True))
    )
    cluster.connect()
    try:
        data = str(root / "data" / "mnist5k")
        say(f"[1/5] prepare: bundled MNIST digits -> {data}")
        prepare("mnist5k", data, progress=not quiet)

        config = _demo_config(data, root, method, bits, epochs, workers)
        say(
            f"[2/5] train: {method}, {config.recipe.bits} bits, {config.recipe.epochs} epochs, "
            f"{workers} Ray Train worker(s)"
        )
        run = train(config, progress=not quiet)

        codes = str(root / "codes" / f"mnist5k-{method}-{config.recipe.bits}")
        say(f"[3/5] encode: query and database images -> {codes}")
        encode(data, run["model_dir"], codes, progress=not quiet)

        say("[4/5] evaluate")
        report = evaluate(
            codes, mlflow_run_id=run["mlflow_run_id"], tracking_uri=run["tracking_uri"], html=True
        )
        say("[5/5] query: the first query digit's nearest database codes")
        report["example_query"] = _example_query(codes)
        say(_summary(report, run, root))
        if serve:
            report["service"] = _serve(codes, run["model_dir"], data, port, say)
    finally:
        cluster.shutdown()  # stops only a Ray that connect() started
    return report


def _serve(codes: str, model: str, data: str, port: int, say: Callable[..., None]) -> dict:
    """The search service on the demo's database codes, model and images, until Ctrl-C."""
    from pipelines.serve import ServeArgs, run_service

    def ready(url: str, info: dict[str, Any]) -> None:
        say(
            f"\nsearch service: {info['codes']} {info['bits']}-bit codes with the model and the "
            f"prepared images\n  open {url}/ in a browser (API docs at {url}/docs); Ctrl-C stops"
        )

    args = ServeArgs(codes=f"{codes}/database", model=model, data=data)
    return run_service(args, port=port, on_ready=ready)


def _demo_config(
    data: str, root: Path, method: str, bits: int | None, epochs: int | None, workers: int
) -> TrainConfig:
    overrides = {
        "method": method,
        "bits": bits,
        "epochs": epochs,
        "workers": workers,
        "out": str(root / "runs"),
        "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
    }
    return load_train_config(DEMO_CONFIG, data, overrides)


def _example_query(codes_dir: str, k: int = 5) -> dict[str, Any]:
    queries, database = read_codes(f"{codes_dir}/query"), read_codes(f"{codes_dir}/database")
    index = HammingIndex(database.bits)
    index.add(database.codes, database.ids)
    distances, ids = index.search(queries.codes[:1], k)
    label_of = dict(zip(database.ids.tolist(), database.labels))
    return {
        "query_id": str(queries.ids[0]),
        "query_labels": list(map(int, queries.labels[0])),
        "results": [
            {"id": str(i), "distance": int(d), "labels": list(map(int, label_of[i]))}
            for d, i in zip(distances[0], ids[0], strict=True)
        ],
    }


def _summary(report: dict[str, Any], run: dict[str, Any], root: Path) -> str:
    example = report["example_query"]
    hits = ", ".join(
        f"{r['id']} (d={r['distance']}, label {r['labels']})" for r in example["results"]
    )
    return "\n".join(
        [
            "",
            (
                f"hashray demo: {report['method']} {report['bits']} bits on mnist5k "
                f"({report['n_queries']} queries x {report['n_database']} database codes)"
            ),
            f"  mAP@all tie-aware   {report['map_tie_aware']:.4f}",
            f"  mAP@all id order    {report['map_id_order']:.4f}",
            f"  precision @ r<=2    {report['precision_radius_2']:.4f}",
            f"  query {example['query_id']} (label {example['query_labels']}) -> {hits}",
            "",
            f"outputs under {root}:",
            f"  model    {run['model_dir']}",
            f"  codes    {report['codes']['query']}, {report['codes']['database']}",
            f"  report   {Path(report['codes']['query']).parent / 'report.json'} (and report.html)",
            (
                f"  MLflow   mlflow ui --backend-store-uri sqlite:///{root / 'mlflow.db'}   "
                f"(run {run['mlflow_run_id']})"
            ),
        ]
    )


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run_demo(), indent=2, default=str))
