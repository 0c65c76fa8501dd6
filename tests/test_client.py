"""The Python clients against a live server: the same numbers as the raw HTTP API and the
unbatched reference, typed results, errors, retries honouring Retry-After, and the TRL
reward-function adapter."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from http_helpers import assert_result_matches, live_server, reference, wait_until_loaded
from service.client import AsyncRewardClient, RewardClient, RewardServeError, reward_fn
from service.config import ModelConfig, Settings
from service.http_api import create_app

PAIRS = [("What is 2 + 2?", "It is 4."), ("Say hi.", "Hello there, how can I help you today?")]
NAMES = ("llama-scalar", "llama-helpsteer", "qwen2-prm")


@pytest.fixture(scope="module")
def base_url(tiny_model_dirs):
    settings = Settings(models=[ModelConfig(name=n, path=str(tiny_model_dirs[n])) for n in NAMES], grpc_port=0)
    with live_server(create_app(settings)) as url:
        with httpx.Client(base_url=url) as http:
            wait_until_loaded(http)
        yield url


def test_score_matches_http_and_reference(base_url, load_tiny):
    model = load_tiny("llama-scalar")
    with RewardClient(base_url, model="llama-scalar") as client:
        typed = client.score(PAIRS, cache="bypass")
    raw = httpx.post(f"{base_url}/v1/score", json={"model": "llama-scalar", "cache": "bypass", "items": [
        {"prompt": p, "response": r} for p, r in PAIRS]}).json()
    assert typed.model_dump(exclude_none=True, mode="json") == raw
    for result, (prompt, response) in zip(raw["results"], PAIRS):
        assert_result_matches(result, reference(model, {"prompt": prompt, "response": response}))


def test_async_client_matches_sync(base_url):
    async def main():
        async with AsyncRewardClient(base_url) as client:
            return await asyncio.gather(
                client.score(PAIRS, model="llama-helpsteer"),
                client.compare("Pick one.", ["A short answer.", "A much longer and more detailed answer."],
                               model="llama-helpsteer"),
                client.steps([{"prompt": "3 + 4?", "steps": ["3 + 4 = 7", "So 7."]}], model="qwen2-prm"),
                client.models(),
            )

    scored, compared, stepped, models = asyncio.run(main())
    with RewardClient(base_url) as client:
        again = client.score(PAIRS, model="llama-helpsteer")
        assert [r.model_copy(update={"cached": None}) for r in again.results] == scored.results
        again = client.compare("Pick one.", ["A short answer.", "A much longer and more detailed answer."],
                               model="llama-helpsteer")
        assert again.pairwise == compared.pairwise and again.winner == compared.winner
        assert client.steps([{"prompt": "3 + 4?", "steps": ["3 + 4 = 7", "So 7."]}], model="qwen2-prm") == stepped
        assert [m.name for m in client.models()] == [m.name for m in models] == list(NAMES)
    assert set(scored.results[0].dimensions) == {"helpfulness", "correctness", "coherence", "complexity", "verbosity"}
    assert len(stepped.results[0].step_rewards) == 2


def test_rerank_orders_by_score(base_url):
    docs = ["Fine.", "I am well, thank you for asking!", "No."]
    with RewardClient(base_url, model="llama-scalar") as client:
        ranked = client.rerank("How are you?", docs, top_n=2)
        scores = [r.score for r in client.score([("How are you?", d) for d in docs]).results]
    assert [r.index for r in ranked.results] == sorted(range(3), key=lambda i: -scores[i])[:2]


def test_errors_are_typed(base_url):
    with RewardClient(base_url) as client:
        with pytest.raises(RewardServeError) as caught:
            client.score(PAIRS, model="no-such-model")
    assert (caught.value.status, caught.value.code, caught.value.field) == (404, "model_not_found", "model")


def test_retries_429_and_503_honouring_retry_after():
    """Two refusals, then an answer: the client waits as told and returns the answer;
    a non-retryable error is raised at once."""
    answer = {"model": "m", "revision": "sha256:x", "kind": "scalar", "usage": {"total_tokens": 3},
              "results": [{"index": 0, "score": 0.5, "num_tokens": 3, "truncated": False}]}
    replies = iter([httpx.Response(429, headers={"Retry-After": "0"}, json={"error": {"code": "queue_full", "message": "full", "field": None}}),
                    httpx.Response(503, json={"error": {"code": "model_loading", "message": "loading", "field": "model"}}),
                    httpx.Response(200, json=answer),
                    httpx.Response(422, json={"error": {"code": "invalid_request", "message": "bad", "field": "items"}})])
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


def test_trl_reward_function(base_url):
    with RewardClient(base_url, model="llama-scalar") as client:
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
