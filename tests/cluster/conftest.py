"""Fixtures of the cluster tests: a small digits corpus, an S3 server (moto), a real MLflow
tracking server on it, one prepared dataset and one undisturbed 2-worker training run.

The undisturbed run is trained once, against the MLflow server, and is both what the MLflow
end-to-end test inspects and the baseline the failure drills compare with.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_support import (
    ARTIFACT_BUCKET,
    PER_CLASS,
    S3_KEYS,
    drill_config,
    free_port,
    ordered_blocks,
    stop_process_tree,
    wait_for,
)
from shared_helpers import moto_endpoint, write_digit_folder

from pipelines.config import TrainConfig


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder corpus of real digits, one sub-folder per class."""
    return write_digit_folder(tmp_path_factory.mktemp("digits"), PER_CLASS)


@pytest.fixture(scope="session")
def prepared(ray_cluster, digits_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The digits prepared once (protocol of the folder source); its directory."""
    from pipelines.prepare import prepare

    out = str(tmp_path_factory.mktemp("prepared") / "digits")
    prepare("folder", out, path=str(digits_folder), mode="L", image_size=28, progress=False)
    return out


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with the MLflow artifact bucket; its endpoint URL."""
    import boto3

    with moto_endpoint() as endpoint:
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        s3.create_bucket(Bucket=ARTIFACT_BUCKET)
        yield endpoint


@pytest.fixture(scope="session")
def s3_client(s3_endpoint: str):
    """boto3 S3 client for the moto server (the test's own view of the bucket)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


@pytest.fixture(scope="session")
def mlflow_server(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` with a sqlite backend and artifacts proxied to s3://mlflow/artifacts.

    Clients only talk HTTP to it (``mlflow-artifacts:/`` URIs); the server alone holds the S3
    endpoint and keys, as on a cluster. Its URL.
    """
    import requests

    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {
        **os.environ,
        **S3_KEYS,
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        # no background job runners (GenAI jobs): they cost seconds and a dozen processes
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        f"s3://{ARTIFACT_BUCKET}/artifacts",
    ]
    url = f"http://127.0.0.1:{port}"
    with open(root / "server.log", "wb") as log:
        server = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

        def healthy() -> bool:
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
            try:
                return requests.get(f"{url}/health", timeout=2).ok
            except requests.RequestException:
                return False

        try:
            wait_for(healthy, 90, "the MLflow tracking server")
            yield url
        finally:
            stop_process_tree(server)


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the undisturbed run and the drills keep their run folders."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def undisturbed_run(
    ray_cluster, prepared: str, mlflow_server: str, runs_dir: Path
) -> tuple[TrainConfig, dict]:
    """(config, summary) of a 2-worker run that nothing interrupts, tracked on the MLflow server."""
    from pipelines.train import train

    config = drill_config(prepared, runs_dir, mlflow_server, "undisturbed")
    with ordered_blocks():
        summary = train(config, progress=False)
    assert summary["status"] == "finished"
    return config, summary
