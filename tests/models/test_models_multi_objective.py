"""Multi-objective models: named dimensions, the spec's affine transform, fixed weights
(llama-helpsteer) and ArmoRM-style prompt gating (llama-gating), checked by hand."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny_models import HELPSTEER

from models.errors import InputError
from models.inputs import Chat, TextPair, TokenIds
from models.spec import SPEC_FILENAME

PROMPT = "What is 3 plus 4?"
RESPONSES = ["It is 7.", "The quick brown fox jumps over the lazy dog, so the answer is 12."]


@torch.inference_mode()
def raw_logits(model, ids: list[int]) -> list[float]:
    """The Hugging Face sequence classifier's own output on unpadded ids."""
    return model.backend.graph.model(input_ids=torch.tensor([ids])).logits[0].tolist()


def test_helpsteer_dimensions_transform_and_weighted_sum(load_tiny, tiny_model_dirs):
    model = load_tiny("llama-helpsteer")
    spec_file = yaml.safe_load((tiny_model_dirs["llama-helpsteer"] / SPEC_FILENAME).read_text())
    weights = spec_file["multi_objective"]["weights"]
    assert model.info.dimensions == HELPSTEER

    items = [TextPair(PROMPT, r) for r in RESPONSES]
    for item, out in zip(items, model.score(items)):
        raw = dict(zip(HELPSTEER, raw_logits(model, model.encode(item).input_ids)))
        assert list(out.dimensions) == HELPSTEER
        for name in HELPSTEER[:-1]:
            assert out.dimensions[name] == pytest.approx(raw[name], abs=1e-5)
        assert out.dimensions["verbosity"] == pytest.approx(raw["verbosity"] * 0.5 + 2.0, abs=1e-5)
        by_hand = sum(weights[name] * out.dimensions[name] for name in HELPSTEER)
        assert out.score == pytest.approx(by_hand, abs=1e-6)
        assert out.gating_weights is None


def mlp(tensors: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    i = 0
    while f"{prefix}.{i}.weight" in tensors:
        if i:
            x = torch.relu(x)
        x = x @ tensors[f"{prefix}.{i}.weight"].T + tensors[f"{prefix}.{i}.bias"]
        i += 1
    return x


@torch.inference_mode()
def gating_by_hand(model, head: dict[str, torch.Tensor], ids: list[int], prompt_length: int):
    """(dimensions, gating weights, score) from the backbone run unpadded and the head
    file's tensors, with no use of the server's head code."""
    hidden = model.backend.graph.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    dims = mlp(head, "reward", hidden[-1])
    weights = torch.softmax(mlp(head, "gating", hidden[prompt_length - 1]) / head["gating_temperature"], dim=-1)
    score = (weights * (dims @ head["transform_matrix"])).sum()
    return dims.tolist(), weights.tolist(), score.item()


def test_gating_matches_hand_computation_from_head_file(load_tiny, tiny_model_dirs):
    model = load_tiny("llama-gating")
    head = load_file(str(tiny_model_dirs["llama-gating"] / "reward_head.safetensors"))
    assert head["transform_matrix"].shape == (len(HELPSTEER), 3)
    items = [TextPair(PROMPT, r) for r in RESPONSES] + [TextPair("Hi", "Hello")]
    for item, out in zip(items, model.score(items)):
        enc = model.encode(item)
        dims, weights, score = gating_by_hand(model, head, enc.input_ids, enc.prompt_length)
        assert list(out.dimensions.values()) == pytest.approx(dims, abs=1e-5)
        assert out.gating_weights == pytest.approx(weights, abs=1e-5)
        assert sum(out.gating_weights) == pytest.approx(1.0, abs=1e-5)
        assert all(w >= 0 for w in out.gating_weights)
        assert out.score == pytest.approx(score, abs=1e-5)


def test_gating_weights_depend_only_on_the_prompt(load_tiny):
    """The gate reads the state at the prompt's end; in a causal model that state cannot see
    the response, so two responses to one prompt share gating weights but not dimensions."""
    model = load_tiny("llama-gating")
    items = [TextPair(PROMPT, r) for r in RESPONSES]
    first, second = model.score(items)
    assert model.encode(items[0]).prompt_length == model.encode(items[1]).prompt_length
    assert first.gating_weights == pytest.approx(second.gating_weights, abs=1e-6)
    assert first.dimensions != pytest.approx(second.dimensions, abs=1e-3)

    other_prompt = model.score([TextPair("Please reason step by step.", RESPONSES[0])])[0]
    assert other_prompt.gating_weights != pytest.approx(first.gating_weights, abs=1e-4)


def test_gating_reads_prompt_end_of_a_multi_turn_chat(load_tiny):
    model = load_tiny("llama-gating")
    turns = (("system", "Be brief."), ("user", PROMPT), ("assistant", "7"), ("user", "And 3 plus 5?"))
    a, b = model.score([Chat(turns + (("assistant", "8"),)), Chat(turns + (("assistant", "It is 8."),))])
    assert a.gating_weights == pytest.approx(b.gating_weights, abs=1e-6)


def test_gating_input_ids_need_prompt_length(load_tiny):
    model = load_tiny("llama-gating")
    enc = model.encode(TextPair(PROMPT, RESPONSES[0]))
    with pytest.raises(InputError) as err:
        model.score([TokenIds(tuple(enc.input_ids))])
    assert err.value.field == "prompt_length"
    for bad in (0, len(enc.input_ids) + 1):
        with pytest.raises(InputError) as err:
            model.score([TokenIds(tuple(enc.input_ids), prompt_length=bad)])
        assert err.value.field == "prompt_length"
    assert model.score([TokenIds(tuple(enc.input_ids), enc.prompt_length)])[0].gating_weights is not None


def test_head_features_are_what_the_reward_head_reads(load_tiny):
    """A head trained on head_features sees exactly what serving feeds it, padding included."""
    model = load_tiny("llama-gating")
    items = [TextPair(PROMPT, r) for r in RESPONSES] + [TextPair("Hi", "Hello")]
    batch = [model.encode(item) for item in items]
    features = model.head_features(batch)
    assert features.shape == (len(items), model.backend.graph.model.config.hidden_size)
    with torch.inference_mode():
        dims = model.backend.graph.head.reward(features).tolist()
    for row, out in zip(dims, model.score(items)):
        assert list(out.dimensions.values()) == pytest.approx(row, abs=1e-5)
    alone = torch.cat([model.head_features([enc]) for enc in batch])
    assert torch.allclose(features, alone, atol=1e-5)
