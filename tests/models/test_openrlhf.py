"""OpenRLHF parity: /get_reward gives the rewards OpenRLHF's own server (serve_rm) gives for
the rollouts its trainer posts, through the live HTTP server, batched and one rollout per
request.

The queries are rollouts as OpenRLHF's trainer posts them: a policy's prompt (its chat
template applied) and response token ids, left-padded and right-padded, decoded with the
special tokens kept, by Llama 3, Qwen and Mistral (SentencePiece) policies. The reward
models are tiny random-weight checkpoints with real tokenizers in OpenRLHF's own layout
(value head beside the base model, mean and std in config.json), loaded without conversion,
and transformers sequence classifiers served by serve_rm with `--value_head_prefix score`
(Skywork); the reference is serve_rm re-implemented with transformers (model_cards/serve_rm.py)."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from http_helpers import assert_error
from model_cards import checkpoints, tokenizers
from model_cards.serve_rm import ServeRm
from safetensors.torch import load_file, save_file

from models.errors import ModelLoadError
from models.reward_model import RewardModel
from models.spec import SPEC_FILENAME
from service.config import ModelConfig

TOL = 1e-5
# served name -> (builder, its value head's name under serve_rm)
SERVED = {
    "openrlhf-llama3": (checkpoints.openrlhf_llama3, "value_head"),
    "openrlhf-qwen2": (checkpoints.openrlhf_qwen2, "score"),
    "openrlhf-mistral": (checkpoints.openrlhf_mistral, "value_head"),
    "skywork-llama31": (checkpoints.skywork_llama31, "score"),
    "skywork-qwen3": (checkpoints.skywork_qwen3, "score"),
}
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4."}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a prime number above 10."},
        {"role": "assistant", "content": "11 is prime: its only divisors are 1 and 11."},
    ],
    [
        {"role": "user", "content": "Write a haiku about the sea."},
        {
            "role": "assistant",
            "content": "Grey waves fold and break,\nsalt wind carries gull voices,\nthe tide keeps its time.",
        },
    ],
]


def policy_tokenizers(root: Path) -> dict:
    """The policies whose rollouts are scored, with pad = EOS where they have no pad token
    (as OpenRLHF sets them up)."""
    policies = {
        "llama3": tokenizers.llama3(checkpoints.template("llama-3")),
        "qwen": tokenizers.qwen(tokenizers.qwen3_template()),
        "mistral": tokenizers.mistral_v01(root / "mistral-policy"),
    }
    for tok in policies.values():
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    return policies


def prompt_ids(tok, conversation: list[dict]) -> list[int]:
    if tok.chat_template:
        ids = tok.apply_chat_template(conversation[:-1], add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    turns = " ".join(m["content"] for m in conversation[:-1])  # Mistral v0.1's [INST] format
    return tok.encode(f"[INST] {turns} [/INST]", add_special_tokens=True)


def rollout(tok, conversation: list[dict], left: int, right: int) -> tuple[str, str]:
    """(query, prompt) as OpenRLHF's trainer posts them: the left-padded prompt and the
    response ending in EOS, right-padded, decoded with the special tokens kept."""
    prompt = prompt_ids(tok, conversation)
    response = tok.encode(conversation[-1]["content"], add_special_tokens=False) + [tok.eos_token_id]
    sequence = [tok.pad_token_id] * left + prompt + response + [tok.pad_token_id] * right
    return tok.decode(sequence, skip_special_tokens=False), tok.decode(prompt, skip_special_tokens=False)


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory) -> list[tuple[str, str]]:
    root = tmp_path_factory.mktemp("policies")
    out = []
    for tok in policy_tokenizers(root).values():
        for i, conversation in enumerate(CONVERSATIONS):
            out.append(rollout(tok, conversation, left=2 * i, right=3 - i))
    # a SentencePiece policy served by vLLM: the BOS decoded into the query, not into the prompt
    out.append(("<s>Human: Is the sea salty?\n\nAssistant: Yes, it holds about 3.5% salt.</s>",
                "Human: Is the sea salty?\n\nAssistant:"))
    return out


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("openrlhf")
    return {name: build(root / name) for name, (build, _) in SERVED.items()}


@pytest.fixture(scope="module")
def client(served, model_dirs):
    models = [ModelConfig(name=name, path=str(path)) for name, path in model_dirs.items()]
    with served(models, grpc=False, cache={"max_bytes": 0}, batching={"max_wait_ms": 50}, timeout=300) as server:
        http = server.http
        listing = {m["name"]: m["status"] for m in http.get("/v1/models").json()["models"]}
        assert listing == dict.fromkeys(SERVED, "ready"), listing
        yield http


@pytest.fixture(scope="module")
def serve_rm(model_dirs):
    made = {}

    def get(name: str, normalize_reward: bool = False) -> ServeRm:
        if (name, normalize_reward) not in made:
            made[name, normalize_reward] = ServeRm(model_dirs[name], SERVED[name][1], normalize_reward)
        return made[name, normalize_reward]

    return get


def rewards(response: httpx.Response) -> list[float]:
    assert response.status_code == 200, response.text
    return response.json()["rewards"]


@pytest.mark.parametrize("name", list(SERVED))
def test_rollouts_in_one_request_score_as_serve_rm(client, serve_rm, rollouts, name):
    queries, prompts = [q for q, _ in rollouts], [p for _, p in rollouts]
    want = serve_rm(name).rewards(queries)
    got = rewards(client.post("/get_reward", params={"model": name}, json={"query": queries, "prompts": prompts}))
    assert got == pytest.approx(want, abs=TOL, rel=0)


@pytest.mark.parametrize("name", list(SERVED))
def test_one_rollout_per_request_scores_as_serve_rm(client, serve_rm, rollouts, name):
    """OpenRLHF's client sends one rollout per request, many at once; the scheduler batches
    them across requests (padding them on the right, serve_rm on the left)."""
    def one(rollout: tuple[str, str]) -> float:
        query, prompt = rollout
        return rewards(client.post(f"/get_reward?model={name}", json={"query": [query], "prompts": [prompt]}))[0]

    with ThreadPoolExecutor(len(rollouts)) as pool:
        got = list(pool.map(one, rollouts))
    want = [serve_rm(name).rewards([query])[0] for query, _ in rollouts]
    assert got == pytest.approx(want, abs=TOL, rel=0)


@pytest.mark.parametrize("name", [n for n in SERVED if n.startswith("openrlhf")])
def test_normalized_rewards_are_serve_rms_normalize_reward(client, serve_rm, rollouts, name):
    """OpenRLHF's own checkpoints keep their reward mean and std in config.json: zscore
    divides by them as serve_rm's --normalize_reward does; `scores` stay raw."""
    queries = [q for q, _ in rollouts]
    body = client.post("/get_reward", params={"model": name, "normalize": "zscore"}, json={"query": queries}).json()
    assert body["rewards"] == pytest.approx(serve_rm(name, normalize_reward=True).rewards(queries), abs=TOL, rel=0)
    assert body["scores"] == pytest.approx(serve_rm(name).rewards(queries), abs=TOL, rel=0)


