"""`GET /metrics` of a live server on the tiny models: request latency by protocol, route
template, model and status (HTTP, KServe v2 HTTP, gRPC rewardserve.v1 and KServe gRPC),
the stage and batch histograms, cache counters per tier, queue depth per priority class,
429 and time-out counters, model status; and label values that stay within the configured
models and the served routes whatever requests send. Scores still equal the unbatched
reference. The model's forward is gated where a test needs it busy; every wait is bounded."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from http_helpers import (
    assert_error,
    assert_result_matches,
    free_port,
    live_server,
    reference,
    sample_items,
    wait_until_loaded,
)
from metrics_helpers import Scrape, scrape
from sched_helpers import GatedForward, intercept_forward, until

from service.app import create_app
from service.config import ModelConfig, Settings
from service.engine.scheduler import Priority
from service.grpc.proto import rewardserve_pb2 as pb
from service.grpc.proto import rewardserve_pb2_grpc as pb_grpc

NAMES = ["llama-scalar", "llama-helpsteer", "qwen2-prm"]
STRANGER = "model-from-a-request-7f3a"  # a name no server configures: must never become a label
TEST_LIMIT_S = 60


def _settings(model_dirs, names, **extra) -> Settings:
    return Settings(models=[ModelConfig(name=n, path=str(model_dirs[n])) for n in names], **extra)


def _serve(app):
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert wait_until_loaded(client).status_code == 200
        yield client


@pytest.fixture(scope="module")
def app(tiny_model_dirs):
    return create_app(_settings(tiny_model_dirs, NAMES, server={"grpc_port": free_port()},
                                batching={"max_batch_size": 8}))


@pytest.fixture(scope="module")
def client(app):
    yield from _serve(app)


@pytest.fixture(scope="module")
def small_queue_app(tiny_model_dirs):
    """llama-scalar alone, queueing at most 3 items, no cache (the test counts forwards)."""
    return create_app(_settings(tiny_model_dirs, ["llama-scalar"], queue={"max_items": 3}, batching={"max_wait_ms": 0},
                                cache={"max_bytes": 0}))


@pytest.fixture(scope="module")
def small_queue_client(small_queue_app):
    yield from _serve(small_queue_app)


def requests_count(s: Scrape, **labels) -> float:
    return s.value("rewardserve_request_duration_seconds_count", **labels) or 0.0


def delta(after: Scrape, before: Scrape, name: str, **labels) -> float:
    return (after.value(name, **labels) or 0.0) - (before.value(name, **labels) or 0.0)


def score(client, model: str, items: list[dict], **options) -> httpx.Response:
    return client.post("/v1/score", json={"model": model, "items": items, **options})


def test_http_latency_by_route_template_model_and_status(client, load_tiny):
    before = scrape(client)
    items = sample_items(load_tiny("llama-scalar"))
    scored = score(client, "llama-scalar", items)
    assert scored.status_code == 200, scored.text
    for result, item in zip(scored.json()["results"], items, strict=True):
        assert_result_matches(result, reference(load_tiny("llama-scalar"), item))
    kserve = client.post("/v2/models/llama-scalar/infer", json={"inputs": [
        {"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["Hi"]},
        {"name": "response", "shape": [1], "datatype": "BYTES", "data": ["Hello!"]}]})
    assert kserve.status_code == 200, kserve.text
    compared = client.post("/v1/compare", json={"model": "llama-helpsteer", "prompt": "Hi",
                                                "responses": ["Hello!", "Go away."]})
    assert compared.status_code == 200, compared.text
    compat = client.post("/score", json={"model": "qwen2-prm", "text_1": "What is 3 + 4?", "text_2": "3 + 4 = 7"})
    assert compat.status_code == 200, compat.text
    assert_error(score(client, STRANGER, [{"prompt": "Hi", "response": "Hello!"}]), 404, "model_not_found", "model")
    assert client.get(f"/v2/models/{STRANGER}/ready").status_code == 404
    assert client.get(f"/no/such/{STRANGER}").status_code == 404
    after = scrape(client)

    def grew(**labels) -> float:
        return requests_count(after, protocol="http", **labels) - requests_count(before, protocol="http", **labels)

    assert grew(endpoint="/v1/score", model="llama-scalar", status="200") == 1
    assert grew(endpoint="/v2/models/{name}/infer", model="llama-scalar", status="200") == 1
    assert grew(endpoint="/v1/compare", model="llama-helpsteer", status="200") == 1
    assert grew(endpoint="/score", model="qwen2-prm", status="200") == 1
    assert grew(endpoint="/v1/score", model="", status="404") == 1  # the unknown model is not a label
    assert grew(endpoint="/v2/models/{name}/ready", model="", status="404") == 1
    assert grew(endpoint="unmatched", model="", status="404") == 1
    assert STRANGER not in after.text
    # a request with a score reached its model's runner: tokenized, and its items counted
    assert delta(after, before, "rewardserve_tokenization_seconds_count", model="llama-scalar") == 2
    assert delta(after, before, "rewardserve_scored_items_total", model="llama-scalar") == len(items) + 1
    assert delta(after, before, "rewardserve_input_tokens_count", model="llama-scalar") == len(items) + 1
    pair_tokens = reference(load_tiny("llama-scalar"), {"prompt": "Hi", "response": "Hello!"}).num_tokens
    assert delta(after, before, "rewardserve_input_tokens_sum", model="llama-scalar") == \
        sum(r["num_tokens"] for r in scored.json()["results"]) + pair_tokens


def test_batches_stages_and_cache_tiers(client, load_tiny):
    model = load_tiny("llama-helpsteer")
    items = [{"prompt": f"Question {i}?", "response": "An answer " * (i + 1)} for i in range(5)]
    before = scrape(client)
    first = score(client, "llama-helpsteer", items)
    middle = scrape(client)
    again = score(client, "llama-helpsteer", items)
    after = scrape(client)
    assert first.status_code == again.status_code == 200
    for result, repeat, item in zip(first.json()["results"], again.json()["results"], items, strict=True):
        assert_result_matches(result, reference(model, item))
        assert repeat["cached"] is True and repeat["score"] == result["score"]

    forwarded = {"model": "llama-helpsteer"}
    real_tokens = sum(r["num_tokens"] for r in first.json()["results"])
    assert delta(middle, before, "rewardserve_batch_size_sum", **forwarded) == len(items)
    assert delta(middle, before, "rewardserve_queue_wait_seconds_count", **forwarded) == len(items)
    assert delta(middle, before, "rewardserve_batch_real_tokens_total", **forwarded) == real_tokens
    batches = delta(middle, before, "rewardserve_forward_seconds_count", **forwarded)
    assert batches >= 1 and delta(middle, before, "rewardserve_batch_padded_tokens_count", **forwarded) == batches
    assert delta(middle, before, "rewardserve_batch_padded_tokens_sum", **forwarded) >= real_tokens
    assert delta(middle, before, "rewardserve_batch_padding_ratio_count", **forwarded) == batches
    assert delta(middle, before, "rewardserve_postprocess_seconds_count", **forwarded) == 1
    # the repeat is answered by the LRU: no forward, one time-to-result observation
    assert delta(after, middle, "rewardserve_batch_size_count", **forwarded) == 0
    assert delta(after, middle, "rewardserve_cache_hit_seconds_count", **forwarded) == 1
    assert delta(middle, before, "rewardserve_cache_hit_seconds_count", **forwarded) == 0
    assert delta(after, middle, "rewardserve_cache_hits_total", tier="lru") == len(items)
    assert delta(middle, before, "rewardserve_cache_misses_total", tier="lru") == len(items)
    assert delta(after, before, "rewardserve_cache_lookups_total") == 2 * len(items)
    assert after.value("rewardserve_cache_lru_entries") >= len(items)
    assert after.value("rewardserve_cache_hits_total", tier="redis") is None  # no Redis configured


def test_model_status_and_load_time(client):
    s = scrape(client)
    for name in NAMES:
        assert s.value("rewardserve_model_status", model=name, status="ready") == 1
        assert s.value("rewardserve_model_status", model=name, status="loading") == 0
        assert s.value("rewardserve_model_load_seconds", model=name) > 0


def test_grpc_calls_by_method_model_and_status(app, client, load_tiny):
    before = scrape(client)
    item = pb.Item(text=pb.TextItem(prompt="Hi", response="Hello!"))
    with grpc.insecure_channel(f"127.0.0.1:{app.state.grpc_port}") as channel:
        stub = pb_grpc.RewardServiceStub(channel)
        reply = stub.Score(pb.ScoreRequest(model="llama-scalar", items=[item]), timeout=30)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Score(pb.ScoreRequest(model=STRANGER, items=[item]), timeout=30)
        streamed = list(stub.ScoreStream(iter([pb.ScoreRequest(model="qwen2-prm", request_id="a", items=[
            pb.Item(steps=pb.StepsItem(prompt="What is 3 + 4?", steps=["3 + 4 = 7"]))])]), timeout=30))
    triton = triton_grpc.InferenceServerClient(f"127.0.0.1:{app.state.grpc_port}")
    try:
        assert triton.is_model_ready("llama-scalar")
        prompt, response = (
            triton_grpc.InferInput("prompt", [1], "BYTES"),
            triton_grpc.InferInput("response", [1], "BYTES"),
        )
        prompt.set_data_from_numpy(np.array([b"Hi"], dtype=object))
        response.set_data_from_numpy(np.array([b"Hello!"], dtype=object))
        inferred = triton.infer("llama-helpsteer", [prompt, response]).as_numpy("score")
    finally:
        triton.close()
    after = scrape(client)
    pair = {"prompt": "Hi", "response": "Hello!"}
    assert reply.results[0].score == pytest.approx(reference(load_tiny("llama-scalar"), pair).score, abs=1e-5)
    assert inferred[0] == pytest.approx(reference(load_tiny("llama-helpsteer"), pair).score, abs=1e-5)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert streamed[0].WhichOneof("outcome") == "response"

    def grew(method: str, **labels) -> float:
        return (requests_count(after, protocol="grpc", endpoint=method, **labels)
                - requests_count(before, protocol="grpc", endpoint=method, **labels))

    assert grew("/rewardserve.v1.RewardService/Score", model="llama-scalar", status="OK") == 1
    assert grew("/rewardserve.v1.RewardService/Score", model="", status="NOT_FOUND") == 1
    assert grew("/rewardserve.v1.RewardService/ScoreStream", model="qwen2-prm", status="OK") == 1
    assert grew("/inference.GRPCInferenceService/ModelReady", status="OK") == 1
    assert grew("/inference.GRPCInferenceService/ModelInfer", model="llama-helpsteer", status="OK") == 1
    assert STRANGER not in after.text
    assert after.value("rewardserve_requests_in_flight", protocol="grpc") == 0


GRPC_SERVICES = ("/rewardserve.v1.RewardService/", "/inference.GRPCInferenceService/", "/grpc.health.v1.Health/")


def test_label_values_stay_bounded(app, client):
    """Whatever the requests named (these and the other tests' on this server): models are
    configured names or "", endpoints route templates, "unmatched" or methods of the served
    gRPC services."""
    score(client, "../../etc/passwd", [{"prompt": "Hi", "response": "Hello!"}])
    client.get("/v1/models/" + "x" * 200)
    client.post(f"/v2/models/{STRANGER}/versions/9/infer", json={"inputs": []})
    s = scrape(client)
    assert s.labels("rewardserve_", "model") <= set(NAMES) | {""}
    templates = set(app.openapi()["paths"]) | {"/metrics", "unmatched"}
    endpoints = s.labels("rewardserve_request_duration", "endpoint")
    assert {e for e in endpoints if e not in templates and not e.startswith(GRPC_SERVICES)} == set()
    assert s.labels("rewardserve_", "protocol") <= {"http", "grpc"}
    assert s.labels("rewardserve_", "priority") <= {"interactive", "bulk"}
    assert s.labels("rewardserve_cache", "tier") <= {"lru", "redis"}
    assert STRANGER not in s.text and "passwd" not in s.text


def test_rejected_timed_out_and_queue_depth(small_queue_app, small_queue_client, monkeypatch, load_tiny):
    """With the model held busy: a request whose deadline passes while queued (504) counts
    its items as timed out; queued items and tokens show per priority class; a request the
    full queue refuses (429) counts as rejected."""
    model = small_queue_app.state.registry.runners["llama-scalar"].model
    gate = intercept_forward(monkeypatch, model, GatedForward)
    scheduler = small_queue_app.state.registry.runners["llama-scalar"].scheduler
    client = small_queue_client
    url = str(client.base_url)
    before = scrape(client)

    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            measured = asyncio.create_task(http.post("/v1/score", json={"items": [{"input_ids": [7, 8, 9]}]}))
            await gate.until_entered(1)
            gate.step()  # one batch through, so the queue's wait has an estimate
            assert (await measured).status_code == 200
            plug = asyncio.create_task(http.post("/v1/score", json={"items": [{"input_ids": [11, 12, 13]}]}))
            await gate.until_entered(2)
            late = await http.post("/v1/score", json={"items": [{"input_ids": [21, 22]}], "timeout_ms": 50})
            queued = [asyncio.create_task(http.post("/v1/score", json={"items": items, "priority": priority}))
                      for items, priority in (([{"input_ids": [31, 32]}, {"input_ids": [33, 34, 35]}], "interactive"),
                                              ([{"input_ids": [41, 42, 43, 44]}], "bulk"))]
            await until(lambda: scheduler.queued_items == 3, "3 queued items")
            depth = Scrape((await http.get("/metrics")).text)
            estimates = {p: scheduler.admission.estimated_wait_s(p) for p in Priority}
            full = await http.post("/v1/score", json={"items": [{"input_ids": [51]}]})
            gate.open()
            return late, depth, estimates, full, await asyncio.gather(plug, *queued)

    try:
        late, depth, estimates, full, done = asyncio.run(asyncio.wait_for(main(), TEST_LIMIT_S))
    finally:
        gate.open()
    after = scrape(client)
    assert_error(late, 504, "deadline_exceeded", "timeout_ms")
    assert_error(full, 429, "queue_full", None)
    assert all(response.status_code == 200 for response in done)
    assert depth.value("rewardserve_queue_items", model="llama-scalar", priority="interactive") == 2
    assert depth.value("rewardserve_queue_items", model="llama-scalar", priority="bulk") == 1
    assert depth.value("rewardserve_queue_tokens", model="llama-scalar", priority="bulk") == \
        reference(load_tiny("llama-scalar"), {"input_ids": [41, 42, 43, 44]}).num_tokens
    for priority, estimate in estimates.items():
        assert depth.value("rewardserve_queue_wait_estimate_seconds", model="llama-scalar",
                           priority=priority.value) == pytest.approx(estimate)
        assert estimate > 0
    assert depth.value("rewardserve_requests_in_flight", protocol="http") >= 4  # plug, two queued, the scrape
    assert delta(after, before, "rewardserve_timed_out_items_total", model="llama-scalar") == 1
    assert delta(after, before, "rewardserve_rejected_requests_total", model="llama-scalar") == 1
    assert requests_count(after, endpoint="/v1/score", status="429") - requests_count(before, endpoint="/v1/score",
                                                                                      status="429") == 1
    assert requests_count(after, endpoint="/v1/score", status="504") - requests_count(before, endpoint="/v1/score",
                                                                                      status="504") == 1
    assert after.value("rewardserve_queue_items", model="llama-scalar") == 0
    assert after.value("rewardserve_requests_in_flight", protocol="http") == 1  # this scrape
    assert not gate.stuck
