"""Process reward models: one reward per step, read at the step markers, for the
separator convention (qwen2-prm) and the Math-Shepherd step-tag convention (mistral-prm)."""

from __future__ import annotations

import math

import pytest
import torch

from models.errors import InputError
from models.heads import RewardOutput
from models.inputs import Chat, StepsInput, TextPair, TokenIds
from models.spec import StepAggregate

PROCESS_MODELS = ["qwen2-prm", "mistral-prm"]
PROBLEM = "Natalia sold clips to 48 of her friends in April, and half as many in May. How many?"
SOLUTION = ("She sold 48 in April.", "Half of 48 is 24, sold in May.", "48 + 24 = 72.", "The answer is 72.")


@pytest.mark.parametrize("name", PROCESS_MODELS)
def test_one_probability_per_step(load_tiny, name):
    model = load_tiny(name)
    for steps in (SOLUTION[:1], SOLUTION[:2], SOLUTION):
        out = model.score([StepsInput(PROBLEM, steps)])[0]
        assert len(out.step_rewards) == len(steps)
        assert all(0.0 <= r <= 1.0 for r in out.step_rewards)
        assert out.dimensions is None and out.gating_weights is None


@pytest.mark.parametrize("name,default", [("qwen2-prm", StepAggregate.min), ("mistral-prm", StepAggregate.product)])
def test_step_aggregates(load_tiny, name, default):
    model = load_tiny(name)
    out = model.score([StepsInput(PROBLEM, SOLUTION)])[0]
    rewards = out.step_rewards
    expected = {
        StepAggregate.min: min(rewards),
        StepAggregate.product: math.prod(rewards),
        StepAggregate.last: rewards[-1],
        StepAggregate.mean: sum(rewards) / len(rewards),
    }
    assert len(set(expected.values())) == 4, "the aggregates must differ for the test to mean anything"
    assert model.info.step_aggregate == default.value
    assert out.score == pytest.approx(expected[default])
    for how, value in expected.items():
        again = out.with_step_aggregate(how)
        assert isinstance(again, RewardOutput)
        assert again.score == pytest.approx(value)
        assert again.step_rewards == rewards


@torch.inference_mode()
def test_separator_reads_token_classifier_at_each_marker(load_tiny):
    model = load_tiny("qwen2-prm")
    enc = model.encode(StepsInput(PROBLEM, SOLUTION))
    marker_id = model.encoder.tokenizer.convert_tokens_to_ids("<extra_0>")
    assert enc.marker_positions == [i for i, t in enumerate(enc.input_ids) if t == marker_id]
    logits = model.backend.graph.model(input_ids=torch.tensor([enc.input_ids])).logits[0, enc.marker_positions]
    expected = torch.softmax(logits, dim=-1)[:, 1].tolist()
    assert model.score([StepsInput(PROBLEM, SOLUTION)])[0].step_rewards == pytest.approx(expected, abs=1e-5)


@torch.inference_mode()
def test_step_tag_is_softmax_of_lm_logits_over_minus_plus(load_tiny):
    """Math-Shepherd: at each `ки`, P(+) from the full LM logits restricted to [-, +]."""
    model = load_tiny("mistral-prm")
    tokenizer = model.encoder.tokenizer
    tag, minus, plus = tokenizer.convert_tokens_to_ids(["ки", "-", "+"])
    enc = model.encode(StepsInput(PROBLEM, SOLUTION))
    assert [enc.input_ids[p] for p in enc.marker_positions] == [tag] * len(SOLUTION)
    logits = model.backend.graph.model(input_ids=torch.tensor([enc.input_ids])).logits[0]
    expected = [torch.softmax(logits[p, [minus, plus]], dim=-1)[1].item() for p in enc.marker_positions]
    out = model.score([StepsInput(PROBLEM, SOLUTION)])[0]
    assert out.step_rewards == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("name", PROCESS_MODELS)
def test_input_ids_with_markers(load_tiny, assert_outputs_match, name):
    model = load_tiny(name)
    item = StepsInput(PROBLEM, SOLUTION)
    enc = model.encode(item)
    expected = model.score([item])
    assert_outputs_match(model.score([TokenIds(tuple(enc.input_ids), enc.prompt_length)]), expected)
    without_prompt_length = model.score([TokenIds(tuple(enc.input_ids))])
    assert_outputs_match(without_prompt_length, expected)

    no_markers = [t for t in enc.input_ids if t != model.encoder.marker_id]
    with pytest.raises(InputError) as err:
        model.score([TokenIds(tuple(no_markers))])
    assert err.value.field == "input_ids"


@pytest.mark.parametrize("name", PROCESS_MODELS)
def test_step_containing_marker_is_refused(load_tiny, name):
    model = load_tiny(name)
    marker = model.spec.process.marker
    with pytest.raises(InputError) as err:
        model.score([StepsInput(PROBLEM, ("fine", f"smuggled {marker} marker", "fine"))])
    assert err.value.field == "steps[1]"


@pytest.mark.parametrize("name", PROCESS_MODELS)
def test_empty_steps_are_refused(load_tiny, name):
    with pytest.raises(InputError) as err:
        load_tiny(name).score([StepsInput(PROBLEM, ())])
    assert err.value.field == "steps"


@pytest.mark.parametrize("name", PROCESS_MODELS)
@pytest.mark.parametrize("item", [TextPair(PROBLEM, "72"), Chat((("user", PROBLEM), ("assistant", "72")))])
def test_process_model_refuses_pairs_and_chats(load_tiny, name, item):
    with pytest.raises(InputError) as err:
        load_tiny(name).score([item])
    assert err.value.field == "steps"


def test_sequence_model_refuses_steps(load_tiny):
    with pytest.raises(InputError) as err:
        load_tiny("llama-scalar").score([StepsInput(PROBLEM, SOLUTION)])
    assert err.value.field == "steps"
