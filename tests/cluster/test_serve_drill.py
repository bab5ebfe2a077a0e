"""Failure drill of the search service: Shard replicas SIGKILLed under steady load.

A real Serve app (2 shards x 2 replicas) on the session's local Ray; client threads keep posting
``/search`` over HTTP while a replica process of Shard0, found under this test process by its Ray
title as in test_drills.py, is SIGKILLed, then its replacement while requests wait on it. The load
runs on until Serve has replaced both and a few seconds more. Every request must succeed with the
brute-force answer.

Two kills because a replica can die holding a request two ways. Killed as a request reaches it,
before it has told the caller it takes it, Serve's router sends the request elsewhere itself; on
this machine a kill timed to a request's start always landed there. Killed after (the replacement
loading its codes on its first requests holds them for a second or more), the request fails in
the caller unless Search sends it again: without that the drill fails one or more requests.
"""

from __future__ import annotations

import glob
import itertools
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import numpy as np
import pytest
import requests
from cluster_support import descendants, free_port, process_title, running, wait_for

from pipelines.codes_io import codes_table, write_codes

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(420)]

APP = "hashray-drill"
ROWS, BITS, K = 1_000_000, 64, 100  # rows enough that loading a slice takes a while
QUERIES = 8
CLIENTS = 4  # client threads, each posting its next query as soon as one is answered
VICTIM = f"ray::ServeReplica:{APP}:Shard0"  # a replica's title; ".method" follows while it works
BUSY = ".handle_request_with_rejection"  # the title's suffix from the start of a request
LOADING_S = 0.2  # a new replica loads its codes on its first request for longer than this
AFTER_RECOVERY_S = 3.0
RETRY_NOTE = "lost its replica"  # what Search logs when it sends a shard call again


def item_id(row: int) -> str:
    return f"item-{row:07d}"  # zero-padded: ids sort as rows do


