"""Wiring and running the search service: ``ServeArgs`` -> ``build_app`` -> ``run_service``.

``build_app`` binds ``args.shards`` ``Shard`` deployments (``Shard0``, ``Shard1``, ...), an
``Encoder`` when a model is given, and the ``Search`` ingress; nothing runs until Serve deploys it
(``run_service`` here, or ``serve deploy`` with ``pipelines.serve:build_app`` and ``ServeArgs``
as ``args``, infra/serve/ and infra/kuberay/). ``check_deployable`` fails fast on codes that are
incomplete or do not match the model; ``swap_codes`` makes another codes directory live in a
running app. Local paths are made absolute here: replicas do not run in the caller's cwd.
"""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from pipelines.codes_io import read_metadata
from pipelines.contracts import ModelCard
from pipelines.dataset import PreparedDataset
from pipelines.model_store import is_mlflow_uri, resolve_model
from pipelines.serve.encoder import Encoder
from pipelines.serve.http import TOKEN_ENV
from pipelines.serve.ingress import Search, check_identity
from pipelines.serve.shard import Shard

__all__ = ["APP_NAME", "ServeArgs", "build_app", "check_deployable", "run_service", "swap_codes"]

APP_NAME = "hashray"
_QUIET = {"enable_access_log": False}


class ServeArgs(BaseModel):
    """Arguments of ``build_app``; also the ``args:`` of a ``serve build`` config (infra/serve/)."""

    model_config = ConfigDict(extra="forbid")
    codes: str = Field(description="codes directory (local or s3://), from hashray encode")
    model: str | None = Field(
        None, description="model dir, runs:/ or models:/ URI; none: no images"
    )
    shards: int = Field(
        1, ge=1, description="Shard deployments, each a disjoint slice of the codes"
    )
    replicas: int = Field(1, ge=1, description="replicas of each Shard and of the Encoder")
    cpus: float = Field(0.25, gt=0, description="CPUs reserved per replica")
    tracking_uri: str | None = Field(None, description="MLflow store for runs:/ and models:/ URIs")
    api_token: str | None = Field(None, description=f"bearer token; default ${TOKEN_ENV} at build")
    data: str | None = Field(
        None, description="prepared dataset (local or s3://) for item images and labels"
    )


def build_app(args: ServeArgs) -> Application:
    """The app: ``args.shards`` Shards, an Encoder if ``args.model`` is set, the Search ingress."""
    # a failing constructor (missing codes, refused version, bad model URI) is rarely transient:
    # fail the deploy after a few tries instead of Serve's default twenty
    options = {
        "ray_actor_options": {"num_cpus": args.cpus},
        "logging_config": _QUIET,
        "max_constructor_retry_count": 3,
    }
    shards = [
        serve.deployment(Shard, name=f"Shard{i}")
        .options(num_replicas=args.replicas, max_ongoing_requests=256, **options)
        .bind(i, args.shards)
        for i in range(args.shards)
    ]
    encoder = None
    if args.model:
        encoder = (
            serve.deployment(Encoder)
            .options(num_replicas=args.replicas, max_ongoing_requests=64, **options)
            .bind(*_model_source(args))
        )
    token = args.api_token if args.api_token is not None else os.environ.get(TOKEN_ENV)
    search = serve.deployment(Search).options(num_replicas=1, max_ongoing_requests=256, **options)
    data = _local(args.data) if args.data else None
    return search.bind(shards, encoder, _local(args.codes), args.replicas, token or None, data)


def _model_source(args: ServeArgs) -> tuple[str, str | None]:
    """The model URI as replicas can resolve it, and the MLflow store for MLflow URIs."""
    if not is_mlflow_uri(args.model):
        return _local(args.model), args.tracking_uri
    from pipelines.config import default_tracking_uri

    return args.model, args.tracking_uri or default_tracking_uri()


def check_deployable(args: ServeArgs) -> None:
    """Fail fast, before deploying: codes that are incomplete or do not match the model card, a
    ``data`` folder that is not a prepared dataset."""
    codes = _local(args.codes)
    manifest, metadata = read_metadata(codes)
    if args.data:
        PreparedDataset.open(_local(args.data))
    if args.model:
        model, tracking_uri = _model_source(args)
        card = ModelCard.read(resolve_model(model, tracking_uri=tracking_uri))
        found = (manifest.bits, metadata.get("model_version"))
        check_identity(codes, found, (card.bits, card.model_version))


def swap_codes(codes: str, app_name: str = APP_NAME) -> dict[str, Any]:
    """Make ``codes`` the live version of a running app (loaded beside the old one); -> its info."""
    return serve.get_app_handle(app_name).swap.remote(_local(codes)).result()


def run_service(
    args: ServeArgs,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    on_ready: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Deploy on the current Ray (or a local one started here); serve until SIGINT/SIGTERM.

    Serve and the Ray this call started are shut down; on a cluster it joined, only the app goes.
    """
    import ray

    from pipelines.cluster import connect, shutdown, wait_for_stop_signal

    check_deployable(args)
    started = connect()
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config=_QUIET)
        serve.run(build_app(args), name=APP_NAME, route_prefix="/", logging_config=_QUIET)
        url = f"http://{host}:{port}"
        info = serve.get_app_handle(APP_NAME).info.remote().result()
        if on_ready:
            on_ready(url, info)
        wait_for_stop_signal()
    finally:
        if started:
            serve.shutdown()
            shutdown()
        elif ray.is_initialized():
            serve.delete(APP_NAME)
    return {"url": url, "info": info, "stopped": True}


def _local(path: str) -> str:
    """Local paths made absolute (replicas do not run in the caller's cwd); URIs as they are."""
    return path if "://" in path or is_mlflow_uri(path) else str(Path(path).expanduser().resolve())
