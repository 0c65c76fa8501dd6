"""What can be scored, before and after tokenization."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.protocol.enums import Truncate  # noqa: F401 - the model layer imports it from here


@dataclass(frozen=True)
class TextPair:
    """A prompt and one response to it."""

    prompt: str
    response: str


@dataclass(frozen=True)
class Chat:
    """A conversation whose last message is the assistant response being scored."""

    messages: tuple[tuple[str, str], ...]  # (role, content)


@dataclass(frozen=True)
class TokenIds:
    """Pre-tokenized input, as RL trainers already hold it. `prompt_length` says how many
    leading tokens are the prompt (needed by models that gate on the prompt)."""

    input_ids: tuple[int, ...]
    prompt_length: int | None = None


@dataclass(frozen=True)
class StepsInput:
    """A problem and a solution given as reasoning steps, for process reward models."""

    prompt: str
    steps: tuple[str, ...]


@dataclass(frozen=True)
class RenderedText:
    """A text already rendered for the model, as an RL policy decodes its rollouts: chat
    template applied, special tokens written out. Tokenized as it is, with no special tokens
    added (an encoder, whose input no policy renders, still gets its [CLS] and [SEP]).
    `prompt`, when known, is the text's start that is the prompt."""

    text: str
    prompt: str | None = None


@dataclass(frozen=True)
class PairInput:
    """One ordered comparison for a pairwise model: `first` (response A) against `second`
    (response B), both answering `context`, the conversation before them ((role, content)
    turns; a text prompt is one user turn). Each order of a pair is an input of its own."""

    context: tuple[tuple[str, str], ...]
    first: str
    second: str


ScoreInput = TextPair | Chat | TokenIds | StepsInput | RenderedText | PairInput


@dataclass
class Encoded:
    """One tokenized item, unpadded; the runner pads a batch of these itself."""

    input_ids: list[int]
    token_type_ids: list[int] | None = None
    prompt_length: int | None = None
    truncated: bool = False
    marker_positions: list[int] = field(default_factory=list)
    gate_position: int | None = None  # gating models: where the gating network reads
    adapter: str | None = None  # the LoRA adapter that scores it (models.adapters); None: the base model

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)
