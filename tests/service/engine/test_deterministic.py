"""`deterministic`: an item's score is the same bits whatever its batch-mates and batch size,
on a live server, for tiny decoders and the embedded MiniLM, over HTTP and gRPC. Without it,
the same items batched together get other last bits, which is what makes this worth testing."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from service.config import ModelConfig
from service.grpc.proto import rewardserve_pb2 as pb
from service.grpc.proto import rewardserve_pb2_grpc as pb_grpc

WORDS = "the quick brown fox jumps over a lazy dog while our cat sleeps and answers clearly".split()
MODELS = ["llama-scalar", "minilm-harmless"]
WAIT_S = 60.0


def _items(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": " ".join(rng.choices(WORDS, k=rng.randint(2, 8))),
             "response": " ".join(rng.choices(WORDS, k=rng.randint(3, 50)))} for _ in range(count)]


TARGETS = _items(7, seed=1)
FILLERS = _items(25, seed=2)  # other batch-mates, of other lengths


@pytest.fixture(scope="module")
def server(served):
    with served(["llama-scalar", ModelConfig(name="minilm-harmless", path="builtin:minilm-harmless")],
                batching={"max_wait_ms": 20}) as live:
        yield live


def _scores(server, model: str, items: list[dict], **options) -> list[float]:
    reply = server.http.post("/v1/score", json={"model": model, "items": items, "cache": "bypass", **options})
    assert reply.status_code == 200, reply.text
    return [r["score"] for r in reply.json()["results"]]


def _alone(server, model: str) -> list[float]:
    return [_scores(server, model, [item], deterministic=True)[0] for item in TARGETS]


@pytest.mark.parametrize("model", MODELS)
def test_batched_scores_differ_in_the_last_bits_without_the_option(server, model):
    alone = [_scores(server, model, [item])[0] for item in TARGETS]  # one at a time: batches of one
    batched = _scores(server, model, TARGETS + FILLERS)[:len(TARGETS)]
    assert batched != alone
    assert batched == pytest.approx(alone, abs=1e-4)


@pytest.mark.parametrize("model", MODELS)
def test_deterministic_scores_are_the_same_bits_in_any_batch(server, model):
    alone = _alone(server, model)
    assert _scores(server, model, TARGETS[:1], deterministic=True) == alone[:1]
    assert _scores(server, model, TARGETS, deterministic=True) == alone
    mixed = FILLERS[:12] + TARGETS + FILLERS[12:]  # 32 items
    assert _scores(server, model, mixed, deterministic=True)[12:19] == alone
    assert _scores(server, model, list(reversed(mixed)), deterministic=True)[13:20] == list(reversed(alone))


@pytest.mark.parametrize("model", MODELS)
def test_concurrent_one_item_requests_get_the_same_bits(server, model):
    """Many one-item requests at once, deterministic ones among batched ones: the queue holds
    both, and the deterministic items still get their scores alone."""
    alone = _alone(server, model)
    calls = [(item, True) for item in TARGETS] * 3 + [(item, False) for item in FILLERS]
    random.Random(3).shuffle(calls)
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda call: _scores(server, model, [call[0]], deterministic=call[1],
                                                 priority="bulk")[0], calls))
    for (item, deterministic), score in zip(calls, got):
        if deterministic:
            assert score == alone[TARGETS.index(item)]


def test_the_cache_keeps_batched_and_alone_results_apart(server):
    items = _items(6, seed=4)
    alone = [_scores(server, "llama-scalar", [item], deterministic=True)[0] for item in items]
    batched = server.http.post("/v1/score", json={"model": "llama-scalar", "items": items + FILLERS}).json()
    assert [r["score"] for r in batched["results"][:6]] != alone  # stored, under the batched entries
    again = server.http.post("/v1/score", json={"model": "llama-scalar", "items": items, "deterministic": True})
    results = again.json()["results"]
    assert [r["score"] for r in results] == alone
    assert not any(r.get("cached") for r in results)  # computed alone, not the batched entries
    cached = server.http.post("/v1/score", json={"model": "llama-scalar", "items": items, "deterministic": True})
    assert [(r["score"], r["cached"]) for r in cached.json()["results"]] == [(s, True) for s in alone]


def test_grpc_carries_the_option(server):
    alone = _alone(server, "llama-scalar")
    items = [pb.Item(text=pb.TextItem(**item)) for item in FILLERS[:10] + TARGETS]
    with grpc.insecure_channel(server.grpc_target) as channel:
        reply = pb_grpc.RewardServiceStub(channel).Score(
            pb.ScoreRequest(model="llama-scalar", items=items, cache="bypass", deterministic=True), timeout=WAIT_S)
    assert [r.score for r in reply.results[10:]] == alone


def test_a_model_configured_deterministic_scores_alone_unless_a_request_says_not(served, tiny_model_dirs):
    config = ModelConfig(name="llama-deterministic", path=str(tiny_model_dirs["llama-scalar"]), deterministic=True)
    with served([config], grpc=False) as live:
        alone = [_scores(live, "llama-deterministic", [item])[0] for item in TARGETS]
        assert _scores(live, "llama-deterministic", FILLERS + TARGETS)[len(FILLERS):] == alone
        assert _scores(live, "llama-deterministic", FILLERS + TARGETS, deterministic=False)[len(FILLERS):] != alone


def test_a_deterministic_that_is_not_a_boolean_is_refused_naming_it(server):
    reply = server.http.post("/v1/score", json={"items": TARGETS[:1], "deterministic": [True]})
    assert reply.status_code == 422
    assert "deterministic" in reply.text


def test_trainers_routes_take_the_option(server):
    """OpenRLHF's /get_reward (in the body or the query string) and vLLM's /classify: the
    routes RL trainers call, which force one sequence at a time elsewhere to get this."""
    model = "minilm-harmless"
    alone = _alone(server, model)
    texts = [f"{item['prompt']} {item['response']}" for item in TARGETS + FILLERS]
    prompts = [item["prompt"] for item in TARGETS + FILLERS]
    body = {"model": model, "query": texts, "prompts": prompts, "mode": "split"}
    by_body = server.http.post("/get_reward", json={**body, "deterministic": True}).json()["scores"]
    by_query = server.http.post("/get_reward?deterministic=true", json=body).json()["scores"]
    assert by_body[:len(TARGETS)] == alone and by_query[:len(TARGETS)] == alone
    single = [server.http.post("/get_reward", json={**body, "query": [t], "prompts": [p]}).json()["scores"][0]
              for t, p in zip(texts[:len(TARGETS)], prompts, strict=False)]
    assert single == alone  # one query per request is alone anyway
    def classify(inputs: list[str]) -> list:
        reply = server.http.post("/classify", json={"model": model, "input": inputs, "use_activation": False,
                                                   "deterministic": True})
        assert reply.status_code == 200, reply.text
        return [row["probs"] for row in reply.json()["data"]]

    assert classify(texts)[:len(TARGETS)] == [classify([text])[0] for text in texts[:len(TARGETS)]]
