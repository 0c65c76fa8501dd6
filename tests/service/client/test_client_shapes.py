"""The call shapes of the clients RL and ranking users already run, reproduced against a
live server: veRL's reward loop (`/classify` naming the model by its path, activation
off), the OpenAI SDK's `models.list()`, vLLM's request forms (content-part messages, a
user-only conversation, every /score pair name, truncation, base64 pooling, special
tokens, fields we cannot honour) and OpenRLHF's remote reward client on a SentencePiece
policy, whose decoded queries do not start with the prompt string as sent."""

from __future__ import annotations

import base64
import math

import httpx
import numpy as np
import openai
import pytest
from http_helpers import LONG_TEXT, assert_error, reference
from model_cards.tokenizers import mistral_v01
from tiny_models import SMALL
from transformers import LlamaConfig, LlamaForSequenceClassification

from models.inputs import TextPair, TokenIds
from models.reward_model import RewardModel
from service.client import RewardClient, trainers, verl_reward_fns
from service.compat.rollouts import response_after
from service.config import ModelConfig

SCALAR, PRM, MULTI = "llama-scalar", "qwen2-prm", "llama-helpsteer"
SKYWORK_PATH = "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"  # what a trainer's config names the RM by
SENTENCEPIECE = "mistral-sp"


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.fixture(scope="module")
def sentencepiece_dir(tmp_path_factory):
    """A tiny Llama sequence classifier with Mistral v0.1's real SentencePiece tokenizer."""
    out = tmp_path_factory.mktemp("mistral_sp")
    tok = mistral_v01(out)
    config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.eos_token_id, num_labels=1, **SMALL)
    LlamaForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def server(served, tiny_model_dirs, sentencepiece_dir):
    models = [ModelConfig(name=SCALAR, path=str(tiny_model_dirs[SCALAR]), aliases=[SKYWORK_PATH]), PRM,
              ModelConfig(name=SENTENCEPIECE, path=str(sentencepiece_dir)), MULTI]
    with served(models, grpc=False, cache={"max_bytes": 0}) as server:
        yield server.url, server.http


@pytest.fixture(scope="module")
def client(server):
    return server[1]


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def raw_score(model: RewardModel, ids) -> float:
    return model.score([TokenIds(tuple(ids))])[0].score


# ---- veRL -----------------------------------------------------------------------------------


def verl_input(model: RewardModel, prompt: str, response: str) -> str:
    """What veRL's reward loop sends: the conversation rendered by the RM tokenizer's chat
    template, its BOS text cut off (it expects the server to add BOS, as vLLM does)."""
    tok = model.encoder.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                                   tokenize=False, add_generation_prompt=False)
    return text.removeprefix(tok.bos_token)


@pytest.mark.parametrize("model_field", ["path", "alias"])
@pytest.mark.parametrize("flag", ["use_activation", "activation"])
def test_verl_classify_names_the_model_by_path_and_gets_the_raw_score(model_field, flag, client, tiny_model_dirs,
                                                                      load_tiny):
    model = load_tiny(SCALAR)
    text = verl_input(model, "What is 2 + 2?", "It is 4.")
    name = str(tiny_model_dirs[SCALAR]) if model_field == "path" else SKYWORK_PATH
    body = ok(client.post("/classify", json={"model": name, "input": text, flag: False}))
    expected = raw_score(model, model.encoder.tokenizer(text, add_special_tokens=True)["input_ids"])
    assert body["data"][-1]["probs"][-1] == pytest.approx(expected, abs=1e-5)
    assert body["model"] == SCALAR
    activated = ok(client.post("/classify", json={"model": name, "input": text}))
    assert activated["data"][-1]["probs"][-1] == pytest.approx(sigmoid(expected), abs=1e-6)


def test_an_unknown_model_path_is_404(client):
    assert_error(client.post("/classify", json={"model": "/no/such/model", "input": "x"}), 404, "model_not_found",
                 "model")


