"""Label-token judges: a causal LM asked a yes/no (or A/B) question about each item, scored
P(labels[0]) / (P(labels[0]) + P(labels[1])) at the question's last token.

The checkpoint is a tiny random-weight Qwen2ForCausalLM with Qwen's real tokenizer and
Qwen 3's chat template, saved to disk; the reference re-implements the documented reading
with transformers alone (the question rendered, a plain forward, a softmax over the two
label logits at the last position), and the live server must give it within 1e-5 in float32,
several items of different lengths in one request, and one item per request, all at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from model_cards import checkpoints
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer

from models.errors import ModelLoadError
from models.inputs import TextPair
from models.reward_model import RewardModel
from models.spec import JUDGE_TEMPLATE, RewardSpec
from service.config import ModelConfig

TOL = 1e-5
# Qwen3-Reranker's way: no chat template, the markup written into the question itself
RERANKER_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    "provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n<Instruct>: Given a "
    "question, judge whether the answer is right\n<Query>: {prompt}\n<Document>: {response}<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n"
)
JUDGES = {  # served name -> inline spec (None: the directory's reward_spec.yaml, labels Yes / No)
    "judge": None,
    "judge-ab": {"kind": "scalar", "label_tokens": {"labels": ["A", "B"], "template": (
        "Which grade does this answer deserve, A (good) or B (poor)?\nQ: {prompt}\nAnswer: {response}\n"
        "Reply {labels[0]} or {labels[1]}.")}},
    "judge-reranker": {"kind": "scalar", "use_chat_template": False,
                       "label_tokens": {"labels": ["yes", "no"], "template": RERANKER_TEMPLATE}},
}
LONG_PROMPT = ("Jane has 12 apples. She gives 4 apples to her friend Mark, then buys 1 more apple, and finally "
               "splits all her apples equally among herself and her 2 siblings. How many apples does each get?")
ITEMS = [
    {"prompt": "What is 2 + 2?", "response": "4"},
    {"prompt": LONG_PROMPT, "response": "12 - 4 = 8, 8 + 1 = 9, 9 / 3 = 3: each person gets 3 apples."},
    {"prompt": LONG_PROMPT, "response": "Each gets 4 apples."},
    {"messages": [{"role": "user", "content": "Name a prime above 10."}, {"role": "assistant", "content": "11"}]},
    {"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Capital of France?"},
                  {"role": "assistant", "content": "Paris"}]},
]


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory) -> Path:
    return checkpoints.qwen2_judge(tmp_path_factory.mktemp("judge") / "qwen2-judge")


class Reference:
    """The judge's reading, with transformers alone."""

    def __init__(self, directory: Path):
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()

    def question_ids(self, spec: dict | None, prompt: str, response: str) -> list[int]:
        labels, template = ["Yes", "No"], JUDGE_TEMPLATE
        if spec is not None:
            labels, template = spec["label_tokens"]["labels"], spec["label_tokens"]["template"]
        question = template.format(prompt=prompt, response=response, labels=labels)
        if spec is None or spec.get("use_chat_template") is not False:
            question = self.tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                                          add_generation_prompt=True)
        return self.tokenizer(question)["input_ids"]

    @torch.no_grad()
    def score(self, spec: dict | None, item: dict) -> float:
        if "messages" in item:
            turns = item["messages"]
            before = turns[:-1]
            prompt = before[0]["content"] if len(before) == 1 else "\n".join(
                f"{m['role']}: {m['content']}" for m in before)
            response = turns[-1]["content"]
        else:
            prompt, response = item["prompt"], item["response"]
        labels = spec["label_tokens"]["labels"] if spec else ["Yes", "No"]
        label_ids = [self.tokenizer.convert_tokens_to_ids(label) for label in labels]
        ids = torch.tensor([self.question_ids(spec, prompt, response)])
        logits = self.model(input_ids=ids).logits[0, -1]
        return torch.softmax(logits[label_ids], dim=-1)[0].item()


@pytest.fixture(scope="module")
def reference(judge_dir) -> Reference:
    return Reference(judge_dir)


