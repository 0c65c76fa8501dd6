"""/v1/compare, /v1/rerank, /v1/steps and normalize='zscore' over a real socket, serving the
tiny models: every number must be the unbatched reference (`RewardModel.score([item])`)
put through the ranking semantics by hand, and every refusal a JSON error naming the field."""

from __future__ import annotations

import math

import httpx
import pytest
import yaml
from http_helpers import (
    LONG_TEXT,
    assert_error,
    assert_result_matches,
    reference,
    served_input,
)
from tiny_models import HELPSTEER

from models.spec import SPEC_FILENAME
from service.config import ModelConfig

SCALAR, MULTI, PRM = "llama-scalar", "llama-helpsteer", "qwen2-prm"
MULTI_Z, PRM_Z = "helpsteer-z", "prm-z"
PROMPT = "Please answer the question clearly."
ANSWERS = ["A helpful assistant answers politely.", "Hello!", "I cannot help with that request.",
           "The quick brown fox jumps over the lazy dog."]
STEPS = ["Add 3 and 4 to get 7.", "Multiply 7 by 2 to get 14.", "The answer is 14."]
MULTI_STATS = {"score": {"mean": 0.25, "std": 2.0},
               "dimensions": {d: {"mean": 0.1 * i, "std": 0.5 + 0.25 * i} for i, d in enumerate(HELPSTEER)},
               "count": 100, "source": "hand-made"}
PRM_STATS = {"score": {"mean": 0.5, "std": 0.1}, "aggregate": "min", "count": 100, "source": "hand-made"}
PRM_THRESHOLD = 0.999999  # prm-z's calibrated threshold: above every step reward of the tiny PRM


def _spec(directory, stats: dict) -> dict:
    spec = yaml.safe_load((directory / SPEC_FILENAME).read_text())
    if "process" in spec:
        spec["process"] |= {"threshold": PRM_THRESHOLD}
    return {**spec, "reference_stats": stats}


@pytest.fixture(scope="module")
def base_url(served, tiny_model_dirs):
    models = [
        SCALAR,
        MULTI,
        PRM,
        ModelConfig(name=MULTI_Z, path=str(tiny_model_dirs[MULTI]), spec=_spec(tiny_model_dirs[MULTI], MULTI_STATS)),
        ModelConfig(name=PRM_Z, path=str(tiny_model_dirs[PRM]), spec=_spec(tiny_model_dirs[PRM], PRM_STATS)),
    ]
    with served(models, grpc=False, batching={"max_batch_size": 3}) as server:
        yield server.url


@pytest.fixture
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def pair(response: str, prompt: str = PROMPT) -> dict:
    return {"prompt": prompt, "response": response}


def z(value: float, moments: dict) -> float:
    return (value - moments["mean"]) / moments["std"]


def top(values: list[float]) -> tuple[int | None, list[int]]:
    best = [i for i, v in enumerate(values) if v == max(values)]
    return (best[0], []) if len(best) == 1 else (None, best)


def fronts_by_hand(vectors: list[list[float]]) -> list[int]:
    """Pareto ranks by repeatedly peeling the vectors nobody left dominates."""
    left, rank, ranks = set(range(len(vectors))), 0, [None] * len(vectors)

    def dominates(a, b):
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    while left:
        front = {i for i in left if not any(dominates(vectors[j], vectors[i]) for j in left)}
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


# ---- /v1/compare ------------------------------------------------------------------------


def test_compare_scalar_is_bradley_terry_on_reference_scores(client, load_tiny):
    model = load_tiny(SCALAR)
    responses = [ANSWERS[0], {"text": ANSWERS[1]}, ANSWERS[2], ANSWERS[0]]
    body = ok(client.post("/v1/compare", json={"model": SCALAR, "prompt": PROMPT, "responses": responses}))

    texts = [ANSWERS[0], ANSWERS[1], ANSWERS[2], ANSWERS[0]]
    refs = [reference(model, pair(t)) for t in texts]
    assert (body["model"], body["kind"], body["revision"], body["normalized"]) == (
        SCALAR,
        "scalar",
        model.revision,
        False,
    )
    scores = [r["score"] for r in body["results"]]
    for i, (result, ref) in enumerate(zip(body["results"], refs, strict=True)):
        assert result["index"] == i
        assert_result_matches({k: v for k, v in result.items() if k not in ("index", "win_probability")}, ref)
    exps = [math.exp(s) for s in scores]
    assert [r["win_probability"] for r in body["results"]] == pytest.approx([e / sum(exps) for e in exps], abs=1e-9)
    for i in range(4):
        assert body["pairwise"][i] == pytest.approx([sigmoid(scores[i] - s) for s in scores], abs=1e-9)
    assert scores[0] == scores[3]  # the same response twice scores the same
    assert (body["winner"], body["tied"]) == top(scores)
    assert "dimension_winners" not in body
    assert body["usage"] == {"total_tokens": sum(r.num_tokens for r in refs)}


