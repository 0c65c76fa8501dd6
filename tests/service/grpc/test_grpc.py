"""The gRPC API (rewardserve.v1.RewardService) end to end: the server's grpc.aio server on a
real loopback port, beside its HTTP server in the same process, driven by the stubs
generated from service/grpc/proto/rewardserve.proto. Numbers must equal the unbatched reference
and the HTTP API's for the same items; errors must be the HTTP API's, as gRPC statuses
naming the field. The served model's forward is gated where a test needs the model busy;
every wait is bounded."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import grpc
import httpx
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from http_helpers import (
    assert_result_matches,
    free_port,
    live_server,
    reference,
    sample_items,
    served_input,
    wait_until_loaded,
)
from protocol_helpers import to_item, to_request
from sched_helpers import GatedForward, ids, intercept_forward, wait_for
from tiny_models import BUILDERS

from service.app import create_app
from service.config import ModelConfig, Settings
from service.engine.registry import ModelRegistry
from service.grpc.proto import rewardserve_pb2 as pb
from service.grpc.proto import rewardserve_pb2_grpc as pb_grpc

MODEL_NAMES = list(BUILDERS)
PAIR = {"prompt": "Hi", "response": "Hello!"}
WAIT_S = 30


def _settings(model_dirs: dict, names: list[str], **sections) -> Settings:
    """A free gRPC port; no result cache (tests count forwards, and compare fresh numbers)."""
    models = [ModelConfig(name=n, path=str(model_dirs[n])) for n in names]
    return Settings(models=models, server={"grpc_port": free_port()}, cache={"max_bytes": 0}, **sections)


def _serve(app):
    with live_server(app) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            ready = wait_until_loaded(client)
        assert ready.status_code == 200, ready.text
        yield url


@pytest.fixture(scope="module")
def app(tiny_model_dirs):
    """Every tiny model; batch budgets small enough that one request spans batches."""
    return create_app(_settings(tiny_model_dirs, MODEL_NAMES, batching={"max_batch_size": 2, "max_batch_tokens": 120}))


@pytest.fixture(scope="module")
def base_url(app):
    yield from _serve(app)


@pytest.fixture(scope="module")
def channel(app, base_url):
    with grpc.insecure_channel(f"127.0.0.1:{app.state.grpc_port}") as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.RewardServiceStub(channel)


@pytest.fixture
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=30) as client:
        yield client


@pytest.fixture
def gate_model(monkeypatch):
    """gate_model(app, name) -> a held GatedForward in front of that served model's forward;
    opened at the end of the test, so no forward is left waiting."""
    gates: list[GatedForward] = []

    def install(app, name: str) -> GatedForward:
        model = app.state.registry.runners[name].model
        gate = intercept_forward(monkeypatch, model, GatedForward)
        gates.append(gate)
        return gate

    yield install
    for gate in gates:
        gate.open()
    assert not any(gate.stuck for gate in gates), "a forward waited on the gate past its limit"



# ---- JSON items <-> messages ----------------------------------------------------------


def result_dict(result: pb.ItemResult, dimensions: list[str] | None) -> dict:
    """A gRPC ItemResult shaped as the HTTP JSON one (absent fields left out; dimensions in
    the model's order, which a proto map does not keep)."""
    out = {"index": result.index, "score": result.score}
    if dimensions is not None:
        assert set(result.dimensions) == set(dimensions)
        out["dimensions"] = {name: result.dimensions[name] for name in dimensions}
    if result.gating_weights:
        out["gating_weights"] = list(result.gating_weights)
    if result.step_rewards:
        out["step_rewards"] = list(result.step_rewards)
    out.update(num_tokens=result.num_tokens, truncated=result.truncated)
    return out


def assert_same_result(grpc_result: dict, http_result: dict) -> None:
    """The same result by both transports (the same numbers; each request is batched on its
    own, so within float tolerance)."""
    http_result = {k: v for k, v in http_result.items() if k != "cached"}
    assert list(grpc_result) == list(http_result)
    for key, want in http_result.items():
        if isinstance(want, dict):
            assert list(grpc_result[key]) == list(want), key
        assert grpc_result[key] == pytest.approx(want, abs=1e-5, rel=0), key


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


def metadata(err: grpc.RpcError) -> dict[str, str]:
    return dict(err.trailing_metadata() or ())


# ---- scoring --------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_score_equals_reference_and_http(name, stub, http, load_tiny):
    """Every item form, mixed lengths, more items than a batch holds: in request order,
    the numbers of each item scored alone, and the HTTP API's for the same request."""
    model = load_tiny(name)
    items = sample_items(model)

    response = stub.Score(to_request({"model": name, "items": items}), timeout=WAIT_S)
    over_http = http.post("/v1/score", json={"model": name, "items": items})

    assert over_http.status_code == 200, over_http.text
    body = over_http.json()
    assert (response.model, response.revision, response.kind) == (name, model.revision, model.spec.kind.value)
    assert (body["model"], body["revision"], body["kind"]) == (response.model, response.revision, response.kind)
    assert response.usage.total_tokens == body["usage"]["total_tokens"]
    results = [result_dict(r, model.info.dimensions) for r in response.results]
    assert [r["index"] for r in results] == list(range(len(items)))
    for result, item, http_result in zip(results, items, body["results"], strict=True):
        assert_result_matches(result, reference(model, item))
        assert_same_result(result, http_result)


def test_score_options_and_default_model(stub, http, load_tiny):
    """Options mean what they mean over HTTP: truncate, aggregate, priority, timeout_ms;
    no model names the default one."""
    model = load_tiny("qwen2-prm")
    long = sample_items(model)[0]
    body = {"model": "qwen2-prm", "items": [long], "truncate": "left", "aggregate": "product",
            "priority": "bulk", "timeout_ms": 60_000.0}
    response = stub.Score(to_request(body), timeout=WAIT_S)
    over_http = http.post("/v1/score", json=body).json()
    assert_same_result(result_dict(response.results[0], None), over_http["results"][0])
    assert response.results[0].score == pytest.approx(over_http["results"][0]["score"], abs=1e-6)

    default = stub.Score(to_request({"items": [PAIR]}), timeout=WAIT_S)
    assert default.model == MODEL_NAMES[0]
    assert_result_matches(result_dict(default.results[0], None), reference(load_tiny(MODEL_NAMES[0]), PAIR))


def test_list_models_mirrors_http(stub, http):
    listed = stub.ListModels(pb.ListModelsRequest(), timeout=WAIT_S)
    cards = http.get("/v1/models").json()["models"]
    assert [m.name for m in listed.models] == [c["name"] for c in cards] == MODEL_NAMES
    for message, card in zip(listed.models, cards, strict=True):
        assert message.status == card["status"] == "ready"
        for field in ("kind", "revision", "max_length", "architecture", "device", "dtype"):
            assert getattr(message, field) == card[field], field
        assert list(message.dimensions) == (card.get("dimensions") or [])
        assert message.step_aggregate == (card.get("step_aggregate") or "")


# ---- streaming ------------------------------------------------------------------------


def test_score_stream_answers_in_flight_requests_as_they_finish(app, stub, gate_model, load_tiny):
    """One stream, several requests in flight at once: a request to a held model does not
    block the ones behind it (they are answered first, out of order), a bad request gets
    its error and the stream goes on, and every response echoes its request_id."""
    gate = gate_model(app, "llama-scalar")
    held = [{"input_ids": [11, 12, 13]}, PAIR]
    free = {"qwen2-prm": sample_items(load_tiny("qwen2-prm"))[:3], "llama-gating": [PAIR]}
    requests = [
        to_request({"model": "llama-scalar", "items": held, "request_id": "held"}),
        to_request({"model": "qwen2-prm", "items": free["qwen2-prm"], "request_id": "prm", "priority": "bulk"}),
        to_request({"model": "nope", "items": [PAIR], "request_id": "unknown"}),
        to_request({"model": "llama-gating", "items": free["llama-gating"], "request_id": "gating"}),
    ]
    sent_all = threading.Event()

    def send():
        yield from requests
        sent_all.set()

    stream = stub.ScoreStream(send(), timeout=WAIT_S)
    early = [next(stream) for _ in range(3)]  # everything but the held request
    assert gate.wait_entered(1) and sent_all.wait(WAIT_S)
    gate.open()
    late = list(stream)

    assert {r.request_id for r in early} == {"prm", "unknown", "gating"}
    assert [r.request_id for r in late] == ["held"]
    by_id = {r.request_id: r for r in early + late}
    error = by_id["unknown"].error
    assert by_id["unknown"].WhichOneof("outcome") == "error"
    assert (error.grpc_code, error.http_status, error.code, error.field) == (
        grpc.StatusCode.NOT_FOUND.value[0], 404, "model_not_found", "model")
    for request_id, name, items in [("held", "llama-scalar", held), ("prm", "qwen2-prm", free["qwen2-prm"]),
                                    ("gating", "llama-gating", free["llama-gating"])]:
        response = by_id[request_id].response
        model = load_tiny(name)
        assert response.model == name
        for result, item in zip(response.results, items, strict=True):
            assert_result_matches(result_dict(result, model.info.dimensions), reference(model, item))


@pytest.mark.parametrize("call", ["Score", "ScoreStream"])
def test_cancelled_call_drops_its_queued_items(call, app, stub, gate_model, load_tiny):
    """A client that cancels its call (or a trainer that goes away mid-stream): the server
    drops the call's queued items, and the model never sees them."""
    gate = gate_model(app, "llama-scalar")
    scheduler = app.state.registry.runners["llama-scalar"].scheduler
    plug = stub.Score.future(to_request({"model": "llama-scalar", "items": [{"input_ids": [5, 6, 7, 8, 9]}]}),
                             timeout=WAIT_S)
    assert gate.wait_entered(1)
    leaving = [{"input_ids": [21, 22]}, {"input_ids": [23, 24, 25]}]
    request = to_request({"model": "llama-scalar", "items": leaving, "request_id": "a"})
    if call == "Score":
        leaving_call = stub.Score.future(request, timeout=WAIT_S)
    else:
        leaving_call = stub.ScoreStream(iter([request]), timeout=WAIT_S)
    wait_for(lambda: scheduler.queued_items == 2, "the call's items to queue")
    leaving_call.cancel()
    wait_for(lambda: scheduler.queued_items == 0, "the cancelled stream's items to leave the queue")
    gate.open()
    assert plug.result(timeout=WAIT_S).results[0].num_tokens == 5
    model = load_tiny("llama-scalar")
    assert not {ids(model.encode(served_input(item))) for item in leaving} & set(gate.forwarded_ids())


# ---- health ---------------------------------------------------------------------------


def test_health_serving_overall_and_per_service(channel):
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ("", "rewardserve.v1.RewardService", "inference.GRPCInferenceService"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT_S).status == serving
    error = rpc_error(health.Check, health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=WAIT_S)
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_health_not_serving_until_models_load(tiny_model_dirs, monkeypatch):
    release = threading.Event()
    original = ModelRegistry.load_all

    def gated_load_all(self):
        assert release.wait(timeout=60), "test never released loading"
        original(self)

    monkeypatch.setattr(ModelRegistry, "load_all", gated_load_all)
    app = create_app(_settings(tiny_model_dirs, ["llama-scalar"]))
    try:
        with live_server(app), grpc.insecure_channel(f"127.0.0.1:{app.state.grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest(service="rewardserve.v1.RewardService")
            assert health.Check(check, timeout=WAIT_S).status == health_pb2.HealthCheckResponse.NOT_SERVING
            error = rpc_error(pb_grpc.RewardServiceStub(channel).Score, to_request({"items": [PAIR]}), timeout=WAIT_S)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert metadata(error)["rewardserve-error-code"] == "model_loading"
            release.set()
            deadline = time.monotonic() + 60
            while health.Check(check, timeout=WAIT_S).status != health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline, "never SERVING"
                time.sleep(0.05)
    finally:
        release.set()


# ---- errors ---------------------------------------------------------------------------


ERROR_CASES = {
    "no items": ({"items": []}, "items"),
    "no form": (None, "items[0]"),
    "bad truncate": ({"items": [PAIR], "truncate": "sideways"}, "truncate"),
    "bad priority": ({"items": [PAIR], "priority": "urgent"}, "priority"),
    "token outside vocabulary": ({"model": "llama-scalar", "items": [PAIR, {"input_ids": [1, 99999]}]},
                                 "items[1].input_ids[1]"),
    "too long": ({"model": "llama-scalar", "items": [{"prompt": "Hi " * 400, "response": "Hello"}]}, "items[0]"),
    "steps on a scalar model": ({"model": "llama-scalar", "items": [{"prompt": "Q", "steps": ["a"]}]},
                                "items[0].steps"),
    "aggregate on a scalar model": ({"model": "llama-scalar", "items": [PAIR], "aggregate": "min"}, "aggregate"),
    "empty chat": ({"items": [{"messages": [{"role": "user", "content": "Hi"}]}]}, "items[0].messages"),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_bad_input_is_invalid_argument_naming_the_field(case, stub, http):
    """The HTTP API's 422 (its code and field) as INVALID_ARGUMENT, the message led by the
    field, the code and field in the trailing metadata."""
    body, field = ERROR_CASES[case]
    request = pb.ScoreRequest(items=[pb.Item()]) if body is None else to_request(body)
    error = rpc_error(stub.Score, request, timeout=WAIT_S)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(field), error.details()
    assert metadata(error)["rewardserve-error-field"] == field
    if body is not None:
        over_http = http.post("/v1/score", json=body).json()["error"]
        assert (metadata(error)["rewardserve-error-code"], over_http["field"]) == (over_http["code"], field)
        assert over_http["message"] in error.details()


def test_unknown_model_is_not_found(stub):
    error = rpc_error(stub.Score, to_request({"model": "no-such-model", "items": [PAIR]}), timeout=WAIT_S)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details().startswith("model: no model named 'no-such-model'")
    assert metadata(error)["rewardserve-error-code"] == "model_not_found"


@pytest.mark.parametrize("how", ["grpc deadline", "timeout_ms"])
def test_deadline_while_queued_is_deadline_exceeded(how, app, stub, gate_model, load_tiny):
    """With the model busy, a call with a short deadline (the gRPC deadline, or timeout_ms)
    ends DEADLINE_EXCEEDED while the model is still busy, and its items leave the queue
    without reaching the model."""
    gate = gate_model(app, "llama-scalar")
    scheduler = app.state.registry.runners["llama-scalar"].scheduler
    plug = stub.Score.future(to_request({"model": "llama-scalar", "items": [{"input_ids": [5, 6, 7, 8, 9]}]}),
                             timeout=WAIT_S)
    assert gate.wait_entered(1)
    late = [{"input_ids": [31, 32, 33]}, {"prompt": "Late", "response": "Too late."}]
    if how == "grpc deadline":
        error = rpc_error(stub.Score, to_request({"model": "llama-scalar", "items": late}), timeout=0.3)
    else:
        error = rpc_error(stub.Score, to_request({"model": "llama-scalar", "items": late, "timeout_ms": 100}),
                          timeout=WAIT_S)
        assert metadata(error)["rewardserve-error-code"] == "deadline_exceeded"
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert not plug.done() and len(gate.entered) == 1  # answered while the model was still busy
    wait_for(lambda: scheduler.queued_items == 0, "the late items to leave the queue")
    gate.open()
    assert plug.result(timeout=WAIT_S).results[0].num_tokens == 5
    model = load_tiny("llama-scalar")
    assert not {ids(model.encode(served_input(item))) for item in late} & set(gate.forwarded_ids())


def test_full_queue_is_resource_exhausted_with_retry_after(tiny_model_dirs, gate_model):
    app = create_app(_settings(tiny_model_dirs, ["llama-scalar"], queue={"max_items": 2}, batching={"max_wait_ms": 0}))
    with contextmanager(_serve)(app):
        with grpc.insecure_channel(f"127.0.0.1:{app.state.grpc_port}") as channel:
            stub = pb_grpc.RewardServiceStub(channel)
            gate = gate_model(app, "llama-scalar")
            scheduler = app.state.registry.runners["llama-scalar"].scheduler
            plug = stub.Score.future(to_request({"items": [{"input_ids": [5, 6, 7]}]}), timeout=WAIT_S)
            assert gate.wait_entered(1)
            admitted = stub.Score.future(to_request({"items": [{"input_ids": [41, 42]}, {"input_ids": [43]}]}),
                                         timeout=WAIT_S)
            wait_for(lambda: scheduler.queued_items == 2, "two queued items")
            error = rpc_error(stub.Score, to_request({"items": [{"input_ids": [51, 52]}]}), timeout=WAIT_S)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "queue full" in error.details()
            assert int(metadata(error)["retry-after"]) >= 1
            assert metadata(error)["rewardserve-error-code"] == "queue_full"
            gate.open()
            assert len(admitted.result(timeout=WAIT_S).results) == 2 and plug.result(timeout=WAIT_S).results


# ---- ranking: Compare, Rerank, Steps are the HTTP endpoints' ------------------------------


QUESTION = "How do I keep my neighbour's dog out of my garden?"
ANSWERS = ["Put up a fence.", "Talk to your neighbour about it, then fence the gap.", "Shout at the dog.",
           "A fence along the boundary and a friendly word with the neighbour usually solve it."]
CHAT = [{"role": "user", "content": QUESTION}]
PRM_ITEM = {"prompt": "What is 3 + 4 then doubled?", "steps": ["3 + 4 = 7", "7 * 2 = 15", "The answer is 15."]}


def to_candidate(value) -> pb.Candidate:
    if isinstance(value, str):
        return pb.Candidate(text=value)
    if "text" in value:
        return pb.Candidate(text=value["text"])
    if "steps" in value:
        return pb.Candidate(steps=pb.StepList(steps=value["steps"]))
    return pb.Candidate(tokens=pb.TokensItem(**value))


def to_ranking(kind: str, body: dict):
    """A /v1/compare, /v1/rerank or /v1/steps JSON body as the gRPC request."""
    fields = dict(body)
    if "messages" in fields:
        fields["messages"] = [pb.Message(**m) for m in fields["messages"]]
    if kind == "compare":
        fields["responses"] = [to_candidate(c) for c in fields["responses"]]
        return pb.CompareRequest(**fields)
    if kind == "rerank":
        fields["documents"] = [to_candidate(c) for c in fields["documents"]]
        return pb.RerankRequest(**fields)
    fields["items"] = [to_item(item) for item in fields["items"]]
    return pb.StepsRequest(**fields)


def _plain(value):
    """A JSON value with null, empty lists and empty objects left out (proto3 cannot tell
    them from unset), pairwise rows unwrapped."""
    if isinstance(value, dict):
        if set(value) == {"values"}:
            return _plain(value["values"])
        out = {k: _plain(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, [], {})}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def assert_same_json(got, want, where: str = "$") -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (where, got, want)
        for key in want:
            assert_same_json(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (where, got, want)
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_json(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert got == pytest.approx(want, abs=1e-5, rel=0), where
    elif isinstance(want, int) and not isinstance(want, bool) and isinstance(got, str):
        assert int(got) == want, where  # proto JSON writes int64 as a string
    else:
        assert got == want, where


RANKING_CASES = {
    "compare scalar": ("compare", {"model": "llama-scalar", "prompt": QUESTION, "responses": ANSWERS}),
    "compare chat, tokens": ("compare", {"model": "qwen2-scalar", "messages": CHAT,
                                         "responses": [ANSWERS[0], {"text": ANSWERS[1]},
                                                       {"input_ids": [5, 6, 7, 8]}]}),
    "compare tie": ("compare", {"model": "llama-scalar", "prompt": QUESTION, "responses": [ANSWERS[0]] * 2}),
    "compare dimensions": ("compare", {"model": "llama-helpsteer", "prompt": QUESTION, "responses": ANSWERS,
                                       "tie_margin": 0.01}),
    "compare process": ("compare", {"model": "qwen2-prm", "prompt": PRM_ITEM["prompt"], "aggregate": "mean",
                                    "responses": [{"steps": PRM_ITEM["steps"]}, {"steps": ["7", "14"]}]}),
    "rerank top_n": ("rerank", {"model": "llama-scalar", "query": QUESTION, "documents": ANSWERS, "top_n": 2,
                                "return_documents": False}),
    "rerank weights": ("rerank", {"model": "llama-gating", "query": QUESTION, "documents": ANSWERS,
                                  "weights": {"helpfulness": 1.0, "verbosity": -0.5}}),
    "rerank pareto": ("rerank", {"model": "llama-helpsteer", "query": QUESTION, "documents": ANSWERS,
                                 "aggregation": "pareto", "priority": "bulk"}),
    "steps": ("steps", {"model": "qwen2-prm", "items": [PRM_ITEM, {"prompt": "Q", "steps": ["1 + 1 = 2"]}],
                        "threshold": 0.5, "aggregate": "min"}),
    "steps truncated": ("steps", {"model": "mistral-prm", "truncate": "left", "threshold": 2.0,
                                  "items": [{"prompt": "Q " * 100, "steps": ["a step " * 20] * 8}]}),
}


@pytest.mark.parametrize("case", RANKING_CASES)
def test_ranking_rpcs_equal_the_http_endpoints(case, stub, http):
    kind, body = RANKING_CASES[case]
    over_http = http.post(f"/v1/{kind}", json=body)
    assert over_http.status_code == 200, over_http.text
    call = {"compare": stub.Compare, "rerank": stub.Rerank, "steps": stub.Steps}[kind]
    response = call(to_ranking(kind, body), timeout=WAIT_S)
    got = json_format.MessageToDict(response, preserving_proto_field_name=True,
                                    always_print_fields_with_no_presence=True)
    want = over_http.json()
    if kind == "rerank":
        assert got.pop("id").startswith("rerank-") and want.pop("id")
    assert_same_json(_plain(got), _plain(want))


RANKING_ERRORS = {
    "one response": ("compare", {"model": "llama-scalar", "prompt": QUESTION, "responses": ANSWERS[:1]}),
    "text without prompt": ("compare", {"model": "llama-scalar", "responses": ANSWERS[:2]}),
    "bad token in a response": ("compare", {"model": "llama-scalar", "prompt": QUESTION,
                                            "responses": [ANSWERS[0], {"input_ids": [1, 99999]}]}),
    "unknown dimension": ("rerank", {"model": "llama-helpsteer", "query": QUESTION, "documents": ANSWERS,
                                     "weights": {"nope": 1.0}}),
    "pareto on a scalar model": ("rerank", {"model": "llama-scalar", "query": QUESTION, "documents": ANSWERS,
                                            "aggregation": "pareto"}),
    "steps on a scalar model": ("steps", {"model": "llama-scalar", "items": [PRM_ITEM]}),
    "unknown model": ("steps", {"model": "no-such-model", "items": [PRM_ITEM]}),
}


@pytest.mark.parametrize("case", RANKING_ERRORS)
def test_ranking_errors_equal_the_http_endpoints(case, stub, http):
    kind, body = RANKING_ERRORS[case]
    over_http = http.post(f"/v1/{kind}", json=body).json()["error"]
    call = {"compare": stub.Compare, "rerank": stub.Rerank, "steps": stub.Steps}[kind]
    error = rpc_error(call, to_ranking(kind, body), timeout=WAIT_S)
    expected = {404: grpc.StatusCode.NOT_FOUND}.get(http.post(f"/v1/{kind}", json=body).status_code,
                                                      grpc.StatusCode.INVALID_ARGUMENT)
    assert error.code() == expected
    assert (metadata(error)["rewardserve-error-code"], metadata(error)["rewardserve-error-field"]) == (
        over_http["code"], over_http["field"] or "")
    assert over_http["message"] in error.details()
    if over_http["field"]:
        assert error.details().startswith(over_http["field"])
