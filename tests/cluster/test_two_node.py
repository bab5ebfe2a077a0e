"""A real two-node Ray cluster on one machine: ``ray start --head`` plus a second ``ray start
--address`` node with its own custom resource ``node_b``, each with 2 CPUs and its own ports.

The work runs in a separate driver process (two_node_driver.py) with ``RAY_ADDRESS`` set, as a
user's commands would: this test process may hold a ``ray.init`` of its own. Teardown stops only
the process groups this test started (``ray stop`` would stop every cluster on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_support import PER_CLASS, free_port, stop_process_tree, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]

RAY = str(Path(sys.executable).parent / "ray")
DRIVER = Path(__file__).with_name("two_node_driver.py")


def node_ports() -> list[str]:
    """Fresh ports for everything a node listens on, so nothing meets another cluster's defaults."""
    names = (
        "node-manager-port",
        "object-manager-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
    )
    return [f"--{name}={free_port()}" for name in names]


def accepts(port: int) -> bool:
    """True once something listens on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[str]:
    """Head (2 CPUs, dashboard for the state API) and node B (2 CPUs, ``node_b``); the address."""
    # Ray's socket paths live under the temp dir and must stay short: not under pytest's tmp_path.
    temp = Path(tempfile.mkdtemp(prefix="hr2n-", dir="/tmp"))
    # Token authentication stays on (the token in ~/.ray): a client that names an address does not
    # turn it on by itself, so every process here says so.
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "token"}
    port = free_port()
    common = [
        "--block",
        "--num-cpus=2",
        "--node-ip-address=127.0.0.1",
        "--disable-usage-stats",
        f"--object-store-memory={200 * 1024**2}",
    ]
    head_args = [
        "--head",
        f"--port={port}",
        f"--temp-dir={temp}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
    ]
    nodes = []
    try:
        with open(temp / "head.log", "wb") as log:
            nodes.append(
                subprocess.Popen(
                    [RAY, "start", *head_args, *common, *node_ports()],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        wait_for(lambda: accepts(port), 90, "the head node's GCS")
        with open(temp / "node_b.log", "wb") as log:
            nodes.append(
                subprocess.Popen(
                    [
                        RAY,
                        "start",
                        f"--address=127.0.0.1:{port}",
                        '--resources={"node_b": 1}',
                        *common,
                        *node_ports(),
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        yield f"127.0.0.1:{port}"
    finally:
        survivors = [pid for node in reversed(nodes) for pid in stop_process_tree(node)]
        shutil.rmtree(temp, ignore_errors=True)
        assert not survivors, f"processes of the two-node cluster still running: {survivors}"


def test_train_encode_and_serve_span_both_nodes(
    two_nodes: str, digits_folder: Path, tmp_path: Path
) -> None:
    result_path = tmp_path / "result.json"
    env = {**os.environ, "RAY_ADDRESS": two_nodes, "RAY_AUTH_MODE": "token"}
    done = subprocess.run(
        [
            sys.executable,
            str(DRIVER),
            str(digits_folder),
            str(tmp_path),
            str(result_path),
            str(free_port()),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(result_path.read_text())
    print("two-node stage seconds:", result["seconds"])

    nodes = result["nodes"]
    assert len(nodes) == 2
    (node_b,) = [node for node, resources in nodes.items() if resources.get("node_b") == 1]
    assert all(resources["CPU"] == 2 for resources in nodes.values())

    assert result["prepared_rows"] == 10 * PER_CLASS
    assert result["train"]["status"] == "finished"
    assert len(result["train_workers"]) == 2 and set(result["train_workers"]) == set(nodes)
    assert node_b in result["train_workers"]
    assert result["encoded_images"] == 10 * PER_CLASS
    assert len(result["encode_actors"]) == 2 and set(result["encode_actors"]) == set(nodes)
    for shard, replicas in result["shard_replicas"].items():
        assert len(replicas) == 2 and set(replicas) == set(nodes), shard
    for search in result["searches"]:
        assert search["got"] == search["expected"]
        assert search["got"][0][1] == 0  # the query's own code is in the index
