"""Driver of the two-node test, run as its own process with ``RAY_ADDRESS`` set to the cluster.

It prepares a folder corpus, trains with 2 workers, encodes with 2 actors and serves the codes in
2 shards of 2 replicas, then writes where every worker, actor and replica ran (and the search
answers) as JSON:

    python two_node_driver.py CORPUS_DIR OUT_DIR RESULT_JSON HTTP_PORT

Each training worker asks for 1.5 of a node's 2 CPUs, so the two cannot share a node: the same
constraint that one GPU per worker on one-GPU nodes puts on a real cluster.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray
import ray.data
import requests
from ray import serve
from ray.util.state import list_actors

from hashing.recipe import Recipe
from pipelines.cluster import connect
from pipelines.config import TrainConfig
from pipelines.encode import encode
from pipelines.prepare import prepare
from pipelines.serve import APP_NAME, ServeArgs, build_app
from pipelines.train import train


def alive_nodes() -> dict[str, dict[str, float]]:
    """Node id -> resources of every live node."""
    return {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}


def actor_nodes(class_fragment: str) -> list[str]:
    """Node ids of the actors (live or finished) whose class name contains ``class_fragment``.

    Actors that were never placed on a node (an autoscaling pool may cancel one it asked for)
    have no node and are left out.
    """
    actors = list_actors(limit=10_000, raise_on_missing_output=False)
    return sorted(a.node_id for a in actors if class_fragment in a.class_name and a.node_id)


def brute_force_top_k(codes: np.ndarray, ids: list[str], query: np.ndarray, k: int) -> list[list]:
    """Exact top-k [id, distance] pairs by (distance, id), by XOR and bit counting."""
    distances = np.unpackbits(codes ^ query, axis=1).sum(axis=1)
    return sorted(
        ([i, int(d)] for i, d in zip(ids, distances, strict=True)), key=lambda h: (h[1], h[0])
    )[:k]


class Stopwatch:
    """Seconds per named stage: ``with watch("train"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[stage] = round(time.perf_counter() - start, 1)


def main(corpus: str, out: str, result_path: str, http_port: int) -> None:
    """Prepare, train, encode and serve on the cluster in ``RAY_ADDRESS``; write the placements as
    JSON."""
    watch = Stopwatch()
    with watch("connect"):
        started_here = connect()
    if started_here:
        raise RuntimeError("RAY_ADDRESS must name a running cluster; a local one was started")
    deadline = time.monotonic() + 60
    while len(alive_nodes()) < 2:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the second node never joined: {alive_nodes()}")
        time.sleep(0.5)

    data = f"{out}/data"
    with watch("prepare"):
        prepared = prepare("folder", data, path=corpus, mode="L", image_size=28, progress=False)
    config = TrainConfig(
        data=data,
        recipe=Recipe(epochs=1, batch_size=32, val_fraction=0.15),
        out=f"{out}/runs",
        name="two-node",
        workers=2,
        cpus_per_worker=1.5,
        tracking_uri=f"sqlite:///{out}/mlflow.db",
    )
    with watch("train"):
        trained = train(config, progress=False)
    # Both pool actors start before any batch is sent: 300 images are encoded before a late second
    # actor would be placed, and the test is about where the two actors run.
    ray.data.DataContext.get_current().wait_for_min_actors_s = 120
    with watch("encode"):
        encoded = encode(
            data, trained["model_dir"], f"{out}/codes", num_actors=2, actor_cpus=0.5, progress=False
        )

    # Serve: the proxy on the head only (both "nodes" share this machine's ports).
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": http_port})
    with watch("serve_deploy"):
        serve.run(
            build_app(ServeArgs(codes=f"{out}/codes/database", shards=2, replicas=2, cpus=0.25)),
            name=APP_NAME,
            route_prefix="/",
        )
    database = pq.read_table(f"{out}/codes/database")
    ids = database["id"].to_pylist()
    codes = np.frombuffer(b"".join(database["code"].to_pylist()), np.uint8).reshape(len(ids), -1)
    searches = []
    for row in (0, len(ids) // 2, len(ids) - 1):
        answer = requests.post(
            f"http://127.0.0.1:{http_port}/search",
            json={"code": codes[row].tobytes().hex(), "k": 10},
            timeout=60,
        )
        answer.raise_for_status()
        searches.append(
            {
                "got": [[h["id"], h["distance"]] for h in answer.json()["results"]],
                "expected": brute_force_top_k(codes, ids, codes[row], 10),
            }
        )
    shards = {f"Shard{i}": actor_nodes(f"ServeReplica:{APP_NAME}:Shard{i}") for i in range(2)}
    serve.shutdown()

    result = {
        "nodes": alive_nodes(),
        "prepared_rows": prepared["counts"]["kept"],
        "train": trained,
        "train_workers": actor_nodes("RayTrainWorker"),
        "encoded_images": encoded["images"],
        "encode_actors": actor_nodes("MapWorker"),
        "shard_replicas": shards,
        "searches": searches,
        "seconds": watch.seconds,
    }
    Path(result_path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
