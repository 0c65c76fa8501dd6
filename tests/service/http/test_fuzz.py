"""Schemathesis against the live HTTP app: requests generated from the server's own OpenAPI
schema (valid ones, and ones that break it) to every operation, a bounded number each;
none may get a 5xx, except the 504 a request asks for with a timeout_ms shorter than
its forward (the generator likes 5e-324 ms)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from service.app import create_app
from service.config import ModelConfig, Settings

NAMES = ("llama-scalar", "llama-helpsteer", "qwen2-prm")
EXAMPLES_PER_OPERATION = 40
SKIPPED = {"/v1/admin/canary"}  # re-scores the golden set on every call: covered by its own tests

# The schema does not depend on the models, so a server that never starts gives it.
schema = schemathesis.openapi.from_dict(
    create_app(Settings(models=[ModelConfig(name=n, path=f"/nonexistent/{n}") for n in NAMES])).openapi())
schema.config.generation.update(modes=list(schemathesis.GenerationMode))  # valid requests and invalid ones


@pytest.fixture(scope="module")
def base_url(served):
    with served(NAMES, server={"max_items_per_request": 64}) as server:
        yield server.url


@schema.exclude(path=list(SKIPPED)).parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_5xx(case, base_url):
    response = case.call(base_url=base_url, timeout=60)
    if response.status_code == 504 and response.json()["error"]["code"] == "deadline_exceeded":
        return
    assert response.status_code < 500, f"{case.method} {case.path} {case.body!r:.300}: {response.text[:500]}"
