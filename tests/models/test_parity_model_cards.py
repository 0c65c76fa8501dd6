"""Model-card parity: every published reward-model family we support scores, through the
live HTTP server (scheduler, padding, batching with other items), exactly what its model
card's own usage code computes on the same checkpoint.

The checkpoints are tiny random-weight models in each family's exact published layout
(model_cards/checkpoints.py), with real tokenizers where a package ships them; the
references re-implement each card's usage code with transformers alone (model_cards/cards.py);
the served configurations are the examples in deploy/config, pointed at these checkpoints
(converted first where the example says so)."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from model_cards import cards
from model_cards.checkpoints import BUILDERS, STEERLM_WEIGHTS
from paths import DEPLOY
from safetensors.torch import load_file

from models.convert import ARMORM_OBJECTIVES, checkpoint_tensors
from models.errors import ModelLoadError
from models.inputs import TextPair
from models.reward_model import RewardModel
from models.spec import load_spec
from service.cli import main as cli
from service.config import ModelConfig

TOL = 1e-5
CONFIG_DIR = DEPLOY / "config"
APPLES = ("Jane has 12 apples. She gives 4 apples to her friend Mark, then buys 1 more apple, and finally splits "
          "all her apples equally among herself and her 2 siblings. How many apples does each person get?")
CHATS = [
    [{"role": "user", "content": APPLES},
     {"role": "assistant", "content": "1. Jane starts with 12 apples and gives 4 to Mark. 12 - 4 = 8.\n2. Jane buys "
      "1 more apple. 8 + 1 = 9.\n3. Jane splits the 9 apples among 3 people. 9 ÷ 3 = 3 apples each."}],
    [{"role": "user", "content": APPLES},
     {"role": "assistant", "content": "Each person gets 4 apples."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help you today?"}],
]
WITH_SYSTEM = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 + 2?"},
               {"role": "assistant", "content": "4"}, {"role": "user", "content": "And times 3?"},
               {"role": "assistant", "content": "12"}]
MULTI_TURN = WITH_SYSTEM[1:]
PROBLEMS = {
    "qwen": ("Sue lives in a fun neighborhood. On Friday morning, the neighbors placed 18 pink plastic flamingos "
             "out on Sue's front yard. On Saturday morning, they took back one third of the flamingos, painted "
             "them white, and put them back out. On Sunday morning, they added another 18 pink plastic "
             "flamingos. At noon on Sunday, how many more pink plastic flamingos were out than white ones?",
             ["On Friday there are 18 pink flamingos.", "On Saturday, 1/3 x 18 = 6 are taken back and painted "
              "white, so 12 pink and 6 white.", "On Sunday, 18 more pink ones: 12 + 18 = 30 pink.",
              "30 - 6 = 24. The answer is (\\boxed{24})."]),
    "shepherd": ("Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins "
                 "for her friends every day with four. She sells the remainder at the farmers' market daily for "
                 "$2 per fresh duck egg. How much in dollars does she make every day at the farmers' market?",
                 ["Step 1: Janet's ducks lay 16 eggs per day.", "Step 2: She eats three for breakfast every "
                  "morning, so she has 16 - 3 = 13 eggs left.", "Step 3: She bakes muffins with four eggs, so "
                  "she has 13 - 4 = 9 eggs left.", "Step 4: She makes 9 * $2 = $18 every day at the farmers' "
                  "market. The answer is: 18"]),
    "short": ("What is 3 + 4?", ["3 + 4 = 7.", "The answer is 7."]),
}

# served model (its deploy/config example) -> (example file, checkpoint, card, converted with)
SERVED = {
    "skywork": ("scalar.yaml", "skywork-llama31", cards.SkyworkCard, None),
    "skywork-v2-qwen3": ("scalar.yaml", "skywork-qwen3", cards.SkyworkV2Card, None),
    "skywork-gemma2": ("scalar.yaml", "skywork-gemma2", cards.SkyworkCard, None),
    "oasst-deberta": ("scalar.yaml", "oasst-deberta", cards.OpenAssistantCard, None),
    "nemotron-70b-reward": ("scalar.yaml", "nemotron-70b-reward-hf", cards.NemotronRewardCard, None),
    "armo": ("multi_objective.yaml", "armorm", cards.ArmoRMCard, "armorm"),
    "nemotron-steerlm": ("multi_objective.yaml", "nemotron-steerlm",
                         lambda d: cards.SteerLMCard(d, STEERLM_WEIGHTS), None),
    "qwen-prm": ("process.yaml", "qwen2.5-math-prm", cards.QwenMathPRMCard, "qwen2.5-math-prm"),
    "qwen-prm-remote": ("process.yaml", "qwen2.5-math-prm", cards.QwenMathPRMCard, None),
    "math-shepherd": ("process.yaml", "math-shepherd", cards.MathShepherdCard, None),
}


def example(name: str) -> ModelConfig:
    """The deploy/config example serving `name`."""
    file = SERVED[name][0]
    entries = yaml.safe_load((CONFIG_DIR / file).read_text())["models"]
    return ModelConfig(**next(e for e in entries if e["name"] == name))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("model_cards")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def served_dirs(checkpoints, tmp_path_factory) -> dict[str, Path]:
    """What each example's `path` stands for here: the checkpoint, or what `rewardserve
    convert` made of it."""
    root = tmp_path_factory.mktemp("converted")
    dirs = {}
    for name, (_, checkpoint, _, family) in SERVED.items():
        dirs[name] = checkpoints[checkpoint]
        if family is not None:
            dirs[name] = root / name
            cli(["convert", family, str(checkpoints[checkpoint]), str(dirs[name])])
    return dirs


@pytest.fixture(scope="module")
def client(served, served_dirs):
    models = [example(name).model_copy(update={"path": str(served_dirs[name])}) for name in SERVED]
    with served(models, grpc=False, cache={"max_bytes": 0}, batching={"max_wait_ms": 50}, timeout=300) as server:
        http = server.http
        listing = {m["name"]: m for m in http.get("/v1/models").json()["models"]}
        assert {n: m["status"] for n, m in listing.items()} == dict.fromkeys(SERVED, "ready"), listing
        yield http


@pytest.fixture(scope="module")
def card_for(checkpoints):
    made = {}

    def get(name: str):
        if name not in made:
            _, checkpoint, factory, _ = SERVED[name]
            made[name] = factory(checkpoints[checkpoint])
        return made[name]

    return get


def conversations(name: str) -> list[list[dict]]:
    if name == "oasst-deberta":  # a cross-encoder of (question, answer): single turns
        return CHATS
    if name == "skywork-gemma2":  # Gemma's template refuses system turns
        return [*CHATS, MULTI_TURN]
    return [*CHATS, WITH_SYSTEM]


def chat_items(name: str, card) -> tuple[list[dict], list[cards.Expected]]:
    """Every conversation as `messages`, the single-turn ones also as text, the first also
    as the card's own token ids; each with the card's numbers for it."""
    items, expected = [], []
    for i, conversation in enumerate(conversations(name)):
        reference = card.read(card.tokenize(conversation))
        items.append({"messages": conversation})
        expected.append(reference)
        if len(conversation) == 2:
            items.append({"prompt": conversation[0]["content"], "response": conversation[1]["content"]})
            expected.append(reference)
        if i == 0:
            items.append({"input_ids": card.tokenize(conversation)})
            expected.append(reference)
    return items, expected


def step_items(card) -> tuple[list[dict], list[cards.Expected]]:
    items, expected = [], []
    for question, steps in PROBLEMS.values():
        ids = card.tokenize(question, steps)
        reference = card.read(ids)
        items += [{"prompt": question, "steps": steps}, {"input_ids": ids}]
        expected += [reference, reference]
    return items, expected


def assert_matches(result: dict, want: cards.Expected, step_aggregate: str | None) -> None:
    if want.step_rewards is not None:
        assert result["step_rewards"] == pytest.approx(want.step_rewards, abs=TOL, rel=0)
        aggregate = {"min": min, "product": math.prod}[step_aggregate]
        assert result["score"] == pytest.approx(aggregate(want.step_rewards), abs=TOL, rel=0)
        return
    assert result["score"] == pytest.approx(want.score, abs=TOL, rel=0)
    if want.dimensions is not None:
        assert list(result["dimensions"].values()) == pytest.approx(want.dimensions, abs=TOL, rel=0)
    if want.gating_weights is not None:
        assert result["gating_weights"] == pytest.approx(want.gating_weights, abs=TOL, rel=0)


@pytest.fixture(scope="module")
def listed(client) -> dict[str, dict]:
    """/v1/models by name: each served model's kind and step aggregate, as configured."""
    return {m["name"]: m for m in client.get("/v1/models").json()["models"]}


def items_for(name: str, card, listed: dict[str, dict]):
    return step_items(card) if listed[name]["kind"] == "process" else chat_items(name, card)


@pytest.mark.parametrize("name", list(SERVED))
def test_parity_batched_request(client, card_for, listed, name):
    """All of a family's items in one request: batched together, padded to the longest."""
    items, expected = items_for(name, card_for(name), listed)
    response = client.post("/v1/score", json={"model": name, "items": items})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(expected)
    for i, (result, want) in enumerate(zip(results, expected)):
        try:
            assert_matches(result, want, listed[name].get("step_aggregate"))
        except AssertionError as err:
            raise AssertionError(f"{name} item {i} ({items[i]}): {err}") from err


def test_parity_one_item_per_request(client, card_for, listed):
    """OpenRLHF's pattern: every item its own request, all in flight at once, so items of
    different requests share batches."""
    jobs = []
    for name in SERVED:
        items, expected = items_for(name, card_for(name), listed)
        jobs += [(name, item, want) for item, want in zip(items, expected)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        responses = list(pool.map(lambda job: client.post("/v1/score", json={"model": job[0], "items": [job[1]]}),
                                  jobs))
    for (name, _item, want), response in zip(jobs, responses):
        assert response.status_code == 200, response.text
        assert_matches(response.json()["results"][0], want, listed[name].get("step_aggregate"))


def test_template_refusal_is_a_client_error(client):
    """Gemma's template raises on a system turn: 422 on `messages`, not a server error."""
    response = client.post("/v1/score", json={"model": "skywork-gemma2", "items": [{"messages": WITH_SYSTEM}]})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "items[0].messages"
    assert "System role not supported" in response.json()["error"]["message"]


def test_text_without_template_has_the_tokenizers_special_tokens_once(checkpoints):
    """use_chat_template: false on a Llama 3 checkpoint: prompt and response are scored as
    one text with one BOS, exactly as the tokenizer encodes that text."""
    model = RewardModel.load(
        "plain", checkpoints["skywork-llama31"], spec={"kind": "scalar", "use_chat_template": False}
    )
    encoded = model.encode(TextPair("What is 2 + 2?", "It is 4."))
    assert encoded.input_ids == model.encoder.tokenizer("What is 2 + 2? It is 4.")["input_ids"]
    assert encoded.input_ids.count(model.encoder.tokenizer.bos_token_id) == 1


def test_qwen_prm_without_its_remote_code_is_a_load_error(served, checkpoints, tmp_path):
    """Qwen2.5-Math-PRM's head is remote code: read as a plain token classifier, score.weight
    would be random and score.0/score.2 unread. The load fails naming them, and a server
    reports the model failed instead of serving it."""
    spec = {"kind": "process", "process": {"convention": "separator", "marker": "<extra_0>"}}
    with pytest.raises(ModelLoadError, match=r"missing \(would be random\): score\.bias, score\.weight.*"
                                             r"unexpected \(not read\): .*score\.0\.bias"):
        RewardModel.load("qwen-prm", checkpoints["qwen2.5-math-prm"], spec=spec)
    models = [ModelConfig(name="qwen-prm", path=str(checkpoints["qwen2.5-math-prm"]), spec=spec)]
    with served(models, grpc=False, ready=False) as server:
        http = server.http
        assert http.get("/health/ready").json()["status"] == "failed"
        (listed,) = http.get("/v1/models").json()["models"]
        assert listed["status"] == "failed" and "score.weight" in listed["error"]
        response = http.post("/v1/score", json={"model": "qwen-prm", "items": [{"prompt": "1+1?", "steps": ["2"]}]})
        assert response.status_code == 503, response.text


def test_armorm_remote_code_unconverted_is_refused_with_the_way_out(checkpoints):
    """ArmoRM's own class has no score layer this server can read: refused, pointing at
    `rewardserve convert`."""
    with pytest.raises(ModelLoadError, match="rewardserve convert"):
        RewardModel.load("armo", checkpoints["armorm"], spec={"kind": "scalar", "trust_remote_code": True})


def test_armorm_conversion_round_trips_the_head(checkpoints, served_dirs):
    """The converted head holds exactly the checkpoint's tensors: 19 objectives, the 4-layer
    gating network, logit_scale, the temperature from config.json, the transform matrix."""
    source = checkpoint_tensors(checkpoints["armorm"], ("regression_layer.", "gating.", "reward_transform_matrix"))
    head = load_file(str(served_dirs["armo"] / "reward_head.safetensors"))
    assert torch.equal(head["reward.0.weight"], source["regression_layer.weight"])
    assert "reward.0.bias" not in head
    for i in range(4):
        for part in ("weight", "bias"):
            assert torch.equal(head[f"gating.{i}.{part}"], source[f"gating.layers.{i}.{part}"])
    assert head["gating_logit_scale"].item() == pytest.approx(1.7)
    assert head["gating_temperature"].item() == 10
    assert torch.equal(head["transform_matrix"], source["reward_transform_matrix"])
    spec = load_spec(served_dirs["armo"])
    assert spec.multi_objective.dimensions == ARMORM_OBJECTIVES and len(ARMORM_OBJECTIVES) == 19
    assert spec.unused_weights == ["regression_layer.", "gating.", "reward_transform_matrix"]


def test_convert_refuses_a_checkpoint_of_another_layout(checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit, match="regression_layer.weight"):
        cli(["convert", "armorm", str(checkpoints["qwen2.5-math-prm"]), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_armorm_ids_without_the_gating_position_are_refused(client, card_for):
    """Token ids with no `<|eot_id|><|start_header_id|>assistant<|end_header_id|>` in them
    give ArmoRM's gating network nowhere to read: 422 on the ids, as its own code raises."""
    ids = card_for("armo").tokenizer("Explain recursion. It calls itself.")["input_ids"]
    response = client.post("/v1/score", json={"model": "armo", "items": [{"input_ids": ids}, {"messages": CHATS[0]}]})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "items[0].input_ids" and "gating position" in error["message"]