def test_verl_custom_reward_functions_score_per_sample_and_batched(server, load_tiny, monkeypatch):
    """As veRL's reward managers call them: naive/dapo with keywords, prime positionally,
    batch with plural keywords; the module-level functions as loaded by path, with the
    config's reward_kwargs."""
    url, _ = server
    samples = [("What is 2 + 2?", "It is 4."), ("Name a prime.", "Seven.")]
    expected = [reference(load_tiny(SCALAR), {"prompt": p, "response": r}).score for p, r in samples]
    with RewardClient(url) as client:
        per_sample, batched = verl_reward_fns(client, model=SCALAR)
        keywords = [per_sample(data_source="gsm8k", solution_str=r, ground_truth="4", extra_info={"question": p},
                               reward_router_address="ignored") for p, r in samples]
        positional = [per_sample("gsm8k", r, "4", {"question": p}) for p, r in samples]
        together = batched(data_sources=["gsm8k"] * 2, solution_strs=[r for _, r in samples],
                           ground_truths=["4", "7"], extra_infos=[{"question": p} for p, _ in samples])
        multi = verl_reward_fns(client, model=MULTI, prompt_key="prompt")[0](
            solution_str="It is 4.", extra_info={"prompt": "What is 2 + 2?"})
        with pytest.raises(KeyError, match="question"):
            per_sample(solution_str="x", extra_info={"index": 3})
    for got in (keywords, positional, together):
        assert got == pytest.approx(expected, abs=1e-5)
    assert set(multi) == {"score", "helpfulness", "correctness", "coherence", "complexity", "verbosity"}
    by_path = trainers.compute_score("gsm8k", samples[0][1], "4", {"question": samples[0][0]}, url=url, model=SCALAR)
    batch_by_path = trainers.compute_score_batch(["gsm8k"], [samples[1][1]], ["7"], [{"question": samples[1][0]}],
                                                 url=url, model=SCALAR)
    assert [by_path, *batch_by_path] == pytest.approx(expected, abs=1e-5)
    monkeypatch.delenv(trainers.URL_ENV, raising=False)
    with pytest.raises(ValueError, match="url"):
        trainers.compute_score(solution_str="x", extra_info={"question": "q"})


# ---- OpenAI SDK -----------------------------------------------------------------------------


def test_openai_sdk_lists_every_name_and_our_listing_stays(server, tiny_model_dirs):
    url, http = server
    sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    try:
        listed = list(sdk.models.list())
    finally:
        sdk.close()
    assert [m.id for m in listed] == [SCALAR, SKYWORK_PATH, PRM, SENTENCEPIECE, MULTI]
    assert all(m.object == "model" and m.owned_by == "rewardserve" and isinstance(m.created, int) for m in listed)
    body = ok(http.get("/v1/models"))
    assert body["object"] == "list" and body["data"][1]["parent"] == SCALAR
    assert body["data"][0]["root"] == str(tiny_model_dirs[SCALAR]) and body["data"][0]["max_model_len"] > 0
    assert [card["name"] for card in body["models"]] == [SCALAR, PRM, SENTENCEPIECE, MULTI]


def test_openai_sdk_retrieves_a_model_by_name_or_alias_with_our_card(server, tiny_model_dirs):
    url, http = server
    sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    try:
        for name in (SCALAR, SKYWORK_PATH):
            model = sdk.models.retrieve(name)
            assert (model.id, model.object, model.owned_by) == (name, "model", "rewardserve")
            assert isinstance(model.created, int) and model.created > 0
            extra = model.model_extra  # our fields, beside OpenAI's
            assert (extra["name"], extra["status"], extra["kind"]) == (SCALAR, "ready", "scalar")
            assert extra["revision"].startswith("sha256:") and extra["root"] == str(tiny_model_dirs[SCALAR])
            assert extra.get("parent") == (None if name == SCALAR else SCALAR)
        with pytest.raises(openai.NotFoundError) as raised:
            sdk.models.retrieve("no-such-model")
    finally:
        sdk.close()
    assert raised.value.status_code == 404 and "no model named 'no-such-model'" in raised.value.message
    listed = ok(http.get("/v1/models"))["data"][0]
    assert {k: v for k, v in ok(http.get(f"/v1/models/{SCALAR}")).items() if k in listed} == listed


