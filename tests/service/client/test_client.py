"""The Python clients against a live server, over HTTP and over gRPC: every method gives the
same typed results over both transports (and the unbatched reference's numbers), errors
are the same RewardServeError over both, retries honour the server's retry-after hint, the
client timeout is the gRPC deadline, and the TRL reward-function adapter works over both."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest
from http_helpers import assert_result_matches, free_port, reference, sample_items, within_tol
from sched_helpers import GatedForward, intercept_forward, wait_for

from service.client import AsyncRewardClient, RewardClient, RewardServeError, reward_fn
from service.client.common import Retry

PAIRS = [("What is 2 + 2?", "It is 4."), ("Say hi.", "Hello there, how can I help you today?")]
NAMES = ("llama-scalar", "llama-helpsteer", "llama-gating", "qwen2-prm")
TRANSPORTS = ("http", "grpc")
QUESTION = "How do I keep my neighbour's dog out of my garden?"
ANSWERS = ["Put up a fence.", "Talk to your neighbour about it, then fence the gap.", "Shout at the dog."]
PRM_ITEMS = [{"prompt": "What is 3 + 4 then doubled?", "steps": ["3 + 4 = 7", "7 * 2 = 15", "The answer is 15."]},
             {"prompt": "3 + 4?", "steps": ["3 + 4 = 7", "So 7."]}]
WAIT_S = 30


def _urls(server) -> dict[str, str]:
    return {"http": server.url, "grpc": f"grpc://{server.grpc_target}"}


@pytest.fixture(scope="module")
def urls(served):
    """{transport: URL} of one server; no result cache, so repeated requests are computed
    again and every result compares whole (within batching's float rounding)."""
    with served(NAMES, cache={"max_bytes": 0}) as server:
        yield _urls(server)


def same(result):
    """A result as compared across calls: a rerank's id is made per call."""
    return result.model_copy(update={"id": ""}) if hasattr(result, "id") else result


# ---- every method, both transports ----------------------------------------------------

CALLS = {  # case -> (model, method, args, options)
    "score scalar, every item form": ("llama-scalar", "score", None, {}),
    "score multi-objective, gating": ("llama-gating", "score", None, {}),
    "score process": ("qwen2-prm", "score", None, {"aggregate": "min"}),
    "compare dimensions": ("llama-helpsteer", "compare", (QUESTION, ANSWERS), {"tie_margin": 0.01}),
    "compare tie": ("llama-scalar", "compare", (QUESTION, [ANSWERS[0]] * 2), {}),
    "rerank weights": ("llama-gating", "rerank", (QUESTION, ANSWERS), {"weights": {"helpfulness": 1.0,
                                                                                   "verbosity": -0.5}}),
    "rerank pareto": ("llama-helpsteer", "rerank", (QUESTION, ANSWERS), {"aggregation": "pareto"}),
    "rerank top_n": ("llama-scalar", "rerank", (QUESTION, ANSWERS), {"top_n": 2, "return_documents": False}),
    "steps": ("qwen2-prm", "steps", (PRM_ITEMS,), {"threshold": 0.5}),
}


def call_args(name: str, method: str, args, load_tiny) -> tuple:
    return (sample_items(load_tiny(name)),) if args is None else args


def references(name: str, method: str, args, load_tiny) -> dict[int, object]:
    """The unbatched reference of each scored input, by its index in the request."""
    model = load_tiny(name)
    if method in ("score", "steps"):
        return {i: reference(model, item) for i, item in enumerate(call_args(name, method, args, load_tiny)[0])}
    prompt, texts = args
    return {i: reference(model, {"prompt": prompt, "response": text}) for i, text in enumerate(texts)}


@pytest.mark.parametrize("case", CALLS)
def test_every_method_is_the_same_over_http_and_grpc(case, urls, load_tiny):
    name, method, args, options = CALLS[case]
    results = {}
    for transport in TRANSPORTS:
        with RewardClient(urls[transport], model=name) as client:
            results[transport] = getattr(client, method)(*call_args(name, method, args, load_tiny), **options)
    assert type(results["http"]) is type(results["grpc"])
    assert same(results["grpc"]).model_dump() == within_tol(same(results["http"]).model_dump())
    expected = references(name, method, args, load_tiny)
    for result in results.values():
        for item in result.results:
            dumped = item.model_dump(exclude_none=True)
            # only the numbers the reference has (the rest is ranking, checked equal above)
            numbers = {k: dumped[k] for k in ("score", "dimensions", "gating_weights", "step_rewards",
                                              "num_tokens", "truncated") if k in dumped}
            assert_result_matches(numbers, expected[item.index])


def test_models_are_the_same_over_http_and_grpc(urls):
    listed = {}
    for transport in TRANSPORTS:
        with RewardClient(urls[transport]) as client:
            listed[transport] = client.models()
    assert listed["grpc"] == listed["http"]
    assert [card.name for card in listed["grpc"]] == list(NAMES)
    assert listed["grpc"][2].dimensions[:2] == ["helpfulness", "correctness"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_async_client_matches_sync(transport, urls):
    compared = ("Pick one.", ["A short answer.", "A much longer and more detailed answer."])

    async def main():
        async with AsyncRewardClient(urls[transport]) as client:
            return await asyncio.gather(
                client.score(PAIRS, model="llama-helpsteer"),
                client.compare(*compared, model="llama-helpsteer"),
                client.rerank(*compared, model="llama-scalar"),
                client.steps(PRM_ITEMS, model="qwen2-prm"),
                client.models(),
            )

    # the concurrent calls share batches, so they match the sequential ones up to rounding
    scored, ranked, reranked, stepped, models = asyncio.run(main())
    with RewardClient(urls[transport]) as client:
        assert client.score(PAIRS, model="llama-helpsteer").model_dump() == within_tol(scored.model_dump())
        assert client.compare(*compared, model="llama-helpsteer").model_dump() == within_tol(ranked.model_dump())
        assert same(client.rerank(*compared, model="llama-scalar")).model_dump() == within_tol(
            same(reranked).model_dump())
        assert client.steps(PRM_ITEMS, model="qwen2-prm").model_dump() == within_tol(stepped.model_dump())
        assert client.models() == models
    assert list(scored.results[0].dimensions) == ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
    assert [len(r.step_rewards) for r in stepped.results] == [3, 2]


# ---- errors ---------------------------------------------------------------------------

ERRORS = {  # case -> (method, args, options, status, gRPC status, code, field)
    "unknown model": ("score", (PAIRS,), {"model": "no-such-model"}, 404, "NOT_FOUND", "model_not_found", "model"),
    "bad truncate": ("score", (PAIRS,), {"truncate": "sideways"}, 422, "INVALID_ARGUMENT", "invalid_request",
                     "truncate"),
    "token outside vocabulary": ("score", ([PAIRS[0], {"input_ids": [1, 99999]}],), {}, 422, "INVALID_ARGUMENT",
                                 None, "items[1].input_ids[1]"),
    "unknown dimension": ("rerank", (QUESTION, ANSWERS), {"model": "llama-helpsteer", "weights": {"nope": 1.0}},
                          422, "INVALID_ARGUMENT", "invalid_request", "weights.nope"),
    "steps on a scalar model": ("steps", (PRM_ITEMS,), {}, 422, "INVALID_ARGUMENT", "invalid_request", "model"),
    "one response": ("compare", (QUESTION, ANSWERS[:1]), {}, 422, "INVALID_ARGUMENT", None, "responses"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors_are_the_same_over_http_and_grpc(case, urls):
    method, args, options, status, grpc_status, code, field = ERRORS[case]
    errors = {}
    for transport in TRANSPORTS:
        with RewardClient(urls[transport], model="llama-scalar") as client, pytest.raises(RewardServeError) as caught:
            getattr(client, method)(*args, **options)
        errors[transport] = caught.value
    http, over_grpc = errors["http"], errors["grpc"]
    assert (over_grpc.status, over_grpc.code, over_grpc.message, over_grpc.field) == (
        http.status, http.code, http.message, http.field)
    assert (http.status, http.field) == (status, field) and http.message
    if code is not None:
        assert http.code == code
    assert (http.grpc_code, over_grpc.grpc_code) == (None, getattr(grpc.StatusCode, grpc_status))


def test_input_the_proto_cannot_carry_is_refused():
    """Fields the gRPC messages do not have are refused before any call, as invalid input."""
    with RewardClient("grpc://127.0.0.1:1", retries=0) as client, pytest.raises(RewardServeError) as caught:
        client.score([{"prompt": "Hi", "response": "Hello", "colour": "blue"}])
    assert (caught.value.status, caught.value.grpc_code) == (422, grpc.StatusCode.INVALID_ARGUMENT)
    assert "colour" in caught.value.message


def test_the_url_scheme_picks_the_transport():
    with pytest.raises(ValueError, match="http://, https://, grpc:// or grpcs://"):
        RewardClient("ftp://127.0.0.1:8000")
    with pytest.raises(ValueError, match="http:// and https:// URLs only"):
        RewardClient("grpc://127.0.0.1:50051", transport=httpx.MockTransport(lambda request: httpx.Response(200)))


# ---- retries and deadlines --------------------------------------------------------------


def test_retries_429_and_503_honouring_retry_after():
    """Two refusals, then an answer: the client waits as told and returns the answer;
    a non-retryable error is raised at once."""
    answer = {"model": "m", "revision": "sha256:x", "kind": "scalar", "usage": {"total_tokens": 3},
              "results": [{"index": 0, "score": 0.5, "num_tokens": 3, "truncated": False}]}
    replies = iter(
        [
            httpx.Response(
                429,
                headers={"Retry-After": "0"},
                json={"error": {"code": "queue_full", "message": "full", "field": None}},
            ),
            httpx.Response(503, json={"error": {"code": "model_loading", "message": "loading", "field": "model"}}),
            httpx.Response(200, json=answer),
            httpx.Response(422, json={"error": {"code": "invalid_request", "message": "bad", "field": "items"}}),
        ]
    )
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return next(replies)

    with RewardClient("http://rm", transport=httpx.MockTransport(handler), backoff_s=0.001) as client:
        assert client.score([("a", "b")]).results[0].score == 0.5
        with pytest.raises(RewardServeError) as caught:
            client.score([("a", "b")])
    assert len(seen) == 4 and caught.value.status == 422


def test_retries_give_up():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"error": {"code": "queue_full", "message": "full", "field": None}})

    with RewardClient("http://rm", transport=httpx.MockTransport(handler), retries=2, backoff_s=0.001) as client:
        with pytest.raises(RewardServeError) as caught:
            client.score([("a", "b")])
    assert caught.value.status == 429


def test_unreachable_grpc_server_is_unavailable_after_retries():
    with RewardClient(f"grpc://127.0.0.1:{free_port()}", retries=1, backoff_s=0.001, timeout_s=5) as client:
        with pytest.raises(RewardServeError) as caught:
            client.models()
    assert (caught.value.status, caught.value.grpc_code) == (503, grpc.StatusCode.UNAVAILABLE)


@pytest.fixture(scope="module")
def small_queue(served):
    """A server whose llama-scalar queue holds two items, and {transport: URL}."""
    with served(["llama-scalar"], cache={"max_bytes": 0}, queue={"max_items": 2},
                batching={"max_wait_ms": 0}) as server:
        yield server.app, _urls(server)


@pytest.fixture
def gate(small_queue, monkeypatch):
    """The small-queue model's forward held until the test opens it (opened at the end)."""
    model = small_queue[0].state.registry.runners["llama-scalar"].model
    gated = intercept_forward(monkeypatch, model, GatedForward)
    yield gated
    gated.open()
    assert not gated.stuck, "a forward waited on the gate past its limit"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_full_queue_is_retried_after_the_servers_hint(transport, small_queue, gate, load_tiny, monkeypatch):
    """With the model busy and its queue full, the call is refused (429 /
    RESOURCE_EXHAUSTED with a retry-after hint); the client waits what the hint says, the
    queue drains meanwhile, and the retry is scored."""
    app, urls = small_queue
    waits: list[tuple[RewardServeError, float]] = []
    refused = threading.Event()
    delay = Retry.delay

    def recorded(self, attempt: int, error: Exception) -> float | None:
        wait = delay(self, attempt, error)
        waits.append((error, wait))
        refused.set()
        return wait

    monkeypatch.setattr(Retry, "delay", recorded)
    scheduler = app.state.registry.runners["llama-scalar"].scheduler
    late = {"prompt": "Late", "response": "Still scored."}
    with RewardClient(urls[transport], backoff_s=0.001) as client, ThreadPoolExecutor(3) as pool:
        plug = pool.submit(client.score, [{"input_ids": [5, 6, 7]}])
        assert gate.wait_entered(1)
        admitted = pool.submit(client.score, [{"input_ids": [41, 42]}, {"input_ids": [43]}])
        wait_for(lambda: scheduler.queued_items == 2, "two queued items")
        retried = pool.submit(client.score, [late])
        assert refused.wait(WAIT_S), "the full queue never refused the call"
        gate.open()
        result = retried.result(timeout=WAIT_S)
        assert len(admitted.result(timeout=WAIT_S).results) == 2 and plug.result(timeout=WAIT_S).results
    error, wait = waits[0]
    assert (error.status, error.code) == (429, "queue_full") and error.retry_after_s >= 1
    assert error.grpc_code == (grpc.StatusCode.RESOURCE_EXHAUSTED if transport == "grpc" else None)
    assert wait == error.retry_after_s
    assert_result_matches(result.results[0].model_dump(exclude_none=True), reference(load_tiny("llama-scalar"), late))


def test_client_timeout_is_the_grpc_deadline(small_queue, gate):
    """A call that cannot be scored within the client's timeout ends DEADLINE_EXCEEDED (a
    504), and its item leaves the server's queue."""
    app, urls = small_queue
    scheduler = app.state.registry.runners["llama-scalar"].scheduler
    with RewardClient(urls["grpc"]) as client, ThreadPoolExecutor(1) as pool:
        plug = pool.submit(client.score, [{"input_ids": [5, 6, 7]}])
        assert gate.wait_entered(1)
        with RewardClient(urls["grpc"], timeout_s=0.3) as hurried, pytest.raises(RewardServeError) as caught:
            hurried.score([{"input_ids": [31, 32]}])
        wait_for(lambda: scheduler.queued_items == 0, "the late item to leave the queue")
        gate.open()
        assert plug.result(timeout=WAIT_S).results[0].num_tokens == 3
    assert (caught.value.status, caught.value.code, caught.value.grpc_code) == (
        504, "deadline_exceeded", grpc.StatusCode.DEADLINE_EXCEEDED)


# ---- TRL ------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_trl_reward_function(transport, urls):
    with RewardClient(urls[transport], model="llama-scalar") as client:
        rewards = reward_fn(client)
        prompts = [p for p, _ in PAIRS]
        completions = [r for _, r in PAIRS]
        plain = rewards(prompts=prompts, completions=completions, completion_ids=None)
        conversational = rewards(
            prompts=[[{"role": "user", "content": p}] for p in prompts],
            completions=[[{"role": "assistant", "content": c}] for c in completions],
        )
        direct = [r.score for r in client.score(PAIRS).results]
    assert plain == pytest.approx(direct, abs=1e-6)
    assert conversational == pytest.approx(direct, abs=1e-6)  # the chat template renders both alike
    assert rewards.__name__ == "rewardserve_reward"
