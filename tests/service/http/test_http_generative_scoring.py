"""vLLM's `/generative_scoring` over a real socket, answered by a label-token judge: per
item the query's and the item's ids end to end, P(label_token_ids[0]) of the two as the next
token, equal to a plain transformers forward within 1e-5 (float32); requests the judge does
not answer are refused naming the field."""

from __future__ import annotations

import pytest
import torch
from http_helpers import assert_error
from model_cards import checkpoints
from transformers import AutoModelForCausalLM, AutoTokenizer

from service.config import ModelConfig

TOL = 1e-5
QUERY = "<|im_start|>user\nIs the following city the capital of France? "
ITEMS = ["Paris<|im_end|>\n<|im_start|>assistant\n", "London, a much larger city<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    return checkpoints.qwen2_judge(tmp_path_factory.mktemp("judge") / "qwen2-judge")


@pytest.fixture(scope="module")
def tokenizer(judge_dir):
    return AutoTokenizer.from_pretrained(judge_dir)


@pytest.fixture(scope="module")
def client(served, judge_dir):
    with served([ModelConfig(name="judge", path=str(judge_dir)), "llama-scalar"], grpc=False,
                batching={"max_wait_ms": 50}) as server:
        yield server.http


@torch.no_grad()
def expected(judge_dir, rows: list[list[int]], labels: list[int]) -> list[float]:
    model = AutoModelForCausalLM.from_pretrained(judge_dir, dtype=torch.float32).eval()
    return [torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1, labels], -1)[0].item() for ids in rows]


def test_query_then_items_scored_as_a_plain_forward(client, judge_dir, tokenizer):
    labels = tokenizer.convert_tokens_to_ids(["Yes", "No"])
    query = tokenizer.encode(QUERY)
    rows = [query + tokenizer.encode(item, add_special_tokens=False) for item in ITEMS]
    rows.append(tokenizer.encode(ITEMS[0], add_special_tokens=False) + query)  # item_first, as token ids
    want = expected(judge_dir, rows, labels)

    response = client.post("/generative_scoring", json={"model": "judge", "query": QUERY, "items": ITEMS,
                                                        "label_token_ids": labels})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == "judge" and body["id"].startswith("generative-scoring-")
    assert [d["index"] for d in body["data"]] == [0, 1] and {d["object"] for d in body["data"]} == {"score"}
    assert [d["score"] for d in body["data"]] == pytest.approx(want[:2], abs=TOL, rel=0)
    assert body["usage"]["prompt_tokens"] == sum(map(len, rows[:2]))

    flipped = client.post("/generative_scoring", json={
        "model": "judge", "query": query, "items": [tokenizer.encode(ITEMS[0], add_special_tokens=False)],
        "label_token_ids": labels, "item_first": True})
    assert flipped.status_code == 200, flipped.text
    assert flipped.json()["data"][0]["score"] == pytest.approx(want[2], abs=TOL, rel=0)


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"label_token_ids": [2753, 9454]}, "label_token_ids", "answers with the labels ['Yes', 'No']"),
    ({"label_token_ids": [9454]}, "label_token_ids", "token ids [9454, 2753]"),
    ({"apply_softmax": False}, "apply_softmax", "normalized over the two labels"),
    ({"model": "llama-scalar"}, "model", "not a label-token judge"),
])
def test_what_the_judge_does_not_answer_is_refused_naming_the_field(client, change, field, words):
    body = {"model": "judge", "query": QUERY, "items": ITEMS, "label_token_ids": [9454, 2753]} | change
    response = client.post("/generative_scoring", json=body)
    assert_error(response, 422, field=field)
    assert words in response.json()["error"]["message"]
