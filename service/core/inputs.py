"""The wire's items and candidates as the model layer's inputs: a `/v1/score` item as it
is, and a ranking operation's candidates with the prompt or conversation they answer."""

from __future__ import annotations

import re

from models.inputs import Chat, ScoreInput, StepsInput, TextPair, TokenIds
from models.spec import RewardSpec
from service.core.errors import APIError
from service.pipelines.rules import RuleInput
from service.protocol.enums import ModelKind
from service.protocol.ranking import Candidate
from service.protocol.scoring import ChatItem, Message, ScoreItem, StepsItem, TextItem, TokensItem


def item_input(item: ScoreItem) -> ScoreInput:
    """A validated /v1/score item as the model layer scores it."""
    if isinstance(item, TextItem):
        return TextPair(item.prompt, item.response)
    if isinstance(item, ChatItem):
        return Chat(tuple((m.role, m.content) for m in item.messages))
    if isinstance(item, TokensItem):
        return TokenIds(tuple(item.input_ids), item.prompt_length)
    if isinstance(item, StepsItem):
        return StepsInput(item.prompt, tuple(item.steps))
    raise TypeError(f"not a score item: {type(item).__name__}")


def rule_input(item: ScoreItem) -> RuleInput | None:
    """What a pipeline's rules read of a /v1/score item: the response's text (a process item's
    steps joined by blank lines, a chat's last message after the turn before it) and the
    item's context; None for token ids, which carry no text."""
    context = {"ground_truth": item.ground_truth, "data_source": item.data_source, "extra_info": item.extra_info}
    if isinstance(item, TextItem):
        return RuleInput(item.response, item.prompt, **context)
    if isinstance(item, ChatItem):
        return RuleInput(item.messages[-1].content, item.messages[-2].content, **context)
    if isinstance(item, StepsItem):
        return RuleInput("\n\n".join(item.steps), item.prompt, **context)
    return None


def split_steps(text: str, marker: str) -> tuple[str, ...]:
    """A process model's response text as steps: cut at the model's step marker when the
    text holds it, else at blank lines; whitespace around each step and empty pieces are
    dropped (the server puts the markers back itself)."""
    pieces = text.split(marker) if marker in text else re.split(r"\n\s*\n", text)
    return tuple(piece.strip() for piece in pieces if piece.strip())


def input_for(spec: RewardSpec, item: ScoreInput) -> ScoreInput:
    """`item` as a model of this kind reads it, for a pipeline whose models read differently:
    a solution's steps joined by blank lines for a model that reads a response, a response cut
    into steps (as `split_steps` cuts) for a process model."""
    is_process = spec.kind == ModelKind.process
    if isinstance(item, StepsInput) and not is_process:
        return TextPair(item.prompt, "\n\n".join(item.steps))
    if isinstance(item, TextPair) and is_process:
        return StepsInput(item.prompt, split_steps(item.response, spec.process.marker))
    return item


def candidate_inputs(spec: RewardSpec, prompt: str | None, messages: list[Message] | None,
                     candidates: list[Candidate], prompt_field: str = "prompt") -> list[ScoreInput]:
    """Each candidate as the model layer scores it: with `prompt` a text pair (process
    models: the prompt and the response's steps), with `messages` (the conversation before
    the response) a chat ending in the response; `input_ids` as they are."""
    if prompt is not None and messages is not None:
        raise APIError(422, "invalid_request", f"give {prompt_field} or messages, not both", "messages")
    turns = tuple((m.role, m.content) for m in messages) if messages is not None else None
    is_process = spec.kind == ModelKind.process
    inputs: list[ScoreInput] = []
    for candidate in candidates:
        if candidate.input_ids is not None:
            inputs.append(TokenIds(tuple(candidate.input_ids), candidate.prompt_length))
            continue
        if prompt is None and turns is None:
            raise APIError(422, "invalid_request", f"text responses need {prompt_field} (or messages)", prompt_field)
        if candidate.steps is not None or is_process:
            if turns is not None:
                raise APIError(422, "invalid_request", "steps are scored against a text prompt, not messages",
                               "messages")
            steps = candidate.steps if candidate.steps is not None else split_steps(candidate.text, spec.process.marker)
            inputs.append(StepsInput(prompt, tuple(steps)))
        elif turns is not None:
            inputs.append(Chat(turns + (("assistant", candidate.text),)))
        else:
            inputs.append(TextPair(prompt, candidate.text))
    return inputs