# ---- vLLM request forms ---------------------------------------------------------------------


def test_messages_with_content_parts_read_as_their_text(client, load_tiny):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]}]
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello\nthere"}]
    expected = reference(load_tiny(SCALAR), {"messages": plain}).score
    body = ok(client.post("/classify", json={"model": SCALAR, "messages": parts, "use_activation": False}))
    assert body["data"][0]["probs"][0] == pytest.approx(expected, abs=1e-5)
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, plain[1]]
    assert_error(client.post("/classify", json={"model": SCALAR, "messages": image}), 422, "invalid_request",
                 "messages[0].content[0]")


def test_a_user_only_conversation_is_rendered_with_the_template_and_scored_whole(client, load_tiny):
    model = load_tiny(SCALAR)
    turns = [{"role": "user", "content": "Rate this question: what is 2 + 2?"}]
    ids = model.encoder.tokenizer.apply_chat_template(turns, tokenize=True, add_generation_prompt=False)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "input_ids") else ids
    body = ok(client.post("/classify", json={"model": SCALAR, "messages": turns, "use_activation": False}))
    assert body["data"][0]["probs"][0] == pytest.approx(raw_score(model, ids), abs=1e-5)


@pytest.mark.parametrize("names", [("queries", "documents"), ("queries", "items"), ("data_1", "data_2"),
                                   ("text_1", "text_2")])
def test_score_takes_every_pair_name_and_content_values(names, client, load_tiny):
    prompts, responses = "What is 2 + 2?", ["It is 4.", {"content": [{"type": "text", "text": "Four."}]}]
    body = ok(client.post("/score", json={"model": SCALAR, names[0]: prompts, names[1]: responses}))
    model = load_tiny(SCALAR)
    for data, response in zip(body["data"], ["It is 4.", "Four."], strict=True):
        expected = reference(model, {"prompt": prompts, "response": response}).score
        assert data["score"] == pytest.approx(expected, abs=1e-5)
    activated = ok(client.post("/score", json={"model": SCALAR, names[0]: prompts, names[1]: responses,
                                               "use_activation": True}))
    assert activated["data"][0]["score"] == pytest.approx(sigmoid(body["data"][0]["score"]), abs=1e-6)


def test_score_refuses_mixed_pair_names(client):
    assert_error(client.post("/score", json={"model": SCALAR, "queries": "q", "text_2": "r"}), 422,
                 "invalid_request", "queries")
    assert_error(client.post("/score", json={"model": SCALAR, "queries": "q", "documents": "r", "text_1": "q"}), 422,
                 "invalid_request", "text_1")


def without_ids(body: dict) -> dict:
    return {k: v for k, v in body.items() if k not in ("id", "created")}


@pytest.mark.parametrize("names", [("queries", "documents"), ("queries", "items"), ("data_1", "data_2"),
                                   ("text_1", "text_2")])
def test_v1_score_answers_a_vllm_body_as_score_does(names, client):
    """vLLM's clients post their score requests to /v1/score: a body in vLLM's form gets
    vLLM's response, the same as /score's; our `items` body keeps our shape."""
    body = {"model": SCALAR, names[0]: "What is 2 + 2?", names[1]: ["It is 4.", "Five."], "use_activation": True}
    vllm_shaped = ok(client.post("/v1/score", json=body))
    assert without_ids(vllm_shaped) == without_ids(ok(client.post("/score", json=body)))
    assert vllm_shaped["object"] == "list" and vllm_shaped["id"].startswith("score-")
    assert vllm_shaped["usage"]["prompt_tokens_details"] is None and "prompt_tokens_details" in vllm_shaped["usage"]
    ours = ok(client.post("/v1/score", json={"model": SCALAR, "items": [{"prompt": "What is 2 + 2?",
                                                                          "response": "It is 4."}]}))
    assert set(ours) == {"model", "revision", "kind", "results", "usage"}
    assert vllm_shaped["data"][0]["score"] == pytest.approx(sigmoid(ours["results"][0]["score"]), abs=1e-6)