def test_openrlhf_checkpoints_load_as_they_are(client, model_dirs):
    """No conversion, no reward_spec.yaml: the value head is found in the checkpoint."""
    for name in ("openrlhf-llama3", "openrlhf-qwen2", "openrlhf-mistral"):
        assert not (model_dirs[name] / "reward_spec.yaml").exists()
        card = client.get(f"/v1/models/{name}").json()
        assert card["status"] == "ready" and card["kind"] == "scalar", card


def test_split_mode_scores_the_response_through_the_models_template(client, rollouts):
    """Mode split reads each query as prompts[i] and the response after it, rendered with
    the reward model's own chat template: /v1/score's numbers for that prompt and response;
    a query whose decoded BOS its prompt lacks is scored, not refused."""
    query, prompt = rollouts[-1]
    body = client.post("/get_reward?model=openrlhf-mistral&mode=split", json={"query": [query], "prompts": [prompt]})
    item = {"prompt": prompt, "response": " Yes, it holds about 3.5% salt."}
    want = client.post("/v1/score", json={"model": "openrlhf-mistral", "items": [item]}).json()["results"][0]["score"]
    assert rewards(body) == pytest.approx([want], abs=TOL, rel=0)


def test_a_mode_that_does_not_exist_names_the_field(client):
    assert_error(client.post("/get_reward", json={"query": ["x"], "mode": "raw"}), 422, "invalid_request", "mode")


def test_a_value_head_not_in_openrlhfs_layout_is_not_guessed(model_dirs, tmp_path):
    """A head with a bias, or of another width, is no OpenRLHF value head: without a spec
    the model is not guessed (it would be read wrong), and a missing base-model tensor
    fails the load rather than leaving it random."""
    for change in ("bias", "width", "missing"):
        directory = shutil.copytree(model_dirs["openrlhf-llama3"], tmp_path / change)
        tensors = load_file(str(directory / "model.safetensors"))
        if change == "bias":
            tensors["value_head.bias"] = torch.zeros(1)
        elif change == "width":
            tensors["value_head.weight"] = torch.zeros(2, tensors["value_head.weight"].shape[1])
        else:
            del tensors["model.norm.weight"]
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        with pytest.raises(ModelLoadError, match="norm.weight" if change == "missing" else SPEC_FILENAME):
            RewardModel.load(change, directory)
