"""Search service over HTTP vs in-process HammingIndex: top-100 over 1M random 64-bit codes.

Run: ``python benchmarks/serve_latency.py`` (about 4 minutes on 2 cores). Starts a local Ray
(4 logical CPUs), deploys the app without a model in 1 and then 2 shards, and drives
``POST /search`` on loopback with 1, 10 and 50 concurrent clients (asyncio + aiohttp, one
request in flight per client), each cell bounded by a request count and a time limit. The same
queries are timed on an in-process ``HammingIndex`` (one query per call, as the service gets
them), so the serving overhead is visible. The client runs on the same 2 cores as the service.
Writes benchmarks/results/serve_latency.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

from hashing.index import HammingIndex
from pipelines.codes_io import codes_table, write_codes

BITS, K = 64, 100
RESULTS = Path(__file__).parent / "results"
CLIENTS = (1, 10, 50)
SHARDS = (1, 2)


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50 / p99 / mean of latencies, in milliseconds."""
    ms = np.asarray(seconds) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def in_process(codes: np.ndarray, ids: list[str], queries: np.ndarray) -> tuple[dict, HammingIndex]:
    """Per-query latency of HammingIndex.search(one query, K), and the batched cost per query.

    The fastest of three passes over the queries: the machine is shared, and the index's own cost
    is what the HTTP figures are compared with.
    """
    index = HammingIndex(BITS)
    start = time.perf_counter()
    index.add(codes, ids)
    index.search(queries[:1], K)  # builds the code groups
    build_s = time.perf_counter() - start
    passes = []
    for _ in range(3):
        latencies = []
        for query in queries:
            t = time.perf_counter()
            index.search(query[None], K)
            latencies.append(time.perf_counter() - t)
        passes.append(latencies)
    latencies = min(passes, key=sum)
    t = time.perf_counter()
    index.search(queries, K)
    batched_ms = (time.perf_counter() - t) / len(queries) * 1e3
    result = {
        **percentiles(latencies),
        "queries_per_s": len(latencies) / sum(latencies),
        "batched_ms_per_query": batched_ms,
        "build_s": build_s,
        "backend": index.backend,
    }
    return result, index


async def load(url: str, queries: list[str], clients: int, requests: int, seconds: float) -> dict:
    """``clients`` loops, one request in flight each, until ``requests`` or ``seconds`` run out."""
    latencies, failures, sent = [], 0, 0
    deadline = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal failures, sent
        while sent < requests and time.perf_counter() < deadline:
            body = {"code": queries[sent % len(queries)], "k": K}
            sent += 1
            t = time.perf_counter()
            async with session.post(f"{url}/search", json=body) as response:
                await response.read()
                ok = response.status == 200
            latencies.append(time.perf_counter() - t)
            failures += not ok

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return {
        "clients": clients,
        "requests": len(latencies),
        "failures": failures,
        "seconds": elapsed,
        "requests_per_s": len(latencies) / elapsed,
        **percentiles(latencies),
    }


def serve_cells(
    codes_dir: str, queries: np.ndarray, index: HammingIndex, args: argparse.Namespace
) -> list[dict]:
    """Deploy 1 then 2 shards; check one answer against the index; time every client count."""
    import ray
    import requests
    from ray import serve

    from pipelines.serve import ServeArgs, build_app

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    serve.start(
        http_options={"host": "127.0.0.1", "port": port},
        logging_config={"enable_access_log": False},
    )
    hex_queries = [q.tobytes().hex() for q in queries]
    cells = []
    try:
        for shards in SHARDS:
            start = time.perf_counter()
            serve.run(build_app(ServeArgs(codes=codes_dir, shards=shards)), name="bench")
            deploy_s = time.perf_counter() - start
            got = requests.post(f"{url}/search", json={"code": hex_queries[0], "k": K}, timeout=60)
            distances, ids = index.search(queries[:1], K)
            expected = [{"id": i, "distance": int(d)} for d, i in zip(distances[0], ids[0])]
            assert got.json()["results"] == expected, (
                "HTTP answer differs from the in-process index"
            )
            asyncio.run(load(url, hex_queries, 10, 100, 10.0))  # warm-up
            for clients in CLIENTS:
                count = min(args.per_client * clients, args.max_requests)
                cell = asyncio.run(load(url, hex_queries, clients, count, args.seconds))
                cells.append({"shards": shards, "deploy_s": deploy_s, **cell})
                print(
                    f"  {shards} shard(s), {clients:>2} clients: p50 {cell['p50_ms']:.1f} ms, "
                    f"p99 {cell['p99_ms']:.1f} ms, {cell['requests_per_s']:.0f} req/s",
                    flush=True,
                )
            serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
    return cells


def markdown(report: dict) -> str:
    """The results as a markdown table, in-process first."""
    p, cells = report["in_process"], report["serve"]
    start, end = report["load_average_at_start"][0], report["load_average_at_end"][0]
    setting = (
        f"{report['machine']}; loopback HTTP, the client on the same cores; load average "
        f"{start:.1f} at start, {end:.1f} at end (the machine is shared). "
        "`python benchmarks/serve_latency.py`"
    )
    in_proc = (
        f"| in-process HammingIndex ({p['backend']}), one query per call | - | 1 | "
        f"{report['queries']} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['queries_per_s']:.0f} |"
    )
    rows = [in_proc] + [
        f"| HTTP POST /search | {c['shards']} | {c['clients']} | {c['requests']} | "
        f"{c['p50_ms']:.1f} | {c['p99_ms']:.1f} | {c['requests_per_s']:.0f} |"
        for c in cells
    ]
    batched = (
        f"In-process batched ({report['queries']} queries per call): "
        f"{p['batched_ms_per_query']:.2f} ms per query. Failed HTTP requests: "
        f"{sum(c['failures'] for c in cells)}."
    )
    title = f"# Search service: top-{K} over {report['codes']:,} random {BITS}-bit codes"
    header = "| where | shards | clients | requests | p50 ms | p99 ms | requests/s |"
    return "\n".join(
        [
            title,
            "",
            setting,
            "",
            header,
            "|---|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            batched,
            "",
        ]
    )


def main() -> None:
    """Generate the codes, time in-process and over HTTP, write JSON + markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codes", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200, help="distinct random query codes")
    parser.add_argument("--per-client", type=int, default=300, help="requests per client per cell")
    parser.add_argument("--max-requests", type=int, default=3000, help="requests per cell at most")
    parser.add_argument("--seconds", type=float, default=20.0, help="time limit per cell")
    args = parser.parse_args()

    load_at_start = os.getloadavg()
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (args.codes, BITS // 8), dtype=np.uint8)
    ids = [f"{i:07d}" for i in range(args.codes)]
    queries = rng.integers(0, 256, (args.queries, BITS // 8), dtype=np.uint8)
    print(f"in-process HammingIndex, {args.codes:,} codes", flush=True)
    in_proc, index = in_process(codes, ids, queries)
    print(f"  p50 {in_proc['p50_ms']:.2f} ms, p99 {in_proc['p99_ms']:.2f} ms", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        parts = [
            codes_table(ids[i : i + 250_000], codes[i : i + 250_000])
            for i in range(0, args.codes, 250_000)
        ]
        write_codes(f"{tmp}/codes", parts, bits=BITS, metadata={"model_version": "bench"})
        del parts
        cells = serve_cells(f"{tmp}/codes", queries, index, args)
    report = {
        "codes": args.codes,
        "bits": BITS,
        "k": K,
        "queries": args.queries,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
        "in_process": in_proc,
        "serve": cells,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "serve_latency.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