@pytest.mark.parametrize("body", [
    {"queries": "q", "text_2": "r"},
    {"text_1": 5, "text_2": "r"},
    {"text_1": "q", "text_2": []},
    {"data_1": ["a", "b", "c"], "data_2": ["x", "y"]},
    {"text_1": "q", "text_2": "r", "truncate_prompt_tokens": -2},
    {"text_1": "q", "text_2": "r", "dimensions": 8},
])
def test_v1_score_refuses_a_bad_vllm_body_as_score_does(body, client):
    refused = client.post("/v1/score", json={"model": SCALAR, **body})
    assert refused.status_code == 422
    assert refused.json() == client.post("/score", json={"model": SCALAR, **body}).json()
    field = refused.json()["error"]["field"]
    assert field and field.split("[")[0].split(".")[0] in body  # the request's own field, no form tag


def test_truncate_prompt_tokens_minus_one_is_max_length(client, load_tiny):
    model = load_tiny(SCALAR)
    long_doc = " ".join([LONG_TEXT] * 6)
    expected = reference(model, {"prompt": "Summarize.", "response": long_doc}, "left")
    for path in ("/v1/rerank", "/rerank"):
        body = ok(client.post(path, json={"model": SCALAR, "query": "Summarize.", "documents": ["Short.", long_doc],
                                          "truncate_prompt_tokens": -1}))
        long_result = next(r for r in body["results"] if r["index"] == 1)
        assert long_result["truncated"] and long_result["score"] == pytest.approx(expected.score, abs=1e-5)
        assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"]
    for path in ("/score", "/v1/score"):
        body = ok(client.post(path, json={"model": SCALAR, "queries": "Summarize.", "documents": [long_doc],
                                          "truncate_prompt_tokens": -1}))
        assert body["data"][0]["truncated"] and body["data"][0]["score"] == pytest.approx(expected.score, abs=1e-5)


def kept_ids(model: RewardModel, ids: list[int], k: int, side: str = "left") -> list[int]:
    """The k tokens truncate_prompt_tokens keeps of `ids`, as the tokenizer's own truncation
    (vLLM's, for texts) keeps them: the leading BOS and the last k - 1 (the first k - 1
    with side "right", here where the input ends in no special token)."""
    assert ids[0] == model.encoder.tokenizer.bos_token_id and len(ids) > k
    if side == "left":
        return ids[:1] + ids[-(k - 1):]
    assert ids[-1] not in model.encoder.special_ids
    return ids[:k]


K = 12


def test_truncate_prompt_tokens_keeps_k_tokens_wherever_vllm_takes_it(client, load_tiny):
    """The score of an input cut to k tokens is the model's forward on the ids it keeps."""
    model = load_tiny(SCALAR)
    query, doc = "Summarize.", "The quick brown fox jumps over the lazy dog while the cat sleeps."
    pair = model.encode(TextPair(query, doc)).input_ids
    expected = raw_score(model, kept_ids(model, pair, K))
    assert expected != pytest.approx(raw_score(model, pair), abs=1e-3)  # the cut changes the score
    for path in ("/v1/rerank", "/rerank"):
        body = ok(client.post(path, json={"model": SCALAR, "query": query, "documents": [doc, "Hi."],
                                          "truncate_prompt_tokens": K}))
        result = next(r for r in body["results"] if r["index"] == 0)
        assert result["truncated"] and result["num_tokens"] == K
        assert result["score"] == pytest.approx(expected, abs=1e-5)
    for path in ("/score", "/v1/score"):
        body = ok(client.post(path, json={"model": SCALAR, "text_1": query, "text_2": doc,
                                          "truncate_prompt_tokens": K}))
        assert body["data"][0]["truncated"] and body["data"][0]["score"] == pytest.approx(expected, abs=1e-5)
        assert body["usage"]["prompt_tokens"] == K
    # the conversation of /classify's and /pooling's messages is the same pair through the chat template
    messages = [{"role": "user", "content": query}, {"role": "assistant", "content": doc}]
    for path, value in (("/classify", lambda d: d["probs"][0]), ("/pooling", lambda d: d["data"][0])):
        body = ok(client.post(path, json={"model": SCALAR, "messages": messages, "truncate_prompt_tokens": K,
                                          "use_activation": False}))
        assert body["data"][0]["truncated"] and value(body["data"][0]) == pytest.approx(expected, abs=1e-5)
    right = ok(client.post("/rerank", json={"model": SCALAR, "query": LONG_TEXT, "documents": [doc],
                                            "truncate_prompt_tokens": K, "truncation_side": "right"}))
    head = model.encode(TextPair(LONG_TEXT, doc)).input_ids
    assert right["results"][0]["score"] == pytest.approx(raw_score(model, kept_ids(model, head, K, "right")), abs=1e-5)
    fits = ok(client.post("/score", json={"model": SCALAR, "text_1": "Hi", "text_2": "Yo",
                                          "truncate_prompt_tokens": model.info.max_length}))
    assert not fits["data"][0]["truncated"]


