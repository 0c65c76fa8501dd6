"""Batched scoring equals unbatched scoring, for every model kind and input form, and the
score is read at the last real token, never at padding."""

from __future__ import annotations

import pytest
import torch

from models.inputs import Chat, StepsInput, TextPair, TokenIds
from models.reward_model import RewardModel
from models.spec import ModelKind

SEQUENCE_MODELS = ["llama-scalar", "qwen2-scalar", "llama-helpsteer", "llama-gating", "bert-scalar"]
PROCESS_MODELS = ["qwen2-prm", "mistral-prm"]
DECODER_SEQCLS_MODELS = ["llama-scalar", "qwen2-scalar", "llama-helpsteer"]

PAIRS = [
    ("What is 3 plus 4?", "It is 7."),
    ("Hi", "Hey"),
    ("Natalia sold clips to 48 of her friends in April, and then she sold half as many in May. "
     "How many clips did she sell?",
     "She sold 48 clips in April and half as many, 24, in May, so 48 + 24 = 72 clips altogether."),
    ("Please reason step by step.", "I cannot help with that request, but here is something safer."),
]
STEPS = [
    StepsInput("What is 3 plus 4?", ("Add 3 and 4.", "The answer is 7.")),
    StepsInput("Hi", ("7",)),
    StepsInput("Natalia sold clips to 48 of her friends in April, and half as many in May. How many?",
               ("She sold 48 in April.", "Half of 48 is 24, sold in May.", "48 + 24 = 72.", "The answer is 72.")),
]
SHORT = ("Hi", "Yo")
LONG = ("Please reason step by step, and put your final answer within a box. " * 2,
        "The quick brown fox jumps over the lazy dog while the cat sleeps. " * 2)


def chat_of(prompt: str, response: str) -> Chat:
    return Chat((("user", prompt), ("assistant", response)))


def pair_of(model, prompt: str, response: str) -> TextPair:
    """The text pair with the same content as chat_of(prompt, response): a lone user turn
    is the prompt, with a chat template or without."""
    return TextPair(prompt, response)


def ids_of(model, item) -> TokenIds:
    enc = model.encode(item)
    return TokenIds(tuple(enc.input_ids), enc.prompt_length)


def items_in_form(model, form: str) -> list:
    if model.spec.kind == ModelKind.process:
        return list(STEPS) if form == "steps" else [ids_of(model, s) for s in STEPS]
    if form == "text":
        return [pair_of(model, p, r) for p, r in PAIRS]
    if form == "chat":
        return [chat_of(p, r) for p, r in PAIRS]
    return [ids_of(model, pair_of(model, p, r)) for p, r in PAIRS]


def one_by_one(model, items: list) -> list:
    return [model.score([item])[0] for item in items]


SEQUENCE_CASES = [(m, f) for m in SEQUENCE_MODELS for f in ("text", "chat", "input_ids")]
PROCESS_CASES = [(m, f) for m in PROCESS_MODELS for f in ("steps", "input_ids")]


@pytest.mark.parametrize("name,form", SEQUENCE_CASES + PROCESS_CASES)
def test_batched_equals_unbatched(load_tiny, assert_outputs_match, name, form):
    model = load_tiny(name)
    items = items_in_form(model, form)
    lengths = {model.encode(item).num_tokens for item in items}
    assert len(lengths) == len(items), "the batch must mix lengths to exercise padding"
    assert_outputs_match(model.score(items), one_by_one(model, items))


@pytest.mark.parametrize("name", SEQUENCE_MODELS + PROCESS_MODELS)
def test_input_forms_agree(load_tiny, assert_outputs_match, name):
    model = load_tiny(name)
    forms = ("steps", "input_ids") if model.spec.kind == ModelKind.process else ("text", "chat", "input_ids")
    reference = model.score(items_in_form(model, forms[0]))
    for form in forms[1:]:
        assert_outputs_match(model.score(items_in_form(model, form)), reference, tol=1e-6)


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_text_and_chat_encode_to_same_ids(load_tiny, name):
    model = load_tiny(name)
    for prompt, response in PAIRS:
        by_pair = model.encode(pair_of(model, prompt, response))
        by_chat = model.encode(chat_of(prompt, response))
        assert by_pair.input_ids == by_chat.input_ids
        assert by_pair.prompt_length == by_chat.prompt_length
        assert by_pair.token_type_ids == by_chat.token_type_ids


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_short_item_beside_long_item_scores_as_alone(load_tiny, assert_outputs_match, name):
    model = load_tiny(name)
    items = [TextPair(*SHORT), TextPair(*LONG), TextPair(*SHORT)]
    short_len, long_len = (model.encode(items[i]).num_tokens for i in (0, 1))
    assert long_len > 4 * short_len
    assert_outputs_match(model.score(items), one_by_one(model, items))