def brute_force(codes: np.ndarray, query: np.ndarray, k: int) -> list[dict]:
    """First k rows by (Hamming distance to ``query``, id), in the service's words."""
    distances = np.bitwise_count(codes ^ query).sum(axis=1, dtype=np.int64)
    order = np.lexsort((np.arange(len(codes)), distances))[:k]
    return [{"id": item_id(row), "distance": int(distances[row])} for row in order]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray]:
    """A codes directory of ROWS random codes over two part files; (its path, the codes)."""
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (ROWS, BITS // 8), dtype=np.uint8)
    path = str(tmp_path_factory.mktemp("serve-drill") / "codes")
    halves = np.array_split(np.arange(ROWS), 2)
    tables = [codes_table([item_id(row) for row in rows], codes[rows]) for rows in halves]
    write_codes(path, tables, bits=BITS, metadata={"model_version": "drill"})
    return path, codes


@pytest.fixture(scope="module")
def service(ray_cluster, corpus: tuple[str, np.ndarray]) -> Iterator[str]:
    """The app with 2 shards x 2 replicas behind a free loopback port; its base URL."""
    from ray import serve

    from pipelines.serve import ServeArgs, build_app

    port = free_port()
    serve.start(
        http_options={"host": "127.0.0.1", "port": port},
        logging_config={"enable_access_log": False},
    )
    serve.run(
        build_app(ServeArgs(codes=corpus[0], shards=2, replicas=2)), name=APP, route_prefix="/"
    )
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


class Load:
    """CLIENTS threads posting the queries round robin; every answer kept with when it was sent."""

    def __init__(self, url: str, queries: list[np.ndarray]) -> None:
        self.url, self.queries = url, queries
        self.answers: list[tuple[float, int, int, object]] = []  # (sent, query, status, body)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(CLIENTS)]

    def _client(self, first: int) -> None:
        with requests.Session() as session:
            for n in itertools.count(first):
                if self.stop.is_set():
                    return
                query, sent = n % len(self.queries), time.monotonic()
                try:
                    response = session.post(
                        f"{self.url}/search",
                        timeout=60,
                        json={"code": self.queries[query].tobytes().hex(), "k": K},
                    )
                    body = response.json() if response.ok else response.text[:500]
                    self.answers.append((sent, query, response.status_code, body))
                except requests.RequestException as err:
                    self.answers.append((sent, query, -1, repr(err)))

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(90)


def shard0_replicas() -> set[int]:
    """Pids of the Shard0 replica processes below this test process."""
    return {pid for pid, title in descendants(os.getpid()).items() if title.split(".")[0] == VICTIM}


def kill_when_busy(pids: set[int], after_start: float, timeout: float) -> tuple[int, float]:
    """SIGKILL the first of ``pids`` whose title turns busy (a request reached it), ``after_start``
    seconds later; the lowest pid after ``timeout`` seconds without one. (pid, when it turned busy).

    A title turns busy when a request starts and may stay so after it ends: only the change says
    that a request is being handled now.
    """
    titles = {pid: process_title(pid) for pid in pids}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in sorted(pids):
            title = process_title(pid)
            if title.endswith(BUSY) and not titles[pid].endswith(BUSY):
                started = time.monotonic()
                time.sleep(after_start)
                os.kill(pid, signal.SIGKILL)
                return pid, started
            titles[pid] = title
        time.sleep(0.0005)
    os.kill(min(pids), signal.SIGKILL)
    return min(pids), time.monotonic()


def new_replicas(known: set[int], timeout: float) -> set[int]:
    """The Shard0 replica processes started since ``known`` were (waits for one)."""
    wait_for(lambda: bool(shard0_replicas() - known), timeout, "a new Shard0 replica process")
    return shard0_replicas() - known


def shard0_state() -> dict[str, int]:
    from ray import serve

    return serve.status().applications[APP].deployments["Shard0"].replica_states


def retries_logged(session_dir: str) -> int:
    """Shard calls the Search replica sent again, from its Serve log file."""
    logs = glob.glob(f"{session_dir}/logs/serve/replica_{APP}_Search_*.log")
    return sum(Path(log).read_text(errors="replace").count(RETRY_NOTE) for log in logs)


def test_killed_shard_replica_fails_no_request(ray_cluster, service: str, corpus) -> None:
    _, codes = corpus
    rng = np.random.default_rng(1)
    queries = [codes[row] for row in rng.choice(ROWS, QUERIES // 2, replace=False)]
    queries += list(rng.integers(0, 256, (QUERIES - len(queries), BITS // 8), dtype=np.uint8))
    expected = [brute_force(codes, query, K) for query in queries]
    session_dir = ray_cluster.address_info["session_dir"]
    retries_before = retries_logged(session_dir)

    first = shard0_replicas()
    assert len(first) == 2 and shard0_state() == {"RUNNING": 2}, (first, shard0_state())
    with Load(service, queries) as load:
        wait_for(lambda: len(load.answers) >= 40, 120, "40 answers before the kill")
        # 1. a replica as a request reaches it: Serve itself sends what it had not taken elsewhere
        victim, _ = kill_when_busy(first, 0.0, timeout=30)
        killed_at, answered_before = time.monotonic(), len(load.answers)
        # 2. its replacement while its first requests wait for it to load the codes: taken
        # requests die with it, and only Search's resend saves them
        replacement = new_replicas(first, timeout=150)
        second_victim, back_at = kill_when_busy(replacement, LOADING_S, timeout=60)
        second_killed_at = time.monotonic()
        wait_for(
            lambda: (
                bool(shard0_replicas() - first - replacement) and shard0_state() == {"RUNNING": 2}
            ),
            150,
            "both replicas replaced",
        )
        recovered_at = time.monotonic()
        time.sleep(AFTER_RECOVERY_S)
    after = shard0_replicas()
    newest = sorted(after - first - replacement)

    answers = load.answers
    failed = [(status, body) for _, _, status, body in answers if status != 200]
    outage = [a for a in answers if killed_at <= a[0] < recovered_at]
    later = [a for a in answers if a[0] >= recovered_at]
    retries = retries_logged(session_dir) - retries_before
    print(
        f"killed Shard0 replica pid {victim}; its replacement {second_victim} took requests "
        f"{back_at - killed_at:.1f} s later and was killed {LOADING_S} s after; both replaced "
        f"{recovered_at - second_killed_at:.1f} s later by {newest}; "
        f"requests {len(answers)} ({answered_before} before the first kill, {len(outage)} sent "
        f"until recovery, {len(later)} after), failed {len(failed)}, shard calls sent again "
        f"{retries}"
    )

    assert not failed, failed[:3]
    for _, query, _, body in answers:
        assert body["results"] == expected[query], query
    assert second_victim in replacement, (second_victim, replacement)
    assert not running(victim) and not running(second_victim), (victim, second_victim)
    assert len(after) == 2 and newest and not {victim, second_victim} & after, after
    assert outage and later, (len(outage), len(later))
    assert retries >= 1, "no shard call was sent again: the second kill caught no request"
