"""The compatibility endpoints over a real socket: OpenRLHF's remote reward model
(`/get_reward`) and vLLM's pooling API (`/pooling`, `/classify`, `/score`, `/rerank`),
answered with exactly the keys those clients read and the numbers of the unbatched
reference (`RewardModel.score([item])`)."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
import yaml
from http_helpers import LONG_TEXT, assert_error, reference
from sched_helpers import intercept_forward
from tiny_models import HELPSTEER

from models.inputs import RenderedText, TokenIds
from models.spec import SPEC_FILENAME
from service.config import ModelConfig
from service.engine.scheduler import Priority

SCALAR, MULTI, PRM, MULTI_Z = "llama-scalar", "llama-helpsteer", "qwen2-prm", "helpsteer-z"
STATS = {"score": {"mean": -0.5, "std": 4.0},
         "dimensions": {d: {"mean": 0.2, "std": 0.5} for d in HELPSTEER}, "count": 50, "source": "hand-made"}
PROMPTS = ["What is 2 + 2?", "Tell me a story.", "Hi"]
RESPONSES = [" 4", " Once upon a time a fox jumped over a lazy dog.", " Hello!"]
VLLM_USAGE_KEYS = {"prompt_tokens", "total_tokens", "completion_tokens", "prompt_tokens_details"}


@pytest.fixture(scope="module")
def server(served, tiny_model_dirs):
    spec = yaml.safe_load((tiny_model_dirs[MULTI] / SPEC_FILENAME).read_text())
    models = [SCALAR, MULTI, PRM,
              ModelConfig(name=MULTI_Z, path=str(tiny_model_dirs[MULTI]), spec={**spec, "reference_stats": STATS})]
    # a generous batching wait, so one-rollout requests sent together share forwards
    with served(models, grpc=False, batching={"max_batch_size": 16, "max_wait_ms": 50}) as server:
        yield server


@pytest.fixture(scope="module")
def app(server):
    return server.app


@pytest.fixture(scope="module")
def base_url(server):
    return server.url


@pytest.fixture
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def pair(prompt: str, response: str) -> dict:
    return {"prompt": prompt, "response": response}


def raw(model, text: str):
    """The reference for vLLM-style `input` text: tokenized as it is, special tokens added."""
    ids = model.encoder.tokenizer(text, add_special_tokens=True)["input_ids"]
    return model.score([TokenIds(tuple(ids))])[0]


def as_served(model, query: str, truncate: str | None = None):
    """The reference for a /get_reward query in mode serve_rm (with no padding or EOS on
    its ends): the text with the model's EOS appended, tokenized as it is."""
    return model.score([RenderedText(query + model.encoder.tokenizer.eos_token)], truncate)[0]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ---- OpenRLHF -------------------------------------------------------------------------------


def test_get_reward_answers_what_openrlhf_reads(client, load_tiny):
    """The remote RM client posts {query, prompts, labels} and reads rewards, scores and
    extra_logs; the trainer concatenates every response's values along dim 0 and splits
    them per sample, so each must be a list with one number per query."""
    model = load_tiny(SCALAR)
    queries = [p + r for p, r in zip(PROMPTS, RESPONSES)]
    infos = [ok(client.post("/get_reward", json={"query": queries[:2], "prompts": PROMPTS[:2], "labels": ["4", ""]})),
             ok(client.post("/get_reward", json={"query": queries[2:], "prompts": PROMPTS[2:], "labels": [None]}))]

    for info in infos:
        assert set(info) == {"rewards", "scores", "extra_logs", "truncate"} and info["truncate"] == "left"
        assert info["scores"] == info["rewards"]
        assert info["extra_logs"] == {"rm/truncated": [0.0] * len(info["rewards"])}
    expected = [as_served(model, query).score for query in queries]
    rewards = torch.cat([torch.as_tensor(info["rewards"]) for info in infos], dim=0)
    assert rewards.tolist() == pytest.approx(expected, abs=1e-5)
    logs = torch.cat([torch.as_tensor(info["extra_logs"]["rm/truncated"]) for info in infos], dim=0).split([2, 1])
    assert [len(part) for part in logs] == [2, 1]