@pytest.mark.parametrize("k", [0, 257])
def test_truncate_prompt_tokens_past_max_length_or_zero_is_422(k, client, load_tiny):
    assert load_tiny(SCALAR).info.max_length == 256
    rerank, pair = {"query": "q", "documents": ["d"]}, {"text_1": "q", "text_2": "d"}
    for path, body in (("/v1/rerank", rerank), ("/rerank", rerank), ("/score", pair), ("/v1/score", pair),
                       ("/classify", {"input": "q"}), ("/pooling", {"messages": [{"role": "user", "content": "q"}]})):
        refused = client.post(path, json={"model": SCALAR, **body, "truncate_prompt_tokens": k})
        assert_error(refused, 422, "invalid_request", "truncate_prompt_tokens")
        assert ("max_length 256" if k else "at least one token") in refused.json()["error"]["message"]


def test_classify_keeps_the_last_k_tokens_and_says_so(client, load_tiny):
    model = load_tiny(SCALAR)
    text = "The quick brown fox jumps over the lazy dog while the cat sleeps."
    ids = model.encoder.tokenizer(text, add_special_tokens=True)["input_ids"]
    body = ok(client.post("/classify", json={"model": SCALAR, "input": [text, "Hi"], "truncate_prompt_tokens": 5,
                                             "use_activation": False}))
    assert body["data"][0]["probs"][0] == pytest.approx(raw_score(model, kept_ids(model, ids, 5)), abs=1e-5)
    assert [d["truncated"] for d in body["data"]] == [True, False]
    right = ok(client.post("/classify", json={"model": SCALAR, "input": text, "truncate_prompt_tokens": 5,
                                              "truncation_side": "right", "use_activation": False}))
    assert right["data"][0]["probs"][0] == pytest.approx(raw_score(model, kept_ids(model, ids, 5, "right")), abs=1e-5)
    # token ids are cut alike; ones without a leading special token keep their last k
    bare = ids[1:]
    body = ok(client.post("/classify", json={"model": SCALAR, "input": bare, "truncate_prompt_tokens": 5,
                                             "use_activation": False}))
    assert body["data"][0]["probs"][0] == pytest.approx(raw_score(model, bare[-5:]), abs=1e-5)


def test_add_special_tokens_false_scores_the_text_without_bos(client, load_tiny):
    model = load_tiny(SCALAR)
    ids = model.encoder.tokenizer("Hello there!", add_special_tokens=False)["input_ids"]
    body = ok(client.post("/classify", json={"model": SCALAR, "input": "Hello there!", "add_special_tokens": False,
                                             "use_activation": False}))
    assert body["data"][0]["probs"][0] == pytest.approx(raw_score(model, ids), abs=1e-5)


def test_pooling_base64_is_float32_bytes(client):
    text = "What is 3 + 4? 3 + 4 = 7<extra_0> The answer is 7.<extra_0>"
    floats = ok(client.post("/pooling", json={"model": PRM, "input": text}))["data"][0]["data"]
    for endianness, dtype in (("native", "=f4"), ("little", "<f4"), ("big", ">f4")):
        body = ok(client.post("/pooling", json={"model": PRM, "input": text, "encoding_format": "base64",
                                                "endianness": endianness}))
        decoded = np.frombuffer(base64.b64decode(body["data"][0]["data"]), dtype=dtype)
        assert decoded.tolist() == pytest.approx(floats, abs=1e-6)


