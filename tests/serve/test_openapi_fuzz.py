"""Schemathesis against the served OpenAPI spec: whatever it generates, never a 5xx.

Driven through hypothesis directly instead of ``schema.parametrize()``: schemathesis' pytest
plugin (4.32) fails on pytest 9 (``'Function' object has no attribute '_nodeid'``).
"""

from __future__ import annotations

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.serve.conftest import TOKEN, running_server  # noqa: E402

AUTH = {"Authorization": f"Bearer {TOKEN}"}
OPERATIONS = [("POST", "/v1/models/{name}:predict"), ("GET", "/v1/models/{name}"), ("GET", "/v1/models"),
              ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"),
              ("GET", "/v2"), ("GET", "/v2/health/live"), ("GET", "/v2/health/ready"), ("GET", "/v2/models/{name}"),
              ("GET", "/v2/models/{name}/versions/{version}"), ("GET", "/v2/models/{name}/ready"),
              ("GET", "/v2/models/{name}/config"), ("GET", "/v2/models/{name}/versions/{version}/config"),
              ("GET", "/v2/models/{name}/versions/{version}/ready"), ("POST", "/v2/models/{name}/infer"),
              ("POST", "/v2/models/{name}/versions/{version}/infer")]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def served(model_dir):
    with running_server(model_dir, token=TOKEN, max_batch=8, max_delay_ms=1, max_body_bytes=256 * 1024,
                        max_pixels=1_000_000) as srv:
        yield srv, schemathesis.openapi.from_url(f"{srv.url}/openapi.json", headers=AUTH)


def test_spec_lists_every_operation(served):
    _, schema = served
    assert {(m.upper(), p) for p, ops in schema.raw_schema["paths"].items() for m in ops} == set(OPERATIONS)


# Negative data (schema-violating parameters and bodies) only exists where there are parameters.
CASES = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + [
    (m, p, GenerationMode.NEGATIVE) for m, p in OPERATIONS if "{name}" in p]


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_no_5xx_and_responses_match_the_spec(served, method, path, mode):
    srv, schema = served
    operation = schema[path][method]
    examples = 40 if method == "POST" else 10

    @given(case=operation.as_strategy(mode))
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case):
        case.call_and_validate(headers=AUTH, checks=CHECKS)

    run()
    assert httpx.post(f"{srv.url}/v1/models/tiny_nhwc:predict", json={"instances": [[[[0.0] * 3] * 8] * 8]},
                      headers=AUTH).status_code == 200  # still serving