def test_get_reward_split_without_prompts_scores_the_whole_query(client, load_tiny):
    body = ok(client.post("/get_reward", json={"query": ["Hello there, friend."], "mode": "split"}))
    assert body["rewards"] == pytest.approx([reference(load_tiny(SCALAR), pair("", "Hello there, friend.")).score],
                                            abs=1e-5)


def test_get_reward_one_rollout_per_request_is_bulk_and_batched(app, client, load_tiny, monkeypatch):
    """OpenRLHF sends one rollout per request, many at once: each is bulk priority and
    the scheduler puts concurrent ones into shared forwards."""
    priorities: list = []
    scorer = app.state.scorer
    original_score = scorer.score
    monkeypatch.setattr(scorer, "score", lambda job: priorities.append(job.priority) or original_score(job))
    served = app.state.registry.runners[SCALAR].model
    batch_sizes: list[int] = []
    intercept_forward(
        monkeypatch, served, lambda forward: lambda batch: batch_sizes.append(len(batch)) or forward(batch)
    )

    prompts = [f"Question {i}: what is {i} + {i}?" for i in range(12)]
    answers = [f" It is {2 * i}." for i in range(12)]

    def post(i: int) -> dict:
        return ok(client.post("/get_reward", json={"query": [prompts[i] + answers[i]], "prompts": [prompts[i]]}))

    with ThreadPoolExecutor(12) as pool:
        bodies = list(pool.map(post, range(12)))
    model = load_tiny(SCALAR)
    for i, body in enumerate(bodies):
        assert body["rewards"] == pytest.approx([as_served(model, prompts[i] + answers[i]).score], abs=1e-5)
    assert priorities == [Priority.bulk] * 12
    assert max(batch_sizes) >= 2, batch_sizes

    priorities.clear()
    ok(client.post("/get_reward?priority=interactive", json={"query": ["x"]}))
    ok(client.post("/get_reward?priority=interactive", json={"query": ["x"], "priority": "bulk"}))
    assert priorities == [Priority.interactive, Priority.bulk]  # the body wins over the query string


def test_get_reward_multi_objective_logs_dimensions_per_query(client, load_tiny):
    model = load_tiny(MULTI)
    body = ok(client.post(f"/get_reward?model={MULTI}&mode=split",
                          json={"query": [p + r for p, r in zip(PROMPTS, RESPONSES)], "prompts": PROMPTS}))
    refs = [reference(model, pair(p, r)) for p, r in zip(PROMPTS, RESPONSES)]
    assert body["rewards"] == pytest.approx([r.score for r in refs], abs=1e-5)
    assert list(body["extra_logs"]) == [f"rm/{d}" for d in HELPSTEER] + ["rm/truncated"]
    for dim in HELPSTEER:
        assert body["extra_logs"][f"rm/{dim}"] == pytest.approx([r.dimensions[dim] for r in refs], abs=1e-5)


def test_get_reward_normalized_rewards_and_raw_scores(client, load_tiny):
    model = load_tiny(MULTI)
    queries = [p + r for p, r in zip(PROMPTS, RESPONSES)]
    refs = [reference(model, pair(p, r)) for p, r in zip(PROMPTS, RESPONSES)]
    body = ok(client.post(f"/get_reward?model={MULTI_Z}&normalize=zscore&mode=split",
                          json={"query": queries, "prompts": PROMPTS}))
    assert body["scores"] == pytest.approx([r.score for r in refs], abs=1e-5)
    assert body["rewards"] == pytest.approx([(r.score + 0.5) / 4.0 for r in refs], abs=1e-5)
    assert body["extra_logs"]["rm/helpfulness"] == pytest.approx(
        [(r.dimensions["helpfulness"] - 0.2) / 0.5 for r in refs], abs=1e-5)
    assert_error(client.post(f"/get_reward?model={MULTI}&normalize=zscore", json={"query": ["x"]}),
                 422, "invalid_request", "normalize")


def test_get_reward_process_model_splits_and_cuts_steps_at_blank_lines(client, load_tiny):
    model = load_tiny(PRM)
    prompt, steps = "What is (3 + 4) * 2?", ["Add 3 and 4 to get 7.", "Multiply 7 by 2 to get 14.", "The answer is 14."]
    query = prompt + "\n\n" + "\n\n".join(steps)
    body = ok(client.post("/get_reward", json={"model": PRM, "query": [query], "prompts": [prompt]}))
    ref = reference(model, {"prompt": prompt, "steps": steps})
    assert body["rewards"] == pytest.approx([ref.score], abs=1e-5)
    assert body["extra_logs"] == {"rm/num_steps": [3.0], "rm/truncated": [0.0]}