@pytest.mark.parametrize(("path", "extra", "field"), [
    ("/classify", {"chat_template": "{{ messages }}"}, "chat_template"),
    ("/classify", {"padding": "max_length"}, "padding"),
    ("/pooling", {"dimensions": 8}, "dimensions"),
    ("/pooling", {"encoding_format": "bytes"}, "encoding_format"),
    ("/pooling", {"embed_dtype": "float16"}, "embed_dtype"),
    ("/score", {"max_tokens_per_doc": 16}, "max_tokens_per_doc"),
    ("/rerank", {"instruction": "Judge helpfulness."}, "instruction"),
    ("/classify", {"truncate_prompt_tokens": -2}, "truncate_prompt_tokens"),
])
def test_fields_we_cannot_honour_are_refused_by_name(path, extra, field, client):
    body = {"/classify": {"input": "x"}, "/pooling": {"input": "x"}, "/score": {"text_1": "q", "text_2": "r"},
            "/rerank": {"query": "q", "documents": ["d"]}}[path]
    assert_error(client.post(path, json={"model": SCALAR, **body, **extra}), 422, field=field)


def test_process_models_refuse_activation_off(client):
    assert_error(client.post("/classify", json={"model": PRM, "input": "Q<extra_0>", "use_activation": False}), 422,
                 "invalid_request", "use_activation")


# ---- OpenRLHF on a SentencePiece policy -----------------------------------------------------


def test_openrlhf_sentencepiece_queries_split_at_their_prompts(client, sentencepiece_dir, tmp_path):
    """OpenRLHF decodes prompt and response token ids together with the policy's tokenizer,
    special tokens kept; a SentencePiece tokenizer puts a space after `<s>` there, so the
    query no longer starts with the prompt string it also sends: mode split finds the
    response after it all the same."""
    model = RewardModel.load(SENTENCEPIECE, sentencepiece_dir)
    tok = mistral_v01(tmp_path / "policy")  # the policy's own tokenizer, as OpenRLHF loads it
    prompts = ["<s>[INST] What is 2 + 2? [/INST]", "<s>[INST] Name a prime. [/INST]"]
    responses = [" It is 4.</s>", " Seven.</s>"]
    queries = [tok.decode(tok(p, add_special_tokens=False)["input_ids"] + tok(r, add_special_tokens=False)["input_ids"],
                          skip_special_tokens=False) for p, r in zip(prompts, responses)]
    assert not queries[0].startswith(prompts[0]) and queries[0].startswith("<s> [INST]")
    body = ok(client.post("/get_reward", json={"query": queries, "prompts": prompts, "labels": ["4", "7"],
                                               "model": SENTENCEPIECE, "mode": "split"}))
    for query, prompt, reward in zip(queries, prompts, body["rewards"], strict=True):
        rest = response_after(query, prompt)
        assert rest is not None and rest.strip().startswith(("It is 4.", "Seven."))
        assert reward == pytest.approx(reference(model, {"prompt": prompt, "response": rest}).score, abs=1e-5)
    long_query = prompts[0] + " " + " ".join([LONG_TEXT] * 300)
    cut = ok(client.post("/get_reward", json={"query": [long_query], "prompts": [prompts[0]], "model": SENTENCEPIECE}))
    assert cut["truncate"] == "left" and cut["extra_logs"]["rm/truncated"] == [1.0]


def test_response_after_matches_exactly_else_ignoring_whitespace():
    assert response_after("<s>[INST] hi [/INST] yes", "<s>[INST] hi [/INST]") == " yes"
    assert response_after("<s> [INST] hi [/INST] yes", "<s>[INST] hi [/INST]") == " yes"
    assert response_after("<s> [INST] bye [/INST] yes", "<s>[INST] hi [/INST]") is None
