"""Ray Serve app: an image encoder and sharded exact Hamming search over HTTP.

- ``shard``: the ``Shard`` deployment, one slice of a codes directory per codes version.
- ``encoder``: the ``Encoder`` deployment, uploaded images -> packed codes with the model.
- ``ingress``: the ``Search`` ingress, fan-out to every shard, exact merge, hot swap of versions.
- ``http``: its FastAPI routes, request and response schemas, bearer token, body limits.
- ``app``: ``ServeArgs``, ``build_app`` (the ``pipelines.serve:build_app`` import path that
  infra/serve/ and infra/kuberay/ deploy), ``check_deployable``, ``run_service``, ``swap_codes``.
"""

from pipelines.serve.app import (
    APP_NAME,
    ServeArgs,
    build_app,
    check_deployable,
    run_service,
    swap_codes,
)
from pipelines.serve.http import TOKEN_ENV, Refused

__all__ = [
    "APP_NAME",
    "TOKEN_ENV",
    "Refused",
    "ServeArgs",
    "build_app",
    "check_deployable",
    "run_service",
    "swap_codes",
]
