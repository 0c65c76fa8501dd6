"""What the ranking operations rank: a candidate response (a string, or one of text, steps
or token ids) and how a list of them, with the prompt or conversation they answer,
becomes the model layer's inputs."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from models.inputs import Chat, ScoreInput, StepsInput, TextPair, TokenIds
from models.spec import ModelKind, RewardSpec
from service.core.errors import APIError
from service.core.schemas import Message


class Candidate(BaseModel):
    """A response to rank: a string (its text), or an object with exactly one of `text`,
    `steps` (process models) or `input_ids` (the whole tokenized sequence, prompt
    included; `prompt_length` for models that gate on the prompt)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    steps: list[str] | None = Field(None, min_length=1)
    input_ids: list[StrictInt] | None = Field(None, min_length=1)
    prompt_length: int | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"text": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_form(self) -> Candidate:
        given = [name for name in ("text", "steps", "input_ids") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give a string, or an object with exactly one of text, steps, input_ids")
        if self.prompt_length is not None and self.input_ids is None:
            raise ValueError("prompt_length goes with input_ids")
        return self


def split_steps(text: str, marker: str) -> tuple[str, ...]:
    """A process model's response text as steps: cut at the model's step marker when the
    text holds it, else at blank lines; whitespace around each step and empty pieces are
    dropped (the server puts the markers back itself)."""
    pieces = text.split(marker) if marker in text else re.split(r"\n\s*\n", text)
    return tuple(piece.strip() for piece in pieces if piece.strip())


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
