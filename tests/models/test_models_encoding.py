"""Tokenization checks: length limits and truncation, invalid token ids and chats, and
BERT's pair encoding."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from models.errors import InputError
from models.inputs import Chat, StepsInput, TextPair, TokenIds

LONG_PROMPT = "The quick brown fox jumps over the lazy dog while the cat sleeps. " * 40
LONG_RESPONSE = "A helpful assistant answers the question clearly, correctly and politely. " * 40


def as_ids(enc) -> TokenIds:
    return TokenIds(tuple(enc.input_ids), enc.prompt_length)


def encode_whole(model, item, monkeypatch):
    """`item` encoded as if the model had no length limit."""
    with monkeypatch.context() as patch:
        patch.setattr(model.encoder, "max_length", 10**6)
        return model.encode(item)


def flagged_truncated(out):
    """`out` from scoring already-cut ids, which are not themselves truncated, with the flag
    a truncating request carries."""
    assert not out.truncated
    return replace(out, truncated=True)


@pytest.mark.parametrize("name", ["llama-scalar", "qwen2-prm", "bert-scalar"])
def test_too_long_is_refused_without_truncate(load_tiny, name):
    model = load_tiny(name)
    item = StepsInput(LONG_PROMPT, ("7",)) if model.spec.process else TextPair(LONG_PROMPT, "7")
    with pytest.raises(InputError) as err:
        model.score([item])
    assert err.value.code == "input_too_long"
    last = model.encoder.marker_id if model.spec.process else 5
    at_limit = (5,) * (model.encoder.max_length - 1) + (last,)
    assert model.score([TokenIds(at_limit)])[0].num_tokens == model.encoder.max_length
    with pytest.raises(InputError) as err:
        model.score([TokenIds((5,) + at_limit)])
    assert err.value.code == "input_too_long"


@pytest.mark.parametrize("name", ["llama-scalar", "qwen2-scalar", "llama-gating", "bert-scalar"])
def test_truncate_left_keeps_the_end_and_leading_special(load_tiny, assert_outputs_match, monkeypatch, name):
    model = load_tiny(name)
    limit = model.encoder.max_length
    item = TextPair(LONG_PROMPT, "It is 7.")
    whole = encode_whole(model, item, monkeypatch)
    full = whole.input_ids
    enc = model.encode(item, truncate="left")
    assert len(full) > limit and len(enc.input_ids) == limit and enc.truncated
    lead = 1 if full[0] in model.encoder.special_ids else 0
    assert enc.input_ids[:lead] == full[:lead]
    assert enc.input_ids[lead:] == full[-(limit - lead):]
    assert enc.prompt_length == whole.prompt_length - (len(full) - limit)
    if enc.token_type_ids:
        assert enc.token_type_ids[0] == 0 and enc.token_type_ids[-1] == 1
    out = model.score([item], truncate="left")[0]
    assert out.truncated and out.num_tokens == limit
    assert_outputs_match([out], [flagged_truncated(model.score([as_ids(enc)])[0])])


@pytest.mark.parametrize("name", ["llama-scalar", "qwen2-scalar", "llama-gating", "bert-scalar"])
def test_truncate_right_keeps_the_start(load_tiny, assert_outputs_match, monkeypatch, name):
    model = load_tiny(name)
    limit = model.encoder.max_length
    item = TextPair("What is 3 plus 4?", LONG_RESPONSE)
    whole = encode_whole(model, item, monkeypatch)
    full = whole.input_ids
    enc = model.encode(item, truncate="right")
    assert len(enc.input_ids) == limit and enc.truncated
    trail = 1 if full[-1] in model.encoder.special_ids else 0
    assert enc.input_ids[: limit - trail] == full[: limit - trail]
    assert enc.input_ids[limit - trail:] == full[len(full) - trail:]
    assert enc.prompt_length == whole.prompt_length < limit
    out = model.score([item], truncate="right")[0]
    assert out.truncated and out.num_tokens == limit
    assert_outputs_match([out], [flagged_truncated(model.score([as_ids(enc)])[0])])


@pytest.mark.parametrize(("name", "keep"), [("llama-scalar", 9), ("bert-scalar", 9), ("bert-scalar", 2),
                                            ("bert-scalar", 1)])
def test_truncate_to_fewer_tokens_keeps_the_specials_as_at_max_length(load_tiny, name, keep):
    """`keep` (vLLM's truncate_prompt_tokens) cuts as max_length does, to fewer tokens: the
    leading special token, then the end; a closing one (BERT's [SEP]) stays while room is
    left for a token between; one token kept is the last one."""
    model = load_tiny(name)
    item = TextPair("What is 3 plus 4?", "It is 7, the sum of three and four.")
    full = model.encode(item).input_ids
    enc = model.encode(item, truncate="left", keep=keep)
    assert enc.truncated and len(enc.input_ids) == keep
    lead = int(keep > 1)
    trail = int(full[-1] in model.encoder.special_ids and keep > 2)
    assert full[0] in model.encoder.special_ids
    assert enc.input_ids == full[:lead] + full[len(full) - keep + lead:]
    right = model.encode(item, truncate="right", keep=keep).input_ids
    assert right[:keep - trail] == full[:keep - trail] and right[keep - trail:] == full[len(full) - trail:]
    assert model.encode(item, keep=keep).input_ids == full  # keep cuts only where truncation is asked for
    assert model.encode(item, truncate="left", keep=10**6).input_ids == full  # and never past max_length


def test_truncated_and_whole_items_batch_together(load_tiny, assert_outputs_match):
    model = load_tiny("llama-scalar")
    items = [TextPair(LONG_PROMPT, "It is 7."), TextPair("Hi", "Hey")]
    batched = model.score(items, truncate="left")
    assert [o.truncated for o in batched] == [True, False]
    assert_outputs_match(batched, [model.score([i], truncate="left")[0] for i in items])


def test_truncated_process_steps_match_scoring_the_kept_ids(load_tiny, assert_outputs_match):
    model = load_tiny("qwen2-prm")
    item = StepsInput(LONG_PROMPT, ("Add 3 and 4.", "The answer is 7."))
    enc = model.encode(item, truncate="left")
    assert len(enc.marker_positions) == 2
    out = model.score([item], truncate="left")[0]
    assert out.truncated and len(out.step_rewards) == 2
    assert_outputs_match([out], [flagged_truncated(model.score([as_ids(enc)])[0])])


@pytest.mark.parametrize("bad,position", [((0, 5, -1, 7), 2), ((3, 10**6), 1)])
def test_invalid_token_ids_name_the_position(load_tiny, bad, position):
    model = load_tiny("llama-scalar")
    with pytest.raises(InputError) as err:
        model.score([TokenIds(bad)])
    assert err.value.field == f"input_ids[{position}]"


def test_token_id_bounds(load_tiny):
    model = load_tiny("llama-scalar")
    vocab = model.encoder.vocab_size
    assert vocab == model.backend.graph.model.config.vocab_size
    assert model.score([TokenIds((0, vocab - 1))])[0].num_tokens == 2
    with pytest.raises(InputError) as err:
        model.score([TokenIds((0, vocab))])
    assert err.value.field == "input_ids[1]"
    with pytest.raises(InputError) as err:
        model.score([TokenIds(())])
    assert err.value.field == "input_ids"


@pytest.mark.parametrize("name", ["llama-scalar", "bert-scalar"])
def test_chat_checks(load_tiny, name):
    model = load_tiny(name)
    with pytest.raises(InputError) as err:
        model.score([Chat((("user", "Hi"), ("robot", "Hey"), ("assistant", "Yo")))])
    assert err.value.field == "messages[1].role"
    for messages in ((("user", "Hi"), ("assistant", "Hey"), ("user", "Yo")), (("assistant", "Hey"),)):
        with pytest.raises(InputError) as err:
            model.score([Chat(messages)])
        assert err.value.field == "messages"


def test_bad_item_does_not_hide_behind_good_ones(load_tiny):
    model = load_tiny("llama-scalar")
    with pytest.raises(InputError) as err:
        model.score([TextPair("Hi", "Hey"), TokenIds((1, -3))])
    assert err.value.field == "input_ids[1]"


# ---- BERT cross-encoder ------------------------------------------------------------------


@torch.inference_mode()
def test_bert_uses_token_type_ids(load_tiny):
    model = load_tiny("bert-scalar")
    tokenizer = model.encoder.tokenizer
    prompt, response = "What is 3 plus 4?", "It is 7."
    enc = model.encode(TextPair(prompt, response))
    first_response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    assert enc.input_ids[0] == tokenizer.cls_token_id
    assert enc.input_ids[enc.prompt_length - 1] == tokenizer.sep_token_id
    assert enc.input_ids[enc.prompt_length:-1] == first_response_ids
    assert enc.token_type_ids == [0] * enc.prompt_length + [1] * (enc.num_tokens - enc.prompt_length)

    ids = torch.tensor([enc.input_ids])
    with_types = model.backend.graph.model(
        input_ids=ids, token_type_ids=torch.tensor([enc.token_type_ids])
    ).logits.item()
    without_types = model.backend.graph.model(input_ids=ids).logits.item()
    assert abs(with_types - without_types) > 1e-3, "token types must matter for this test to mean anything"
    assert model.score([TextPair(prompt, response)])[0].score == pytest.approx(with_types, abs=1e-5)
    assert model.score([as_ids(enc)])[0].score == pytest.approx(with_types, abs=1e-5)
    assert model.score([TokenIds(tuple(enc.input_ids))])[0].score == pytest.approx(with_types, abs=1e-5)


def test_bert_single_segment_ids_are_all_type_zero(load_tiny):
    model = load_tiny("bert-scalar")
    ids = model.encoder.tokenizer("just one segment")["input_ids"]
    assert model.encode(TokenIds(tuple(ids))).token_type_ids is None
