"""Schemathesis against the running search service: every operation of its /openapi.json, with
and without the bearer token, with and without a model, schema-valid and schema-invalid input.

Four Serve apps on the session's real local Ray, each behind real HTTP: no answer may be a 5xx,
every 4xx carries a JSON ``detail``, and status, content type and body match what the schema the
service itself publishes declares. Generation is derandomized (the same examples every run) and
bounded: ``EXAMPLES`` per operation, generation mode and app, at most ``BUDGET_S`` seconds in all.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import requests
import schemathesis
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from shared_helpers import save_model_dir, start_serve_on_loopback
from test_serve import BITS, SIDE, TOKEN, tied_codes, write_version

from hashing.models import build

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]

# Per (app, operation, generation mode, token sent or not): 60 runs that can vary (a GET without
# parameters has no invalid form), at most 480 requests; measured: 4xx of every declared kind.
EXAMPLES = 8
BUDGET_S = 180
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# (route prefix, with a model, with the token)
APPS = [("/tm", True, True), ("/t", False, True), ("/m", True, False), ("/p", False, False)]


@pytest.fixture(scope="module")
def services(ray_cluster, tmp_path_factory):
    """The four apps (token on/off x model on/off) on one Serve HTTP proxy; {prefix: base URL}."""
    from ray import serve

    from pipelines.serve import ServeArgs, build_app

    root = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    save_model_dir(build("smallcnn", bits=BITS, in_channels=1), root / "model", side=SIDE)
    rng = np.random.default_rng(3)
    codes = write_version(
        root / "codes", tied_codes(rng, "i-", 200, 30, BITS // 8), model_version="test"
    )
    url = start_serve_on_loopback()
    for prefix, with_model, with_token in APPS:
        args = ServeArgs(
            codes=codes,
            model=str(root / "model") if with_model else None,
            api_token=TOKEN if with_token else "",
        )
        serve.run(build_app(args), name=f"fuzz{prefix.replace('/', '-')}", route_prefix=prefix)
    yield {prefix: f"{url}{prefix}" for prefix, _, _ in APPS}
    serve.shutdown()


def test_every_operation_survives_the_fuzzer(services):
    start, calls, statuses = time.monotonic(), [], {}
    for prefix, with_model, with_token in APPS:
        url = services[prefix]
        schema = schemathesis.openapi.from_dict(
            requests.get(f"{url}/openapi.json", timeout=30).json()
        )
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} >= {"/healthz", "/info", "/search", "/encode"}
        # with the token on, half the runs send it and half do not (every guarded route: 401)
        headers_tried = [{"Authorization": f"Bearer {TOKEN}"}, {}] if with_token else [{}]
        for operation in operations:
            for mode in GenerationMode:
                for headers in headers_tried:
                    run = _fuzz(operation, mode, url, headers, calls, statuses)
                    try:
                        run()
                    except Unsatisfiable:  # nothing to make invalid: no parameters, no body
                        assert mode is GenerationMode.NEGATIVE and operation.method == "get"
        assert time.monotonic() - start < BUDGET_S, f"{len(calls)} calls so far"
    total = len(calls)
    print(
        f"schemathesis: {total} requests in {time.monotonic() - start:.0f} s; statuses {statuses}"
    )
    assert total >= 300  # 480 at most; hypothesis stops early where it runs out of new values
    assert 500 not in statuses and not any(status >= 500 for status in statuses)
    assert {200, 401, 422} <= set(statuses)


def _fuzz(operation, mode, url, headers, calls, statuses):
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        response = case.call(base_url=url, headers=headers, timeout=30)
        calls.append(response.status_code)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        case.validate_response(response, checks=CHECKS, headers=headers)
        if 400 <= response.status_code < 500:
            body = response.json()
            assert isinstance(body, dict) and body.get("detail"), response.text

    return run