def test_get_reward_errors_name_the_query(client, load_tiny):
    too_long = "Summarize. " + " ".join([LONG_TEXT] * 6)
    split = {"query": ["Hi there", "Bye"], "prompts": ["Hi", "Hi"], "mode": "split"}
    assert_error(client.post("/get_reward", json=split), 422, "invalid_request", "query[1]")
    assert_error(client.post("/get_reward", json={"query": ["Hi there"], "prompts": ["Hi", "Hi"]}),
                 422, "invalid_request", "prompts")
    assert_error(client.post("/get_reward?model=nope", json={"query": ["x"]}), 404, "model_not_found", "model")
    assert_error(client.post("/get_reward", json={"query": []}), 422, "invalid_request", "query")
    cut = ok(client.post("/get_reward", json={"query": ["ok", too_long]}))  # cut from the left by default
    assert cut["extra_logs"]["rm/truncated"] == [0.0, 1.0] and cut["truncate"] == "left"
    assert cut["rewards"][1] == pytest.approx(as_served(load_tiny(SCALAR), too_long, "left").score, abs=1e-5)


# ---- vLLM -----------------------------------------------------------------------------------


def test_classify_scalar_is_a_one_class_sigmoid(client, load_tiny):
    model = load_tiny(SCALAR)
    texts = ["Hello there!", "The quick brown fox."]
    body = ok(client.post("/classify", json={"model": SCALAR, "input": texts, "user": "ignored"}))
    assert set(body) == {"id", "object", "created", "model", "data", "usage"}
    assert body["id"].startswith("classify-") and body["object"] == "list" and body["model"] == SCALAR
    assert isinstance(body["created"], int)
    refs = [raw(model, t) for t in texts]
    for i, (data, ref) in enumerate(zip(body["data"], refs, strict=True)):
        assert data == {"index": i, "label": "LABEL_0", "probs": pytest.approx([sigmoid(ref.score)], abs=1e-6),
                        "num_classes": 1, "truncated": False}
    assert set(body["usage"]) == VLLM_USAGE_KEYS
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == sum(r.num_tokens for r in refs)
    assert body["usage"]["completion_tokens"] == 0

    single = ok(client.post("/classify", json={"model": SCALAR, "input": texts[0]}))
    assert single["data"][0]["probs"] == pytest.approx(body["data"][0]["probs"], abs=1e-6)


def test_classify_process_model_is_bad_good(client, load_tiny):
    text = "What is 3 + 4? 3 + 4 = 7<extra_0> The answer is 7.<extra_0>"
    ref = raw(load_tiny(PRM), text)
    data = ok(client.post("/classify", json={"model": PRM, "input": text}))["data"][0]
    assert data["probs"] == pytest.approx([1 - ref.score, ref.score], abs=1e-6) and data["num_classes"] == 2
    assert data["label"] == ("LABEL_1" if ref.score > 0.5 else "LABEL_0")


def test_pooling_per_kind(client, load_tiny):
    text = "What is 3 + 4? 3 + 4 = 7<extra_0> The answer is 7.<extra_0>"
    prm = ok(client.post("/pooling", json={"model": PRM, "input": [text], "encoding_format": "float"}))
    assert set(prm) == {"id", "object", "created", "model", "data", "usage"} and prm["id"].startswith("pooling-")
    ref = raw(load_tiny(PRM), text)
    assert prm["data"] == [{"index": 0, "object": "pooling", "data": pytest.approx(ref.step_rewards, abs=1e-6),
                            "truncated": False}]
    assert len(ref.step_rewards) == 2

    scalar_model = load_tiny(SCALAR)
    ids = scalar_model.encoder.tokenizer("Hello there!", add_special_tokens=True)["input_ids"]
    for form in (ids, [ids], "Hello there!"):
        body = ok(client.post("/pooling", json={"model": SCALAR, "input": form}))
        assert body["data"][0]["data"] == pytest.approx([raw(scalar_model, "Hello there!").score], abs=1e-6)

    multi = ok(client.post("/pooling", json={"model": MULTI, "input": "Hello there!"}))
    dims = raw(load_tiny(MULTI), "Hello there!").dimensions
    assert multi["data"][0]["data"] == pytest.approx([dims[d] for d in HELPSTEER], abs=1e-6)

    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    chat = ok(client.post("/pooling", json={"model": SCALAR, "messages": messages}))
    assert chat["data"][0]["data"] == pytest.approx([reference(scalar_model, {"messages": messages}).score], abs=1e-6)