@pytest.fixture(scope="module")
def client(served, judge_dir):
    models = [ModelConfig(name=name, path=str(judge_dir), spec=spec) for name, spec in JUDGES.items()]
    with served(models, grpc=False, cache={"max_bytes": 0}, batching={"max_wait_ms": 50}, timeout=120) as server:
        yield server.http


@pytest.mark.parametrize("name", list(JUDGES))
def test_batched_request_matches_the_reference(client, reference, name):
    """Items of different lengths, text pairs and conversations, in one request."""
    response = client.post("/v1/score", json={"model": name, "items": ITEMS})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    for item, result in zip(ITEMS, results, strict=True):
        assert 0 < result["score"] < 1
        assert result["score"] == pytest.approx(reference.score(JUDGES[name], item), abs=TOL, rel=0), item


def test_one_item_per_request_all_at_once(client, reference):
    jobs = [(name, item) for name in JUDGES for item in ITEMS]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        responses = list(pool.map(lambda job: client.post("/v1/score", json={"model": job[0], "items": [job[1]]}),
                                  jobs))
    for (name, item), response in zip(jobs, responses):
        assert response.status_code == 200, response.text
        want = reference.score(JUDGES[name], item)
        assert response.json()["results"][0]["score"] == pytest.approx(want, abs=TOL, rel=0), (name, item)


@pytest.mark.parametrize("packed", [False, True])
def test_padded_packed_and_shared_prompt_forwards_agree(judge_dir, reference, packed):
    """Padded or packed, and items sharing their question's start (the same prompt) running it
    once: the same probabilities as the reference."""
    model = RewardModel.load("judge", judge_dir, packed=packed, share_prefix=True)
    pairs = [item for item in ITEMS if "prompt" in item] + [
        {"prompt": LONG_PROMPT, "response": f"Each person gets {n} apples."} for n in range(2, 6)]
    outputs = model.score([TextPair(p["prompt"], p["response"]) for p in pairs])
    assert model.prefix_sharing.groups >= 1
    assert [o.score for o in outputs] == pytest.approx([reference.score(None, p) for p in pairs], abs=TOL, rel=0)


def test_a_label_of_two_tokens_fails_the_load_naming_its_tokens(judge_dir):
    spec = {"kind": "scalar", "label_tokens": {"labels": ["Yes", "Nope"]}}
    with pytest.raises(ModelLoadError, match=r"label_tokens\.labels\[1\] 'Nope' is not a single token .*"
                                             r"\['No', 'pe'\]"):
        RewardModel.load("judge", judge_dir, spec=spec)


def test_a_served_judge_whose_label_is_not_one_token_is_reported_failed(served, judge_dir):
    spec = {"kind": "scalar", "label_tokens": {"labels": ["Nope", "No"]}}
    with served([ModelConfig(name="judge", path=str(judge_dir), spec=spec)], grpc=False, ready=False) as server:
        (listed,) = server.http.get("/v1/models").json()["models"]
        assert listed["status"] == "failed" and "label_tokens.labels[0] 'Nope'" in listed["error"]


@pytest.mark.parametrize(("section", "reason"), [
    ({"labels": ["Yes"]}, "at least 2 items"),
    ({"labels": ["Yes", "No", "Maybe"]}, "at most 2 items"),
    ({"labels": ["Yes", "Yes"]}, "two different"),
    ({"labels": ["Yes", "No"], "template": "Is {response} right?"}, "must use {prompt} and {response}"),
    ({"labels": ["Yes", "No"], "template": "{prompt} {response} {score}"}, "'score'"),
    ({"labels": ["Yes", "No"], "template": "{prompt} {response} {"}, "literal braces"),
])
def test_a_bad_label_tokens_section_is_refused_with_the_reason(section, reason):
    with pytest.raises(ValidationError, match="label_tokens") as err:
        RewardSpec.model_validate({"kind": "scalar", "label_tokens": section})
    assert reason in str(err.value)


@pytest.mark.parametrize("other", [{"kind": "process", "process": {"convention": "separator", "marker": "x"}},
                                   {"kind": "scalar", "reward_logit_index": 0}])
def test_label_tokens_is_for_scalar_causal_lm_reads_only(other):
    with pytest.raises(ValidationError, match="label_tokens reads a causal LM's own logits"):
        RewardSpec.model_validate({**other, "label_tokens": {"labels": ["Yes", "No"]}})