def test_compare_two_responses_win_probability_is_sigmoid_of_difference(client):
    body = ok(client.post("/v1/compare", json={"model": SCALAR, "prompt": PROMPT, "responses": ANSWERS[:2]}))
    a, b = (r["score"] for r in body["results"])
    assert body["results"][0]["win_probability"] == pytest.approx(sigmoid(a - b), abs=1e-9)
    assert body["pairwise"][0][1] == pytest.approx(sigmoid(a - b), abs=1e-9)


def test_compare_same_response_twice_is_a_tie(client):
    body = ok(client.post("/v1/compare", json={"model": SCALAR, "prompt": PROMPT, "responses": [ANSWERS[3]] * 2}))
    assert (body["winner"], body["tied"]) == (None, [0, 1])  # null winner is sent, not left out
    assert body["pairwise"] == [[0.5, 0.5], [0.5, 0.5]]


def test_compare_messages_and_token_forms(client, load_tiny):
    model = load_tiny(SCALAR)
    encoded = model.encode(served_input(pair(ANSWERS[1])))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    body = ok(client.post("/v1/compare", json={
        "model": SCALAR, "messages": messages,
        "responses": [ANSWERS[0], {"input_ids": encoded.input_ids, "prompt_length": encoded.prompt_length}]}))
    chat = {"messages": [*messages, {"role": "assistant", "content": ANSWERS[0]}]}
    tokens = {"input_ids": encoded.input_ids, "prompt_length": encoded.prompt_length}
    for result, item in zip(body["results"], (chat, tokens), strict=True):
        assert_result_matches({k: v for k, v in result.items() if k not in ("index", "win_probability")},
                              reference(model, item))


def test_compare_multi_objective_winner_per_dimension(client, load_tiny):
    model = load_tiny(MULTI)
    body = ok(client.post("/v1/compare", json={"model": MULTI, "prompt": PROMPT, "responses": ANSWERS}))
    refs = [reference(model, pair(t)) for t in ANSWERS]
    for result, ref in zip(body["results"], refs, strict=True):
        assert_result_matches({k: v for k, v in result.items() if k not in ("index", "win_probability")}, ref)
    served = [r["dimensions"] for r in body["results"]]
    assert list(body["dimension_winners"]) == HELPSTEER
    for dim in HELPSTEER:
        winner, tied = top([d[dim] for d in served])
        assert body["dimension_winners"][dim] == {"winner": winner, "tied": tied}
        assert winner == max(range(len(refs)), key=lambda i: refs[i].dimensions[dim])
    assert body["winner"] == max(range(len(refs)), key=lambda i: refs[i].score)

    everything_ties = ok(client.post("/v1/compare", json={"model": MULTI, "prompt": PROMPT, "responses": ANSWERS,
                                                           "tie_margin": 1e9}))
    assert (everything_ties["winner"], everything_ties["tied"]) == (None, [0, 1, 2, 3])
    assert all(v == {"winner": None, "tied": [0, 1, 2, 3]} for v in everything_ties["dimension_winners"].values())


@pytest.mark.parametrize("request_body, status, code, field", [
    ({"prompt": PROMPT, "responses": ["only one"]}, 422, "invalid_request", "responses"),
    ({"prompt": PROMPT, "messages": [{"role": "user", "content": "x"}], "responses": ["a", "b"]}, 422,
     "invalid_request", "messages"),
    ({"responses": ["a", "b"]}, 422, "invalid_request", "prompt"),
    ({"model": "nope", "prompt": PROMPT, "responses": ["a", "b"]}, 404, "model_not_found", "model"),
    ({"prompt": PROMPT, "responses": ["a", {"input_ids": [10**9]}]}, 422, "invalid_input", "responses[1].input_ids[0]"),
    ({"messages": [{"role": "robot", "content": "x"}], "responses": ["a", "b"]}, 422, "invalid_input",
     "messages[0].role"),
    ({"prompt": PROMPT, "responses": [{"text": "a", "steps": ["b"]}, "c"]}, 422, "invalid_request", "responses[0]"),
    ({"prompt": PROMPT, "responses": ["a", " ".join([LONG_TEXT] * 6)]}, 422, "input_too_long", "responses[1]"),
    ({"prompt": PROMPT, "responses": ["a", "b"], "bogus": 1}, 422, "invalid_request", "bogus"),
    ({"prompt": PROMPT, "responses": ["a", "b"], "normalize": "zscore"}, 422, "invalid_request", "normalize"),
])
def test_compare_errors_name_the_field(request_body, status, code, field, client):
    assert_error(client.post("/v1/compare", json={"model": SCALAR, **request_body}), status, code, field)


