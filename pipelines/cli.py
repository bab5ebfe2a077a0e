"""The ``hashray`` command: registers one sub-command per pipeline stage.

Each command parses its options and calls one pipeline function; ``--json`` prints that function's
result on stdout. Ray starts locally unless ``RAY_ADDRESS`` names a cluster; MLflow uses a local
sqlite store unless ``MLFLOW_TRACKING_URI`` is set.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["main"]

Command = Callable[[argparse.Namespace], dict[str, Any]]
# The names of pipelines.sources.list_sources(), spelled out so that `--help` does not import Ray
# (a test keeps the two in step).
SOURCE_NAMES = (
    "mnist5k",
    "mnist",
    "fashion-mnist",
    "cifar10",
    "nuswide",
    "folder",
    "manifest",
    "parquet",
    "webdataset",
)


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hashray",
        description="Deep supervised image hashing on Ray: prepare, train, encode, evaluate.",
        epilog=_examples("hashray demo", "hashray train --help"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    parser.add_argument(
        "--s3-endpoint",
        metavar="URL",
        help="S3-compatible endpoint for s3:// paths (default: $AWS_ENDPOINT_URL_S3 or AWS)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, help_text: str, examples: list[str], run: Command
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_examples(*examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
        sub.set_defaults(run=run)
        return sub

    p = command(
        "prepare",
        "Decode, validate and split an image corpus into Parquet shards.",
        [
            "hashray prepare --source mnist5k --out data/mnist5k",
            "hashray prepare --source folder --path photos/ --out data/photos --image-size 64",
            (
                "hashray prepare --source cifar10 --path cifar-10-batches-py --protocol cifar10-1k "
                "--out data/c10"
            ),
            (
                "hashray prepare --source parquet --path s3://b/table/ --option image_column=jpeg "
                "--out s3://b/prep"
            ),
            (
                "hashray --s3-endpoint http://127.0.0.1:9000 prepare --source folder "
                "--path s3://b/photos --out out"
            ),
        ],
        _prepare,
    )
    p.add_argument("--source", required=True, help=f"one of: {', '.join(SOURCE_NAMES)}")
    p.add_argument("--path", help="corpus location (local or s3://) for file-based sources")
    p.add_argument("--out", required=True, help="output directory (local or s3://)")
    p.add_argument(
        "--protocol", help="evaluation protocol (docs/evaluation.md); default per source"
    )
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--image-size", type=int, help="resize to SIZE x SIZE pixels")
    p.add_argument("--mode", choices=["L", "RGB"], help="colour mode to store")
    p.add_argument("--classes", help="comma-separated class list (manifest source)")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a source setting, repeatable (parquet: image_column, labels_column, id_column)",
    )

    t = command(
        "train",
        "Train a hashing network with Ray Train; logs to MLflow; resumes on re-run.",
        [
            "hashray train --data data/mnist5k --method adsh --bits 32",
            "hashray train --data data/mnist5k --config configs/mnist5k-adsh-32.yaml --epochs 5",
            (
                "RAY_ADDRESS=auto hashray train --data s3://bucket/cifar --workers 4 "
                "--gpus-per-worker 1"
            ),
        ],
        _train,
    )
    _add_train_options(t)

    e = command(
        "encode",
        "Batch-encode a prepared dataset to binary codes (Parquet) with a trained model.",
        [
            "hashray encode --data data/mnist5k --model runs/mnist5k-adsh-32-x/model --out codes/m",
            "hashray encode --data data/mnist5k --model runs:/<run_id>/model --out codes/m",
        ],
        _encode,
    )
    e.add_argument("--data", required=True, help="prepared dataset directory")
    e.add_argument(
        "--model", required=True, help="model dir, runs:/<id>/model or models:/<name>/<version>"
    )
    e.add_argument("--out", required=True, help="codes output directory (one sub-folder per split)")
    e.add_argument("--splits", help="comma-separated splits (default: query,database)")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--actors", type=int, default=1, help="encoder actors (default 1)")
    e.add_argument("--gpus", action="store_true", help="one GPU per encoder actor")
    e.add_argument("--embeddings", action="store_true", help="also store float embeddings")

    v = command(
        "evaluate",
        "Retrieval metrics (tie-aware mAP, P@r2, curves) of encoded queries vs database.",
        [
            "hashray evaluate --codes codes/mnist5k-adsh-32",
            "hashray evaluate --queries codes/a/query --database codes/a/database --json",
            "hashray evaluate --codes codes/mnist5k-adsh-32 --html",
        ],
        _evaluate,
    )
    v.add_argument("--codes", help="encode output directory with query/ and database/")
    v.add_argument("--queries", help="query codes directory")
    v.add_argument("--database", help="database codes directory")
    v.add_argument("--out", help="where report.json and plots go (default: the codes directory)")
    v.add_argument("--radius", type=int, default=2, help="Hamming radius for precision (default 2)")
    v.add_argument("--topk", type=int, help="mAP cut-off (default: all)")
    v.add_argument(
        "--html", action="store_true", help="also write report.html: the table and both plots"
    )
    v.add_argument(
        "--mlflow-run-id", help="log the report to this MLflow run (default: from the codes)"
    )

    d = command(
        "demo",
        "The whole chain on the bundled MNIST digits: prepare, train, encode, evaluate, query.",
        [
            "hashray demo",
            "hashray demo --serve   (then open http://127.0.0.1:8000/)",
            "hashray demo --method sdsh --bits 32 --epochs 20 --out /tmp/demo",
        ],
        _demo,
    )
    d.add_argument("--method", default="adsh", help="hashing method (default adsh)")
    d.add_argument(
        "--bits", type=int, help="code length (default 48: configs/mnist5k-adsh-48-tuned.yaml)"
    )
    d.add_argument("--epochs", type=int, help="training epochs (default: the recipe's)")
    d.add_argument("--workers", type=int, default=1, help="Ray Train workers (default 1)")
    d.add_argument("--out", default="hashray-demo", help="output folder (default ./hashray-demo)")
    d.add_argument(
        "--serve",
        action="store_true",
        help="then serve the results with the search page until Ctrl-C",
    )
    d.add_argument("--port", type=int, default=8000, help="HTTP port with --serve (default 8000)")
    _add_serve_commands(command)
    return parser


def _add_serve_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    s = command(
        "serve",
        "Serve exact Hamming search (and image encoding with --model) over HTTP until Ctrl-C.",
        [
            "hashray serve --codes codes/mnist5k-adsh-32/database --shards 2",
            "hashray serve --codes codes/m/database --model runs/m/model --shards 2 --replicas 2",
            "hashray serve --codes codes/m/database --model runs/m/model --data data/mnist5k",
            (
                "HASHRAY_API_TOKEN=secret hashray serve --codes s3://bucket/codes/db "
                "--model models:/hashray-m/1"
            ),
        ],
        _serve,
    )
    s.add_argument("--codes", required=True, help="codes directory (local or s3://) to serve")
    s.add_argument(
        "--model", help="model dir, runs:/ or models:/ URI; without it: code and id queries only"
    )
    s.add_argument(
        "--data",
        metavar="PREPARED_DIR",
        help="prepared dataset (local or s3://): item images and labels for /items and the page",
    )
    s.add_argument("--shards", type=int, default=1, help="index shards (default 1)")
    s.add_argument(
        "--replicas", type=int, default=1, help="replicas per shard and encoder (default 1)"
    )
    s.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")

    q = command(
        "search",
        "Query a running search service by hex code, indexed id or image file.",
        [
            "hashray search --code 3fa0c1d2 --k 10",
            "hashray search --image cat.png --radius 2",
            "hashray search --id digits/00042.png --url http://10.0.0.5:8000 --json",
        ],
        _search,
    )
    query = q.add_mutually_exclusive_group(required=True)
    query.add_argument("--code", help="query code in hex")
    query.add_argument("--id", help="query by the code of this indexed id")
    query.add_argument("--image", help="query by this image file (the service needs --model)")
    q.add_argument("--k", type=int, default=10, help="number of results (default 10)")
    q.add_argument("--radius", type=int, help="only results within this Hamming distance")
    q.add_argument(
        "--url", help="service URL (default http://127.0.0.1:8000); token: $HASHRAY_API_TOKEN"
    )


def _add_train_options(t: argparse.ArgumentParser) -> None:
    t.add_argument("--data", help="prepared dataset directory (from hashray prepare)")
    t.add_argument("--config", help="YAML config (see configs/); flags override it")
    t.add_argument("--out", help="runs directory (default ./runs)")
    t.add_argument("--name", help="run name (default: dataset-method-bits-<recipe hash>)")
    t.add_argument("--method", help="loss: see hashing.losses.list_losses()")
    t.add_argument("--bits", type=int, help="code length, a multiple of 8")
    t.add_argument("--backbone", help="smallcnn, alexnet, vgg16, resnet18, resnet50")
    t.add_argument("--pretrained-path", help="local backbone weights (nothing is downloaded)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--workers", type=int, help="Ray Train workers (default 1)")
    t.add_argument("--cpus-per-worker", type=float, help="CPUs per worker (default 0.5)")
    t.add_argument(
        "--gpus-per-worker", type=float, help="GPUs per worker; > 0 trains on GPU with nccl"
    )
    t.add_argument("--max-failures", type=int, help="worker failures to recover from (default 0)")
    t.add_argument("--experiment", help="MLflow experiment (default hashray)")
    t.add_argument("--stop-after-epochs", type=int, help=argparse.SUPPRESS)  # interruption drills


def _prepare(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines import preflight

    options = _key_values(args.option)
    classes = args.classes.split(",") if args.classes else None
    preflight.check_source(args.source, args.path)
    preflight.check_output(args.out)
    from pipelines.cluster import connect
    from pipelines.prepare import prepare

    connect()
    meta = prepare(
        args.source,
        args.out,
        path=args.path,
        protocol=args.protocol,
        seed=args.seed,
        image_size=args.image_size,
        mode=args.mode,
        classes=classes,
        source_options=options,
        progress=not args.json,
    )
    _say(
        args,
        f"prepared {meta['counts']['kept']} images ({meta['counts']['skipped']} skipped) "
        f"-> {args.out}",
    )
    return meta


def _key_values(pairs: list[str]) -> dict[str, str]:
    """``["a=1", "b=2"]`` -> ``{"a": "1", "b": "2"}``; a pair without ``=`` is a usage error."""
    bad = [pair for pair in pairs if "=" not in pair]
    if bad:
        raise UsageError(f"--option takes KEY=VALUE, got {bad[0]!r}")
    return dict(pair.split("=", 1) for pair in pairs)


def _train(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines import preflight
    from pipelines.config import load_train_config

    names = [
        "method",
        "bits",
        "backbone",
        "pretrained_path",
        "epochs",
        "batch_size",
        "lr",
        "seed",
        "workers",
        "cpus_per_worker",
        "gpus_per_worker",
        "max_failures",
        "experiment",
        "out",
        "name",
    ]
    config = load_train_config(args.config, args.data, {n: getattr(args, n) for n in names})
    preflight.check_dataset(config.data)
    if config.out:
        preflight.check_output(config.out)
    from pipelines.cluster import connect
    from pipelines.train import train

    connect()
    summary = train(config, progress=not args.json, stop_after_epochs=args.stop_after_epochs)
    val_map = summary["best_val_map"]
    selected = (
        f"last epoch ({summary['best_epoch']}, no validation split)"
        if val_map is None
        else f"best val mAP {val_map:.4f} (epoch {summary['best_epoch']})"
    )
    _say(
        args,
        f"run {summary['name']}: {summary['status']}, {selected}; "
        f"model {summary.get('model_dir', '-')}",
    )
    return summary


def _encode(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines import preflight

    splits = args.splits.split(",") if args.splits else None
    unknown = sorted(set(splits or ()) - {"train", "query", "database"})
    if unknown:
        raise UsageError(
            f"--splits {args.splits}: no split {unknown[0]!r}; use train, query, database"
        )
    preflight.check_dataset(args.data)
    preflight.check_model(args.model)
    preflight.check_output(args.out)
    from pipelines.cluster import connect
    from pipelines.encode import encode

    connect()
    summary = encode(
        args.data,
        args.model,
        args.out,
        splits=splits,
        batch_size=args.batch_size,
        num_actors=args.actors,
        use_gpu=args.gpus,
        embeddings=args.embeddings,
        progress=not args.json,
    )
    _say(args, f"codes written to {args.out}")
    return summary


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines import preflight
    from pipelines.evaluate import evaluate

    if not args.codes and not (args.queries and args.database):
        raise UsageError("give --codes DIR, or both --queries DIR and --database DIR")
    if args.queries and args.database:
        preflight.check_codes(args.queries, "--queries")
        preflight.check_codes(args.database, "--database")
    else:
        preflight.check_encode_output(args.codes)
    report = evaluate(
        args.codes,
        queries=args.queries,
        database=args.database,
        out=args.out,
        radius=args.radius,
        topk=args.topk,
        mlflow_run_id=args.mlflow_run_id,
        html=args.html,
    )
    _say(args, _report_table(report))
    return report


def _demo(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.demo import run_demo

    return run_demo(
        out=args.out,
        method=args.method,
        bits=args.bits,
        epochs=args.epochs,
        workers=args.workers,
        quiet=args.json,
        serve=args.serve,
        port=args.port,
    )


def _serve(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines import preflight

    preflight.check_codes(args.codes)
    if args.model:
        preflight.check_model(args.model)
    from pipelines.serve import ServeArgs, run_service

    config = ServeArgs(
        codes=args.codes,
        model=args.model,
        shards=args.shards,
        replicas=args.replicas,
        data=args.data,
    )

    def ready(url: str, info: dict[str, Any]) -> None:
        _say(
            args,
            f"serving {info['codes']} {info['bits']}-bit codes (index {info['index_version']}) in "
            f"{args.shards} shard(s) at {url}, docs at {url}/docs; Ctrl-C stops\n"
            f"search page: {url}/",
        )

    result = run_service(config, host=args.host, port=args.port, on_ready=ready)
    _say(args, "hashray serve: stopped")
    return result


def _search(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.search_client import DEFAULT_URL, search

    answer = search(
        args.url or DEFAULT_URL,
        code=args.code,
        item_id=args.id,
        image=args.image,
        k=args.k,
        radius=args.radius,
    )
    rows = "".join(f"\n  {hit['distance']:>8}  {hit['id']}" for hit in answer["results"])
    _say(
        args,
        f"{len(answer['results'])} results (index {answer['index_version']}, model "
        f"{answer['model_version']})\n  distance  id{rows}",
    )
    return answer


def _report_table(report: dict[str, Any]) -> str:
    rows = [
        ("method / bits", f"{report.get('method')} / {report.get('bits')}"),
        ("protocol", str(report.get("protocol"))),
        ("queries x database", f"{report['n_queries']} x {report['n_database']}"),
        ("mAP@all, tie-aware", f"{report['map_tie_aware']:.4f}"),
        ("mAP@all, id order", f"{report['map_id_order']:.4f}"),
        ("precision, radius 2", f"{report['precision_radius_2']:.4f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


class UsageError(ValueError):
    """A command-line mistake: printed as a message, exit status 2."""


def _say(args: argparse.Namespace, text: str) -> None:
    # With --json, stdout carries only the JSON document; human text goes to stderr.
    print(text, file=sys.stderr if args.json else sys.stdout, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hashray`` console script."""
    from pipelines import cluster, console

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    console.configure(args.verbose)
    if args.s3_endpoint:
        from pipelines.storage import use_s3_endpoint

        use_s3_endpoint(args.s3_endpoint)  # before any Ray starts, so its workers inherit it
    log_file = _log_file(args.command)
    try:
        # With --json stdout carries the result alone. Ray prints cluster events on the driver's
        # stdout ("(raylet) A worker died ..."), so while the command runs stdout goes to stderr.
        # interruptible(): SIGTERM unwinds as Ctrl-C does, and the Ray the command started stops
        # with every process it started, whichever way the command ends (its native lines still
        # going to the log file).
        with (
            console.native_stderr_to(log_file),
            cluster.interruptible(),
            contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout),
        ):
            result = args.run(args)
    except (UsageError, ValueError, FileNotFoundError) as err:
        print(f"hashray {args.command}: error: {err}", file=sys.stderr)
        return 2
    except cluster.Interrupted as err:
        print(f"hashray {args.command}: interrupted ({err.signal.name})", file=sys.stderr)
        return 128 + err.signal
    except Exception as err:  # noqa: BLE001 - an internal failure: one line, traceback in the log
        if args.verbose:
            traceback.print_exc()
        _log_traceback(log_file)
        ray_logs = console.ray_log_dir()
        print(
            f"hashray {args.command}: failed: {type(err).__name__}: {_first_line(err)}\n"
            f"  traceback: {log_file}" + (f"\n  Ray logs: {ray_logs}" if ray_logs else ""),
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return 0


def _log_file(command: str) -> Path:
    """Where this run's native Ray lines and any traceback go ($HASHRAY_LOG_DIR or the temp dir)."""
    folder = Path(os.environ.get("HASHRAY_LOG_DIR") or Path(tempfile.gettempdir()) / "hashray-logs")
    return folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def _log_traceback(log_file: Path) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", encoding="utf-8") as log:
        traceback.print_exc(file=log)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"


if __name__ == "__main__":
    sys.exit(main())