def test_vllm_score_one_to_many_and_many_to_many(client, load_tiny):
    model = load_tiny(SCALAR)
    one_to_n = ok(client.post("/score", json={"model": SCALAR, "text_1": PROMPTS[0], "text_2": RESPONSES}))
    assert set(one_to_n) == {"id", "object", "created", "model", "data", "usage"} and one_to_n["id"].startswith(
        "score-"
    )
    for i, data in enumerate(one_to_n["data"]):
        assert set(data) == {"index", "object", "score", "truncated"} and (data["index"], data["object"]) == (
            i,
            "score",
        )
        assert data["score"] == pytest.approx(reference(model, pair(PROMPTS[0], RESPONSES[i])).score, abs=1e-5)
    n_to_n = ok(client.post("/score", json={"model": SCALAR, "text_1": PROMPTS, "text_2": RESPONSES}))
    assert [d["score"] for d in n_to_n["data"]] == pytest.approx(
        [reference(model, pair(p, r)).score for p, r in zip(PROMPTS, RESPONSES)], abs=1e-5)
    one = ok(client.post("/score", json={"model": SCALAR, "text_1": PROMPTS[1], "text_2": RESPONSES[1]}))
    assert one["data"][0]["score"] == pytest.approx(n_to_n["data"][1]["score"], abs=1e-6)
    assert set(one["usage"]) == VLLM_USAGE_KEYS

    assert_error(client.post("/score", json={"model": SCALAR, "text_1": PROMPTS[:2], "text_2": RESPONSES}),
                 422, "invalid_request", "text_2")
    prm = ok(
        client.post("/score", json={"model": PRM, "text_1": "Q?", "text_2": "Step one.<extra_0> Step two.<extra_0>"})
    )
    ref = reference(load_tiny(PRM), {"prompt": "Q?", "steps": ["Step one.", "Step two."]})
    assert prm["data"][0]["score"] == pytest.approx(ref.score, abs=1e-5)


@pytest.mark.parametrize("path", ["/rerank", "/v2/rerank"])
def test_vllm_and_cohere_rerank_paths(path, client, load_tiny):
    """vLLM/Cohere clients send options of their own (an integer priority, say): ignored."""
    request = {"model": SCALAR, "query": PROMPTS[1], "documents": [r.strip() for r in RESPONSES], "top_n": 2,
               "priority": 0, "truncate_prompt_tokens": -1, "max_chunks_per_doc": 10}
    body = ok(client.post(path, json=request))
    model = load_tiny(SCALAR)
    refs = [reference(model, pair(PROMPTS[1], r.strip())).score for r in RESPONSES]
    assert {"id", "model", "results", "usage"} <= set(body) and body["id"].startswith("rerank-")
    assert [r["index"] for r in body["results"]] == sorted(range(3), key=lambda i: -refs[i])[:2]
    for result in body["results"]:
        assert result["relevance_score"] == pytest.approx(refs[result["index"]], abs=1e-5)
        assert result["document"] == {"text": RESPONSES[result["index"]].strip()}
    assert body["usage"]["total_tokens"] == sum(reference(model, pair(PROMPTS[1], r.strip())).num_tokens
                                                for r in RESPONSES)


def test_vllm_errors(client):
    assert_error(client.post("/classify", json={"model": SCALAR, "input": []}), 422, "invalid_request", "input")
    assert_error(client.post("/classify", json={"model": SCALAR}), 422, "invalid_request", "input")
    assert_error(client.post("/pooling", json={"model": PRM, "input": ["fine<extra_0>", "no marker here"]}),
                 422, "invalid_input", "input[1]")
    assert_error(client.post("/pooling", json={"model": SCALAR, "input": [[1, 2], [10**9]]}),
                 422, "invalid_input", "input[1]")
    assert_error(client.post("/score", json={"model": "nope", "text_1": "a", "text_2": "b"}),
                 404, "model_not_found", "model")
