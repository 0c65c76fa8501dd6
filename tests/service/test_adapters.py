"""LoRA adapters served over real HTTP and gRPC on loopback: several adapters and the base in
one stream of concurrent requests, each item equal to PEFT's own forward of its adapter; the
cache and in-flight deduplication keep adapters apart; /v1/models lists each adapter with its
revision; an unknown adapter is refused naming the field and the model's adapters."""

from __future__ import annotations

import json
import shlex
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml
from http_helpers import assert_error, free_port, serve
from lora_helpers import make_adapter, peft_forward, sequence_score
from tiny_models import _llama_config, _llama_tokenizer, _save
from transformers import LlamaForCausalLM

from models.inputs import TextPair
from models.reward_model import RewardModel
from service.client import RewardClient, RewardServeError
from service.config import ModelConfig, Settings

TOL = 1e-5
ITEMS = [{"prompt": "What is 2 + 2?", "response": "4"},
         {"prompt": "Name a prime above 10.", "response": "11 is prime, and so is 13."},
         {"prompt": "Say hi.", "response": "Hello there, how can I help you today?"},
         {"prompt": "Capital of France?", "response": "Paris."}]
SCORERS = (None, "helpful", "harmless")


@pytest.fixture(scope="module")
def lora(tiny_model_dirs, tmp_path_factory):
    """A server of a Llama reward model with two adapters, and of a headless causal LM whose
    head only its adapter brings; the expected score of every item by every scorer (PEFT's)."""
    root, base = tmp_path_factory.mktemp("lora-served"), tiny_model_dirs["llama-scalar"]
    adapters = {name: make_adapter(base, root / name, "SEQ_CLS", seed, modules_to_save=["score"])
                for name, seed in (("helpful", 1), ("harmless", 2))}
    tok = _llama_tokenizer()
    plain = _save(root / "plain", LlamaForCausalLM(_llama_config(tok, num_labels=1)), tok, spec={"kind": "scalar"})
    headless = make_adapter(plain, root / "headless", "SEQ_CLS", 3, modules_to_save=["score"])
    encoded = [RewardModel.load("encoder", base).encode(TextPair(**item)) for item in ITEMS]
    expected = {}
    for name in SCORERS:
        reference = peft_forward(base, adapters.get(name), "SEQ_CLS")
        expected[name] = [sequence_score(reference, enc) for enc in encoded]
    settings = Settings(models=[
        ModelConfig(name="rm", path=str(base), adapters={k: str(v) for k, v in adapters.items()}),
        ModelConfig(name="headless", path=str(plain), adapters={"rm": str(headless)}),
    ], server={"grpc_port": free_port()}, batching={"max_wait_ms": 20})
    with serve(settings) as served:
        yield served, expected


def _score(http, items, adapter=None, **options):
    body = {"model": "rm", "items": items, **({"adapter": adapter} if adapter else {}), **options}
    response = http.post("/v1/score", json=body)
    assert response.status_code == 200, response.text
    return [r["score"] for r in response.json()["results"]]


def test_adapters_and_base_concurrently(lora):
    """One item per request and whole requests, of every scorer interleaved, all at once."""
    served, expected = lora
    calls = [(i, name) for i in range(len(ITEMS)) for name in SCORERS] * 2
    with ThreadPoolExecutor(8) as pool:
        singles = list(pool.map(lambda c: _score(served.http, [ITEMS[c[0]]], c[1], cache="bypass")[0], calls))
        wholes = list(pool.map(lambda name: _score(served.http, ITEMS, name, cache="bypass"), SCORERS * 2))
    for (i, name), score in zip(calls, singles):
        assert score == pytest.approx(expected[name][i], abs=TOL), (i, name)
    for name, scores in zip(SCORERS * 2, wholes):
        assert scores == pytest.approx(expected[name], abs=TOL), name
    assert _score(served.http, ITEMS, cache="bypass") == pytest.approx(expected[None], abs=TOL)


def test_cache_keeps_adapters_apart(lora):
    served, expected = lora
    for _ in range(2):  # the second round is answered from the cache
        for name in SCORERS:
            assert _score(served.http, ITEMS[:2], name) == pytest.approx(expected[name][:2], abs=TOL)


def test_ranking_by_an_adapter(lora):
    served, expected = lora
    body = {"model": "rm", "adapter": "harmless", "prompt": ITEMS[0]["prompt"], "responses": ["4", "5"]}
    response = served.http.post("/v1/compare", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["score"] == pytest.approx(expected["harmless"][0], abs=TOL)


def test_models_list_adapters(lora):
    served, _ = lora
    cards = {card["name"]: card for card in served.http.get("/v1/models").json()["models"]}
    assert set(cards["rm"]["adapters"]) == {"helpful", "harmless"}
    assert all(rev.startswith("sha256:") for rev in cards["rm"]["adapters"].values())
    assert cards["rm"]["adapters"]["helpful"] != cards["rm"]["adapters"]["harmless"]
    with RewardClient(f"grpc://{served.grpc_target}") as client:
        over_grpc = {card.name: card for card in client.models()}
    assert over_grpc["rm"].adapters == cards["rm"]["adapters"]


def test_unknown_adapter_refused(lora):
    served, expected = lora
    error = assert_error(served.http.post("/v1/score", json={"model": "rm", "adapter": "nope", "items": ITEMS}),
                         404, "adapter_not_found", "adapter")
    assert "'harmless', 'helpful'" in error["message"]
    with RewardClient(f"grpc://{served.grpc_target}", model="rm", retries=0) as client:
        with pytest.raises(RewardServeError) as raised:
            client.score(ITEMS, adapter="nope")
        assert (raised.value.status, raised.value.field) == (404, "adapter")
        scores = [r.score for r in client.score(ITEMS, adapter="helpful", cache="bypass").results]
    assert scores == pytest.approx(expected["helpful"], abs=TOL)


def test_headless_base_needs_an_adapter(lora):
    served, _ = lora
    body = {"model": "headless", "items": ITEMS}
    assert "'rm'" in assert_error(served.http.post("/v1/score", json=body), 422, "adapter_required", "adapter")[
        "message"]
    assert served.http.post("/v1/score", json=body | {"adapter": "rm"}).status_code == 200


def test_the_docs_examples_are_valid():
    """docs/adapters.md's config and request are what the server accepts."""
    from doc_examples import blocks
    from paths import ROOT

    from service.protocol.scoring import ScoreRequest

    (config, *_), (curl, *_) = [[text for lang, text in blocks(ROOT / "docs/adapters.md") if lang == want]
                                for want in ("yaml", "bash")]
    entry = ModelConfig(**yaml.safe_load(config)["models"][0])
    assert set(entry.adapters) == {"helpful", "harmless"}
    body = json.loads(shlex.split(curl)[shlex.split(curl).index("-d") + 1])
    assert ScoreRequest.model_validate(body).adapter == "helpful"
