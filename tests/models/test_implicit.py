"""Implicit (DPO) rewards: beta * sum over the response tokens of (log pi - log pi_ref), or a
reference-free reduction of log pi, served from a policy and a reference causal LM.

Policy and reference are tiny random-weight Qwen2ForCausalLMs with different weights, Qwen's
real tokenizer and Qwen 3's chat template, saved to disk. The reference computation is
RewardBench's (rewardbench/dpo.py), re-implemented with transformers alone: the conversation
and its prompt rendered by the chat template, the response starting where the prompt's tokens
end (one token earlier where the last prompt token merges into the response), plain forwards
of both models, log_softmax, the next tokens' log-probabilities gathered, masked to the
response, reduced. The live server must give it within 1e-5 in float32, batched and one item
per request."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from model_cards import tokenizers
from model_cards.checkpoints import TINY
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from models.backends.config import OnnxRuntimeConfig
from models.backends.onnx import ONNX_FILENAME
from models.errors import ModelLoadError
from models.inputs import TextPair
from models.onnx_export import export_onnx
from models.reward_model import RewardModel
from models.shared_prefix import GROUP_COST
from models.spec import RewardSpec
from service.config import ModelConfig

TOL = 1e-5
SERVED = ("dpo", "free-avg")  # the other reductions are checked in process (each served model takes a load)
BETA = 0.25
ITEMS = [
    {"prompt": "What is 2 + 2?", "response": "4"},
    {"prompt": "Jane has 12 apples and gives 4 away, then buys 1. How many has she?",
     "response": "12 - 4 = 8, and 8 + 1 = 9: she has 9 apples."},
    {"prompt": "Jane has 12 apples and gives 4 away, then buys 1. How many has she?", "response": "Nine."},
    {"messages": [{"role": "user", "content": "Name a prime above 10."}, {"role": "assistant", "content": "11"}]},
    {"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Capital of France?"},
                  {"role": "assistant", "content": "Paris, on the Seine."}]},
]


def _causal_lm(out: Path, seed: int, tokenizer) -> Path:
    config = Qwen2Config(vocab_size=151936, max_position_embeddings=4096, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **TINY)
    torch.manual_seed(seed)
    out.mkdir(parents=True)
    Qwen2ForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("implicit")
    tok = tokenizers.qwen(tokenizers.qwen3_template(), through="<|file_sep|>")
    built = {"policy": _causal_lm(root / "policy", 1, tok), "reference": _causal_lm(root / "reference", 2, tok)}
    other = shutil.copytree(built["reference"], root / "other-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (other / name).unlink(missing_ok=True)
    tokenizers.qwen(tokenizers.qwen3_template(), through="<|fim_pad|>").save_pretrained(other)
    return built | {"other": other}


def specs(dirs) -> dict[str, dict]:
    """Served name -> inline spec."""
    free = {f"free-{how}": {"kind": "implicit", "implicit": {"reduction": how}} for how in ("sum", "avg", "norm")}
    return {"dpo": {"kind": "implicit", "implicit": {"reference": str(dirs["reference"]), "beta": BETA}}} | free


class RewardBench:
    """RewardBench's DPO reward, with transformers alone."""

    def __init__(self, dirs):
        self.tokenizer = AutoTokenizer.from_pretrained(dirs["policy"])
        self.policy = AutoModelForCausalLM.from_pretrained(dirs["policy"], dtype=torch.float32).eval()
        self.reference = AutoModelForCausalLM.from_pretrained(dirs["reference"], dtype=torch.float32).eval()

    def ids_and_start(self, item: dict) -> tuple[torch.Tensor, int]:
        messages = item.get("messages") or [{"role": "user", "content": item["prompt"]},
                                            {"role": "assistant", "content": item["response"]}]
        render = self.tokenizer.apply_chat_template
        full = self.tokenizer(render(messages, tokenize=False), add_special_tokens=False)["input_ids"]
        prompt = self.tokenizer(render(messages[:-1], tokenize=False, add_generation_prompt=True),
                                add_special_tokens=False)["input_ids"]
        start = len(prompt) - (full[:len(prompt)] != prompt)  # a prompt token merged into the response
        return torch.tensor([full]), start

    @staticmethod
    def response_logps(model, ids: torch.Tensor, start: int) -> torch.Tensor:
        labels = ids.clone()
        labels[:, :start] = -100
        labels, logits = labels[:, 1:], model(input_ids=ids).logits[:, :-1].float()
        mask = labels != -100
        picked = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(2)).squeeze(2)
        return (picked * mask)[mask].double()  # summed in float64: a sum of ~40 float32 values of ~10 is not exact

    @torch.no_grad()
    def score(self, spec: dict, item: dict) -> float:
        ids, start = self.ids_and_start(item)
        logps = self.response_logps(self.policy, ids, start)  # [response tokens]
        section = spec["implicit"]
        if section.get("reference"):
            return (section["beta"] * (logps - self.response_logps(self.reference, ids, start)).sum()).item()
        how = section["reduction"]
        return {"sum": logps.sum(), "avg": logps.mean(), "norm": -torch.linalg.norm(logps)}[how].item()