@pytest.mark.parametrize("name", SEQUENCE_MODELS + PROCESS_MODELS)
def test_pad_id_does_not_change_scores(load_tiny, assert_outputs_match, monkeypatch, name):
    """Whatever token fills the padding, no score moves: padding is never read."""
    model = load_tiny(name)
    items = list(STEPS) if model.spec.kind == ModelKind.process else [TextPair(*SHORT), TextPair(*LONG)]
    reference = model.score(items)
    for pad_id in (0, 5, model.encoder.vocab_size - 1):
        monkeypatch.setattr(model, "pad_id", pad_id)
        assert_outputs_match(model.score(items), reference)


# ---- the read position, against the Hugging Face model run on unpadded ids ---------------


@torch.inference_mode()
def score_head_at_last_token(model, ids: list[int]) -> list[float]:
    """The checkpoint's score head on the last token's hidden state, run without padding."""
    hidden = model.backend.graph.model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
    return model.backend.graph.model.score(hidden).tolist()


@torch.inference_mode()
def hf_logits(model, ids: list[int]) -> list[float]:
    return model.backend.graph.model(input_ids=torch.tensor([ids])).logits[0].tolist()


@pytest.mark.parametrize("name", DECODER_SEQCLS_MODELS)
def test_decoder_reads_last_real_token(load_tiny, name):
    """The checkpoint's own score head applied to the last token's hidden state, computed
    without padding, both by hand and by the Hugging Face model's own forward."""
    model = load_tiny(name)
    items = [TextPair(*SHORT), TextPair(*LONG), TextPair(*PAIRS[0])]
    outputs = model.score(items)
    for item, out in zip(items, outputs):
        ids = model.encode(item).input_ids
        assert ids[-1] != model.pad_id  # so Hugging Face's pad-based read agrees
        raw = list(out.dimensions.values()) if out.dimensions else [out.score]
        if name == "llama-helpsteer":  # undo the spec's verbosity transform
            raw[-1] = (raw[-1] - 2.0) / 0.5
        assert raw == pytest.approx(score_head_at_last_token(model, ids), abs=1e-5)
        assert raw == pytest.approx(hf_logits(model, ids), abs=1e-5)


@pytest.mark.parametrize("name", ["llama-scalar", "qwen2-scalar"])
def test_item_ending_in_the_pad_token_is_read_as_transformers_reads_it(load_tiny, name):
    """Pad id == EOS id: transformers' sequence classifier reads the last token that is not
    the pad token, the one before a closing EOS, which is how such a model was trained to
    be read. So do we, alone and beside a longer item (whose padding is right of it)."""
    model = load_tiny(name)
    tokenizer = model.encoder.tokenizer
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == model.config.pad_token_id
    ids = model.encode(TextPair(*PAIRS[0])).input_ids + [tokenizer.eos_token_id]
    (expected,) = hf_logits(model, ids)
    (before_eos,) = score_head_at_last_token(model, ids[:-1])
    (at_eos,) = score_head_at_last_token(model, ids)
    assert expected == pytest.approx(before_eos, abs=1e-5)
    assert abs(at_eos - before_eos) > 1e-3, "test needs the two read positions to differ"

    item = TokenIds(tuple(ids))
    longer = TokenIds(tuple(model.encode(TextPair(*LONG)).input_ids))
    assert model.score([item])[0].score == pytest.approx(expected, abs=1e-5)
    assert model.score([item, longer])[0].score == pytest.approx(expected, abs=1e-5)
    assert model.score([longer, item])[1].score == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_head_file_pooling_ignores_padding(tiny_model_dirs, tiny_models, assert_outputs_match, pooling):
    """Mean and first-token pooling on a decoder backbone: batched equals alone, and the
    pooled state is the mean (or first) over the item's own tokens only."""
    spec = {**tiny_models["llama-gating"].spec.model_dump(mode="json"), "pooling": pooling}
    model = RewardModel.load("pooled", tiny_model_dirs["llama-gating"], spec=spec)
    items = [TextPair(*SHORT), TextPair(*LONG), TextPair(*PAIRS[0])]
    assert_outputs_match(model.score(items), one_by_one(model, items))
    for item, out in zip(items, model.score(items)):
        ids = model.encode(item).input_ids
        with torch.inference_mode():
            hidden = model.backend.graph.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
            pooled = hidden.mean(0) if pooling == "mean" else hidden[0]
            dims = model.backend.graph.head.reward(pooled).tolist()
        assert list(out.dimensions.values()) == pytest.approx(dims, abs=1e-5)
