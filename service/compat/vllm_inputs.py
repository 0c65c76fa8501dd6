"""vLLM's request fields, and how each becomes what the core scores: texts and token ids
(`input`), conversations with string or content-part messages, score and rerank values
that may be `{"content": [parts]}`, truncation (`truncate_prompt_tokens`,
`truncation_side`) and activation (`use_activation`, and the older `activation` and
`softmax`). A vLLM field we cannot honour is refused with 422 naming it, never ignored."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.encoding import check_text
from models.errors import InputError
from models.inputs import Chat, ScoreInput, TokenIds
from models.reward_model import RewardModel
from service.compat.common import Lenient
from service.core.errors import APIError
from service.core.operations import kept_prompt_tokens
from service.pipelines.rules import RuleInput
from service.protocol.enums import Truncate

TEXT_PARTS = ("text", "input_text", "output_text")

# vLLM fields that would change what is scored in ways this server does not do: refused
# unless left at vLLM's default (the value here).
UNSUPPORTED_DEFAULTS: dict[str, Any] = {
    "padding": None, "mm_processor_kwargs": None, "cache_salt": None, "chat_template": None,
    "chat_template_kwargs": None, "media_io_kwargs": None, "instruction": None, "dimensions": None,
    "max_tokens_per_query": 0, "max_tokens_per_doc": 0, "add_generation_prompt": False,
    "continue_final_message": False, "task": None,
}


def content_text(content: Any, field: str) -> str:
    """A message's or score value's content as text: a string as it is, a list of text
    parts (OpenAI's `{"type": "text", "text": ...}`, or plain strings) joined by newlines,
    as vLLM does for string-format chat templates; any other part is refused."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict) and set(content) == {"content"}:
        return content_text(content["content"], f"{field}.content")
    if not isinstance(content, list):
        raise APIError(422, "invalid_request", "must be a string or a list of text parts", field)
    texts = []
    for i, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") in TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise APIError(422, "invalid_request", f"content part of type {kind!r}: only text parts are scored",
                           f"{field}[{i}]")
    return "\n".join(texts)


class VllmMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # name, tool_calls, ...: not part of what a reward model reads

    role: str
    content: str | list[Any] | None = None


class VllmOptions(BaseModel):
    """The fields every vLLM pooling request shares."""

    truncate_prompt_tokens: int | None = Field(None, ge=-1, description=(
        "k: cut each input to k tokens (at most the model's max_length), its leading and closing special tokens "
        "kept; -1 or default: cut to max_length"))
    truncation_side: Literal["left", "right"] | None = Field(None, description="which end is cut; default: left")
    use_activation: bool | None = Field(None, description="false: raw scores instead of sigmoid(score)")
    activation: bool | None = Field(None, description="older name of use_activation")
    softmax: bool | None = Field(None, description="older name of use_activation")
    request_id: str | None = None
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        """Raised as it is (not a validation error), so the 422 names the field."""
        for name, default in UNSUPPORTED_DEFAULTS.items():
            if isinstance(data, dict) and data.get(name, default) != default and \
                    not (name == "task" and data[name] in ("classify", "score")):
                raise APIError(422, "invalid_request", f"{name}={data[name]!r} is not supported here (rewardserve "
                               "scores with the model's own settings); leave it out", name)
        return data

    def wants_activation(self) -> bool | None:
        """use_activation, else its older names; None when none is given."""
        return next((v for v in (self.use_activation, self.activation, self.softmax) if v is not None), None)

    def side(self) -> Truncate:
        """The end inputs are cut at: truncation_side, else `truncate`, else the left."""
        return self.truncation_side or self.truncate or "left"

    def kept_tokens(self, max_length: int) -> int | None:
        """How many tokens truncation keeps (operations.kept_prompt_tokens; None: max_length)."""
        return kept_prompt_tokens(self.truncate_prompt_tokens, max_length)


class VllmRequest(Lenient, VllmOptions):
    """A vLLM request with our scoring options."""


def checked(field: str, text: str) -> str:
    """`text`, when it is valid Unicode (else 422 naming the field)."""
    try:
        check_text(field, text)
    except InputError as err:
        raise APIError(422, err.code, err.message, err.field) from None
    return text


def conversation(messages: list[VllmMessage]) -> list[tuple[str, str]]:
    return [(m.role, checked(f"messages[{i}].content", content_text(m.content or "", f"messages[{i}].content")))
            for i, m in enumerate(messages)]


async def input_items(model: RewardModel, body: VllmRequest, entries: list[str | list[int]] | None,
                      messages: list[VllmMessage] | None, add_special_tokens: bool | None) -> list[ScoreInput]:
    """The inputs of a classify or pooling request (truncate_prompt_tokens cuts them when
    they are scored: ScoreJob.keep). `input` texts are read as they are: tokenized with the
    tokenizer's special tokens unless add_special_tokens is false, no pair split and no chat
    template. `messages` ending in the response go through the model's chat template as
    /v1/score's do; any other conversation (a user turn alone, say) is rendered with the
    template as vLLM renders it and scored whole."""
    _given(entries, messages)
    if messages is not None:
        if add_special_tokens:
            raise APIError(422, "invalid_request", "the chat template adds the special tokens; leave it out or false",
                           "add_special_tokens")
        turns = conversation(messages)
        if len(turns) >= 2 and turns[-1][0] == "assistant":
            return [Chat(tuple(turns))]
        return [await asyncio.to_thread(_rendered, model, turns)]
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            checked(f"input[{i}]", entry)
    tokenizer = model.encoder.tokenizer
    specials = add_special_tokens is not False

    def tokenize() -> list[tuple[int, ...]]:
        # a huge text: only the end truncation keeps is tokenized (Encoder.kept_end)
        texts = [(model.encoder.kept_end(e, body.side()) or e) if isinstance(e, str) else e for e in entries]
        return [tuple(tokenizer(e, add_special_tokens=specials, verbose=False)["input_ids"]) if isinstance(e, str)
                else tuple(e) for e in texts]

    return [TokenIds(row) for row in await asyncio.to_thread(tokenize)]


def input_texts(entries: list[str | list[int]] | None, messages: list[VllmMessage] | None) -> list[RuleInput | None]:
    """What a pipeline's rules read of a classify or pooling request: each `input` text as the
    response (token ids carry none), or the conversation's last message after the one before."""
    _given(entries, messages)
    if messages is not None:
        turns = conversation(messages)
        return [RuleInput(turns[-1][1], turns[-2][1] if len(turns) >= 2 else None)] if turns else [None]
    return [RuleInput(entry) if isinstance(entry, str) else None for entry in entries]


def _given(entries: list[str | list[int]] | None, messages: list[VllmMessage] | None) -> None:
    if (entries is None) == (messages is None):
        raise APIError(422, "invalid_request", "give input or messages", "input")
    if messages is None and not entries:
        raise APIError(422, "invalid_request", "input must not be empty", "input")


def _rendered(model: RewardModel, turns: list[tuple[str, str]]) -> TokenIds:
    tokenizer = model.encoder.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise APIError(422, "invalid_request", "a conversation that does not end with an assistant response after "
                       "a prompt turn is rendered with the chat template, and this model has none", "messages")
    try:
        ids = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in turns], tokenize=True,
                                            add_generation_prompt=False)
    except Exception as err:  # noqa: BLE001 - a template refusing a conversation is the caller's 422
        raise APIError(422, "invalid_request", f"the model's chat template refuses this conversation: {err}",
                       "messages") from None
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return TokenIds(tuple(ids))