@pytest.fixture(scope="module")
def rewardbench(dirs) -> RewardBench:
    return RewardBench(dirs)


@pytest.fixture(scope="module")
def client(served, dirs):
    models = [ModelConfig(name=name, path=str(dirs["policy"]), spec=specs(dirs)[name]) for name in SERVED]
    with served(models, grpc=False, cache={"max_bytes": 0}, batching={"max_wait_ms": 50}, timeout=300) as server:
        yield server.http


@pytest.mark.parametrize("name", SERVED)
def test_batched_request_matches_rewardbench(client, rewardbench, dirs, name):
    """Items of different lengths, text pairs and conversations, in one request."""
    response = client.post("/v1/score", json={"model": name, "items": ITEMS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kind"] == "implicit"
    spec = specs(dirs)[name]
    for item, result in zip(ITEMS, body["results"], strict=True):
        assert result["score"] == pytest.approx(rewardbench.score(spec, item), abs=TOL, rel=0), item


def test_one_item_per_request_all_at_once(client, rewardbench, dirs):
    jobs = [(name, item) for name in ("dpo", "free-avg") for item in ITEMS]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        responses = list(pool.map(lambda job: client.post("/v1/score", json={"model": job[0], "items": [job[1]]}),
                                  jobs))
    for (name, item), response in zip(jobs, responses):
        assert response.status_code == 200, response.text
        want = rewardbench.score(specs(dirs)[name], item)
        assert response.json()["results"][0]["score"] == pytest.approx(want, abs=TOL, rel=0), (name, item)


@pytest.mark.parametrize("how", ["sum", "norm"])
def test_reference_free_reductions_match_rewardbench(dirs, rewardbench, how):
    spec = specs(dirs)[f"free-{how}"]
    model = RewardModel.load(how, dirs["policy"], spec=spec)
    pairs = [item for item in ITEMS if "prompt" in item]
    got = [o.score for o in model.score([TextPair(p["prompt"], p["response"]) for p in pairs])]
    assert got == pytest.approx([rewardbench.score(spec, p) for p in pairs], abs=TOL, rel=0)
    with_reference = [rewardbench.score(specs(dirs)["dpo"], p) for p in pairs]
    assert got != pytest.approx(with_reference, abs=1e-3)  # the reference's forward counts


def test_token_ids_need_their_prompt_length(client, rewardbench):
    ids, start = rewardbench.ids_and_start(ITEMS[0])
    missing = client.post("/v1/score", json={"model": "dpo", "items": [{"input_ids": ids[0].tolist()}]})
    assert missing.status_code == 422 and "prompt_length" in missing.text
    given = client.post("/v1/score", json={"model": "dpo", "items": [
        {"input_ids": ids[0].tolist(), "prompt_length": start}]})
    assert given.status_code == 200, given.text
    want = rewardbench.score({"implicit": {"reference": "r", "beta": BETA}}, ITEMS[0])
    assert given.json()["results"][0]["score"] == pytest.approx(want, abs=TOL, rel=0)


def test_packed_and_padded_forwards_agree(dirs, rewardbench):
    spec = specs(dirs)["dpo"]
    pairs = [TextPair(item["prompt"], item["response"]) for item in ITEMS if "prompt" in item]
    padded = RewardModel.load("dpo", dirs["policy"], spec=spec, packed=False)
    packed = RewardModel.load("dpo", dirs["policy"], spec=spec, packed=True)
    assert packed.packed and not padded.packed
    want = [rewardbench.score(spec, {"prompt": p.prompt, "response": p.response}) for p in pairs]
    assert [o.score for o in padded.score(pairs)] == pytest.approx(want, abs=TOL, rel=0)
    assert [o.score for o in packed.score(pairs)] == pytest.approx(want, abs=TOL, rel=0)


def test_a_reference_with_another_tokenizer_fails_the_load_naming_it(dirs):
    spec = {"kind": "implicit", "implicit": {"reference": str(dirs["other"])}}
    with pytest.raises(ModelLoadError, match=f"implicit.reference {dirs['other']} has another tokenizer"):
        RewardModel.load("dpo", dirs["policy"], spec=spec)


LONG_PROMPT = ("Jane has 12 apples. She gives 4 to Tom, buys 1 at the market, then halves what is left with her "
               "sister and eats one of hers. How many apples does Jane have now? Show the steps.")
GROUP = [TextPair(LONG_PROMPT, answer) for answer in (
    "Nine.", "12 - 4 = 8, 8 + 1 = 9, 9 / 2 = 4.5, and 4.5 - 1 = 3.5: she has 3.5 apples.", "3.5",
    "She has 3 and a half apples left.")] + [TextPair("What is 2 + 2?", "4")]


@pytest.mark.parametrize("name", ["dpo", "free-sum", "free-norm"])
def test_shared_prompts_equal_the_packed_and_padded_forwards(dirs, name):
    """n responses to one prompt run the prompt once through each LM (the counters say so),
    in float32 within 1e-5 of the unshared forwards, an item of another prompt beside them."""
    spec = specs(dirs)[name]
    shared = RewardModel.load(name, dirs["policy"], spec=spec, share_prefix=True, packed=False)
    prompt_tokens = shared.encode(GROUP[0]).prompt_length
    assert 3 * prompt_tokens > GROUP_COST  # four responses save three prompts: enough for the group to pay
    want = [[o.score for o in RewardModel.load(name, dirs["policy"], spec=spec, share_prefix=False,
                                               packed=packed).score(GROUP)] for packed in (False, True)]
    got = [o.score for o in shared.score(GROUP)]
    assert shared.prefix_sharing.groups == 1 and shared.prefix_sharing.tokens_saved >= 3 * prompt_tokens
    for unshared in want:
        assert got == pytest.approx(unshared, abs=TOL, rel=TOL)


@pytest.mark.parametrize("name", ["dpo", "free-sum", "free-avg", "free-norm"])
def test_token_rewards_are_the_terms_of_the_score(dirs, rewardbench, name):
    """Each response token's reward, with its id and the response's start: summed (or averaged,
    or minus their L2 norm) they are the score; with a reference they are beta times the
    per-token log-ratios RewardBench masks to the response."""
    spec = specs(dirs)[name]
    model = RewardModel.load(name, dirs["policy"], spec=spec, share_prefix=True)
    item = GROUP[1]
    ids, start = rewardbench.ids_and_start({"prompt": item.prompt, "response": item.response})
    for out in (model.score([item])[0], model.score(GROUP)[1]):  # alone, and in a shared-prefix group
        rewards = out.token_rewards
        assert rewards.start == start and rewards.token_ids == tuple(ids[0, start:].tolist())
        values = torch.tensor(rewards.values, dtype=torch.float64)
        reduced = {"sum": values.sum(), "avg": values.mean(), "norm": -torch.linalg.vector_norm(values)}
        assert float(reduced[spec["implicit"].get("reduction", "sum")]) == pytest.approx(out.score, rel=1e-5)
    if name == "dpo":
        with torch.no_grad():
            terms = BETA * (rewardbench.response_logps(rewardbench.policy, ids, start)
                            - rewardbench.response_logps(rewardbench.reference, ids, start))
        assert list(rewards.values) == pytest.approx(terms.tolist(), abs=TOL)


def test_the_exported_onnx_graph_holds_both_lms_and_scores_as_torch(dirs, tmp_path):
    """`export-onnx` writes policy and reference into one graph of token_logratios; ONNX
    Runtime's scores and token rewards are torch's within the exported backends' 1e-4."""
    pytest.importorskip("onnxruntime")
    spec = specs(dirs)["dpo"]
    policy = shutil.copytree(dirs["policy"], tmp_path / "policy")
    torch_model = RewardModel.load("dpo", policy, spec=spec)
    export_onnx(torch_model, policy / ONNX_FILENAME)
    onnx_model = RewardModel.load("dpo", policy, spec=spec, backend=OnnxRuntimeConfig())
    assert onnx_model.info.architecture == "onnx:Qwen2ForCausalLM" and onnx_model.prefix_sharing is None
    for got, want in zip(onnx_model.score(GROUP), torch_model.score(GROUP), strict=True):
        assert got.score == pytest.approx(want.score, abs=1e-4)
        assert got.token_rewards.token_ids == want.token_rewards.token_ids
        assert list(got.token_rewards.values) == pytest.approx(want.token_rewards.values, abs=1e-4)


@pytest.mark.parametrize(("spec", "reason"), [
    ({"kind": "implicit"}, "needs an implicit section"),
    ({"kind": "scalar", "implicit": {}}, "needs an implicit section"),
    ({"kind": "implicit", "implicit": {"reference": "ref", "reduction": "avg"}}, "without a reference only"),
    ({"kind": "implicit", "implicit": {"beta": 0}}, "greater than 0"),
    ({"kind": "implicit", "implicit": {"reduction": "max"}}, "'sum', 'avg' or 'norm'"),
    ({"kind": "implicit", "implicit": {}, "head_file": "h.safetensors"}, "no head_file"),
])
def test_a_bad_implicit_spec_is_refused_with_the_reason(spec, reason):
    with pytest.raises(ValidationError) as err:
        RewardSpec.model_validate(spec)
    assert reason in str(err.value)