# ---- /v1/rerank -------------------------------------------------------------------------


def test_rerank_is_cohere_shaped_and_ordered_by_reference(client, load_tiny):
    model = load_tiny(SCALAR)
    documents = [ANSWERS[0], {"text": ANSWERS[1]}, ANSWERS[2], ANSWERS[3]]
    body = ok(client.post("/v1/rerank", json={"model": SCALAR, "query": PROMPT, "documents": documents, "top_n": 3}))

    refs = [reference(model, pair(t)).score for t in ANSWERS]
    expected = sorted(range(4), key=lambda i: -refs[i])[:3]
    assert body["id"].startswith("rerank-") and body["model"] == SCALAR and body["aggregation"] == "model"
    assert [r["index"] for r in body["results"]] == expected
    for result in body["results"]:
        assert set(result) == {"index", "relevance_score", "document", "score", "num_tokens", "truncated"}
        assert result["relevance_score"] == pytest.approx(refs[result["index"]], abs=1e-5)
        assert result["score"] == result["relevance_score"]
        assert result["document"] == {"text": ANSWERS[result["index"]]}
    assert set(body["usage"]) == {"prompt_tokens", "total_tokens"}  # every document was scored, not only the top 3
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"]
    assert body["usage"]["total_tokens"] == sum(reference(model, pair(t)).num_tokens for t in ANSWERS)

    bare = ok(client.post("/v1/rerank", json={"model": SCALAR, "query": PROMPT, "documents": documents,
                                              "return_documents": False}))
    assert [r["index"] for r in bare["results"]] == sorted(range(4), key=lambda i: -refs[i])
    assert all("document" not in r for r in bare["results"])


def test_rerank_multi_objective_by_caller_weights(client, load_tiny):
    model = load_tiny(MULTI)
    weights = {"helpfulness": 1.0, "verbosity": -2.0}
    body = ok(client.post("/v1/rerank", json={"model": MULTI, "query": PROMPT, "documents": ANSWERS,
                                              "weights": weights}))
    refs = [reference(model, pair(t)) for t in ANSWERS]
    by_hand = [r.dimensions["helpfulness"] - 2.0 * r.dimensions["verbosity"] for r in refs]
    assert (body["aggregation"], body["weights"]) == ("weights", weights)
    assert [r["index"] for r in body["results"]] == sorted(range(4), key=lambda i: -by_hand[i])
    for result in body["results"]:
        assert result["relevance_score"] == pytest.approx(by_hand[result["index"]], abs=1e-5)
        assert result["score"] == pytest.approx(refs[result["index"]].score, abs=1e-5)
        assert result["dimensions"] == pytest.approx(refs[result["index"]].dimensions, abs=1e-5)


def test_rerank_pareto_fronts_then_model_score(client, load_tiny):
    model = load_tiny(MULTI)
    texts = ANSWERS + ["Hi", "4", LONG_TEXT]
    body = ok(client.post("/v1/rerank", json={"model": MULTI, "query": PROMPT, "documents": texts,
                                              "aggregation": "pareto"}))
    refs = [reference(model, pair(t)) for t in texts]
    served_dims = {r["index"]: [r["dimensions"][d] for d in HELPSTEER] for r in body["results"]}
    ranks = fronts_by_hand([served_dims[i] for i in range(len(texts))])
    scores = [r.score for r in refs]
    assert [r["index"] for r in body["results"]] == sorted(range(len(texts)), key=lambda i: (ranks[i], -scores[i], i))
    assert {r["index"]: r["pareto_rank"] for r in body["results"]} == dict(enumerate(ranks))
    assert body["pareto_front"] == [i for i, r in enumerate(ranks) if r == 0]


@pytest.mark.parametrize("extra, field", [
    ({"weights": {"helpfulness": 1.0, "nope": 2.0}}, "weights.nope"),
    ({"aggregation": "weights"}, "weights"),
    ({"aggregation": "model", "weights": {"helpfulness": 1.0}}, "weights"),
])
def test_rerank_refuses_bad_weights(extra, field, client):
    error = assert_error(client.post("/v1/rerank", json={"model": MULTI, "query": PROMPT, "documents": ["a"], **extra}),
                         422, "invalid_request", field)
    if field == "weights.nope":
        assert "'nope'" in error["message"] and "helpfulness" in error["message"]


