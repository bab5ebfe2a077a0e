"""Fixtures shared by the pipeline tests: an S3 server (moto, on 127.0.0.1)."""

from __future__ import annotations

import urllib.request

import pytest
from shared_helpers import moto_endpoint


@pytest.fixture
def s3_bucket(monkeypatch):
    """An empty bucket ``corpus`` on a moto server, with the S3 environment hashray reads."""
    boto3 = pytest.importorskip("boto3")
    with moto_endpoint() as endpoint:
        environment = {
            "AWS_ENDPOINT_URL_S3": endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
        }
        for key, value in environment.items():
            monkeypatch.setenv(key, value)
        # Every moto server in this process shares one store: empty it, or tests see each other.
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"))
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="corpus")
        yield client