def test_rerank_refuses_pareto_and_weights_on_a_scalar_model(client):
    base = {"model": SCALAR, "query": PROMPT, "documents": ["a", "b"]}
    assert_error(
        client.post("/v1/rerank", json={**base, "aggregation": "pareto"}), 422, "invalid_request", "aggregation"
    )
    assert_error(client.post("/v1/rerank", json={**base, "weights": {"x": 1}}), 422, "invalid_request", "weights")
    assert_error(client.post("/v1/rerank", json={**base, "max_chunks_per_doc": 3}), 422, "invalid_request",
                 "max_chunks_per_doc")  # ours is strict; /rerank (vLLM/Cohere) ignores unknown fields


def test_rerank_process_model_splits_text_into_steps(client, load_tiny):
    model = load_tiny(PRM)
    question = "What is (3 + 4) * 2?"
    documents = [
        "\n\n".join(STEPS),
        "Add 3 and 4 to get 8. <extra_0> The answer is 16. <extra_0>",
        {"steps": STEPS[:1]},
    ]
    body = ok(client.post("/v1/rerank", json={"model": PRM, "query": question, "documents": documents}))
    as_steps = [STEPS, ["Add 3 and 4 to get 8.", "The answer is 16."], STEPS[:1]]
    refs = [reference(model, {"prompt": question, "steps": s}) for s in as_steps]
    assert [r["index"] for r in body["results"]] == sorted(range(3), key=lambda i: -refs[i].score)
    for result in body["results"]:
        ref = refs[result["index"]]
        assert result["step_rewards"] == pytest.approx(ref.step_rewards, abs=1e-5)
        assert result["relevance_score"] == pytest.approx(ref.score, abs=1e-5)
    assert "document" not in next(r for r in body["results"] if r["index"] == 2)  # a steps document has no text


# ---- /v1/steps --------------------------------------------------------------------------


def test_steps_rewards_aggregate_and_first_below(client, load_tiny):
    model = load_tiny(PRM)
    item = {"prompt": "What is (3 + 4) * 2?", "steps": STEPS}
    ref = reference(model, item)
    threshold = sorted(ref.step_rewards)[1]  # the lowest reward is below it, nothing else
    tokens = {"input_ids": model.encode(served_input(item)).input_ids}
    body = ok(client.post("/v1/steps", json={"model": PRM, "items": [item, tokens], "aggregate": "mean",
                                             "threshold": threshold}))
    assert (body["model"], body["aggregate"], body["threshold"], body["normalized"]) == (PRM, "mean", threshold, False)
    for i, result in enumerate(body["results"]):
        assert result["index"] == i
        assert result["step_rewards"] == pytest.approx(ref.step_rewards, abs=1e-5)
        assert result["score"] == pytest.approx(sum(ref.step_rewards) / 3, abs=1e-5)
        assert result["first_below"] == ref.step_rewards.index(min(ref.step_rewards))
        assert (result["step_offset"], result["num_tokens"], result["truncated"]) == (0, ref.num_tokens, False)

    nothing_below = ok(client.post("/v1/steps", json={"model": PRM, "items": [item], "threshold": 0.0}))
    result = nothing_below["results"][0]
    assert result["first_below"] is None and "first_below" in result  # null, not left out
    assert nothing_below["aggregate"] == "min" and result["score"] == pytest.approx(min(ref.step_rewards), abs=1e-5)


def test_steps_threshold_defaults_to_the_models_calibrated_one(client, load_tiny):
    """No threshold in the request: the spec's process.threshold (0.5 when it sets none)."""
    item = {"prompt": "What is (3 + 4) * 2?", "steps": STEPS}
    rewards = reference(load_tiny(PRM), item).step_rewards
    calibrated = ok(client.post("/v1/steps", json={"model": PRM_Z, "items": [item]}))
    assert calibrated["threshold"] == PRM_THRESHOLD and calibrated["results"][0]["first_below"] == 0
    plain = ok(client.post("/v1/steps", json={"model": PRM, "items": [item]}))
    assert plain["threshold"] == 0.5
    assert plain["results"][0]["first_below"] == next((i for i, r in enumerate(rewards) if r < 0.5), None)


def test_steps_after_left_truncation_count_from_the_callers_first_step(client, load_tiny):
    model = load_tiny(PRM)
    steps = [f"Step {i}: {LONG_TEXT}" for i in range(8)]
    item = {"prompt": "Explain.", "steps": steps}
    ref = reference(model, item, "left")
    assert ref.truncated and 0 < len(ref.step_rewards) < len(steps)
    body = ok(client.post("/v1/steps", json={"model": PRM, "items": [item], "truncate": "left", "threshold": 2.0}))
    result = body["results"][0]
    offset = len(steps) - len(ref.step_rewards)
    assert result["step_rewards"] == pytest.approx(ref.step_rewards, abs=1e-5)
    assert (result["step_offset"], result["first_below"], result["truncated"]) == (offset, offset, True)


def test_steps_errors(client):
    item = {"prompt": "Q", "steps": ["a", "b"]}
    assert_error(client.post("/v1/steps", json={"model": SCALAR, "items": [item]}), 422, "invalid_request", "model")
    assert_error(
        client.post("/v1/steps", json={"model": PRM, "items": [item, {"prompt": "Q", "steps": ["x <extra_0>"]}]}),
        422,
        "invalid_input",
        "items[1].steps[0]",
    )
    assert_error(client.post("/v1/steps", json={"model": PRM, "items": []}), 422, "invalid_request", "items")


# ---- normalize ---------------------------------------------------------------------------


def test_score_zscore_against_reference_stats(client, load_tiny):
    model = load_tiny(MULTI)
    items = [pair(t) for t in ANSWERS]
    body = ok(client.post("/v1/score", json={"model": MULTI_Z, "items": items, "normalize": "zscore"}))
    assert body["normalized"] is True
    for result, item in zip(body["results"], items, strict=True):
        ref = reference(model, item)
        assert result["score"] == pytest.approx(z(ref.score, MULTI_STATS["score"]), abs=1e-5)
        assert result["dimensions"] == pytest.approx(
            {d: z(v, MULTI_STATS["dimensions"][d]) for d, v in ref.dimensions.items()}, abs=1e-5)
    raw = ok(client.post("/v1/score", json={"model": MULTI_Z, "items": items}))
    assert "normalized" not in raw
    assert raw["results"][0]["score"] == pytest.approx(reference(model, items[0]).score, abs=1e-5)


def test_zscore_refusals(client):
    item = {"prompt": "Q", "steps": ["a", "b"]}
    assert_error(client.post("/v1/score", json={"model": MULTI, "items": [pair("a")], "normalize": "zscore"}),
                 422, "invalid_request", "normalize")
    error = assert_error(client.post("/v1/score", json={"model": PRM_Z, "items": [item], "normalize": "zscore",
                                                        "aggregate": "mean"}), 422, "invalid_request", "normalize")
    assert "'min'" in error["message"]
    assert_error(client.post("/v1/score", json={"model": MULTI_Z, "items": [pair("a")], "normalize": "minmax"}),
                 422, "invalid_request", "normalize")


def test_ranking_uses_normalized_values_when_asked(client, load_tiny):
    model = load_tiny(MULTI)
    refs = [reference(model, pair(t)) for t in ANSWERS]
    zs = [z(r.score, MULTI_STATS["score"]) for r in refs]
    compared = ok(client.post("/v1/compare", json={"model": MULTI_Z, "prompt": PROMPT, "responses": ANSWERS,
                                                   "normalize": "zscore"}))
    assert compared["normalized"] is True
    assert compared["pairwise"][0] == pytest.approx([sigmoid(zs[0] - s) for s in zs], abs=1e-5)

    weights = {"correctness": 1.0, "coherence": 0.5}
    reranked = ok(client.post("/v1/rerank", json={"model": MULTI_Z, "query": PROMPT, "documents": ANSWERS,
                                                  "weights": weights, "normalize": "zscore"}))
    by_hand = [sum(w * z(r.dimensions[d], MULTI_STATS["dimensions"][d]) for d, w in weights.items()) for r in refs]
    assert [r["index"] for r in reranked["results"]] == sorted(range(4), key=lambda i: -by_hand[i])
    assert [r["relevance_score"] for r in reranked["results"]] == pytest.approx(sorted(by_hand, reverse=True), abs=1e-5)

    steps = ok(client.post("/v1/steps", json={"model": PRM_Z, "normalize": "zscore",
                                              "items": [{"prompt": "Q?", "steps": STEPS}]}))
    ref = reference(load_tiny(PRM), {"prompt": "Q?", "steps": STEPS})
    result = steps["results"][0]
    assert steps["normalized"] is True
    assert result["score"] == pytest.approx(z(min(ref.step_rewards), PRM_STATS["score"]), abs=1e-5)
    assert result["step_rewards"] == pytest.approx(ref.step_rewards, abs=1e-5)  # probabilities stay as they are
