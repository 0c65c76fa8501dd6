"""The ranking operations' bodies: `/v1/compare`, `/v1/rerank` (Cohere/vLLM-shaped) and
`/v1/steps`, and the candidates they rank."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    Field,
    FiniteFloat,
    SerializerFunctionWrapHandler,
    StrictInt,
    model_serializer,
    model_validator,
)

from service.protocol.enums import Aggregation, ModelKind, Normalize, Priority, StepAggregate, Truncate
from service.protocol.scoring import Body, Message, ScoreItem, Usage

PAIRWISE_DEFAULT_MAX = 64  # responses up to which the pairwise matrix comes unasked
PAIRWISE_MAX = 512  # its largest size when asked for: 262,144 numbers


class _DropNone(BaseModel):
    """Serialized without its None-valued fields, except those named in `_keep_none`
    (where null means something, like a tie's `winner`)."""

    _keep_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: SerializerFunctionWrapHandler):
        return {k: v for k, v in handler(self).items() if v is not None or k in self._keep_none}


class Candidate(Body):
    """A response to rank: a string (its text), or an object with exactly one of `text`,
    `steps` (process models) or `input_ids` (the whole tokenized sequence, prompt
    included; `prompt_length` for models that gate on the prompt)."""

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


class RankingOptions(Body):
    """The scoring options every ranking operation takes."""

    model: str | None = Field(None, description="model name; default: the server's default model")
    truncate: Truncate | None = Field(None, description="cut inputs longer than max_length")
    aggregate: StepAggregate | None = Field(None, description="process models: how step rewards make the score")
    normalize: Normalize = Field("none", description="'zscore': against the model's reference_stats")
    priority: Priority | None = Field(None, description="'interactive' or 'bulk'; default: the server's")
    timeout_ms: float | None = Field(None, gt=0)
    adapter: str | None = Field(None, description=(
        "a LoRA adapter of the model (its card lists them, `adapters`); default: the base model"))


# ---- /v1/compare ---------------------------------------------------------------------


class CompareRequest(RankingOptions):
    prompt: str | None = Field(None, description="the prompt the responses answer")
    messages: list[Message] | None = Field(None, min_length=1, description="or: the conversation before the responses")
    responses: list[Candidate] = Field(min_length=2)
    tie_margin: float = Field(0.0, ge=0, description="scores this close to the best tie with it")
    pairwise: bool | None = Field(None, description=(
        f"include the pairwise matrix; default: for up to {PAIRWISE_DEFAULT_MAX} responses (at most {PAIRWISE_MAX})"))


class Verdict(BaseModel):
    winner: int | None = Field(description="index of the best response; null on a tie")
    tied: list[int] = Field(description="on a tie, the indices sharing the top; else empty")


class CompareResult(_DropNone):
    index: int
    score: float = Field(description="the score compared (a z-score with normalize='zscore')")
    win_probability: float = Field(description="P(preferred to all the others): softmax over the scores")
    dimensions: dict[str, float] | None = None
    gating_weights: list[float] | None = None
    step_rewards: list[float] | None = None
    num_tokens: int
    truncated: bool


class CompareResponse(_DropNone):
    _keep_none = frozenset({"winner"})

    model: str
    revision: str
    kind: ModelKind
    normalized: bool
    winner: int | None = Field(description="index of the best response; null on a tie")
    tied: list[int] = Field(description="on a tie, the indices sharing the top score; else empty")
    dimension_winners: dict[str, Verdict] | None = Field(None, description="multi-objective: the winner per dimension")
    pairwise: list[list[float]] | None = Field(
        None, description="pairwise[i][j] = P(i preferred to j) = sigmoid(s_i - s_j); absent unless asked past "
        f"{PAIRWISE_DEFAULT_MAX} responses")
    results: list[CompareResult]
    usage: Usage


# ---- /v1/rerank ----------------------------------------------------------------------


class RerankRequest(RankingOptions):
    """Cohere/vLLM rerank shape (`query`, `documents`, `top_n`) plus our options."""

    query: str | None = Field(None, description="the prompt the documents answer")
    messages: list[Message] | None = Field(None, min_length=1, description="or: the conversation before them")
    documents: list[Candidate] = Field(min_length=1, description="strings, {text}, {steps} or {input_ids}")
    top_n: int | None = Field(None, ge=0, description="return the best n; default (or 0): all")
    return_documents: bool = Field(True, description="echo each text document in its result")
    aggregation: Aggregation | None = Field(
        None,
        description="'model' (the model's score), 'weights' (sum of weights x dimensions) or 'pareto' "
        "(Pareto fronts over the dimensions, then the aggregate); default: 'weights' when weights are given, "
        "else 'model'",
    )
    weights: dict[str, FiniteFloat] | None = Field(
        None, description="multi-objective: weight per dimension (others weigh 0)")
    truncate_prompt_tokens: int | None = Field(
        None, ge=-1, description="vLLM's: k cuts each input to k tokens (at most the model's max_length; -1: "
        "max_length), from the side `truncate` names (default left), its leading and closing special tokens kept")
    schedule: Literal["auto", "all_pairs", "knockout", "swiss"] | None = Field(None, description=(
        "pairwise models: which pairs are compared: every pair, a knockout (n - 1 pairs; with top_n 1, best-of-n) "
        "or Swiss rounds; default 'auto': every pair up to 8 documents, else Swiss"))
    rounds: int | None = Field(None, ge=1, le=64, description="pairwise models, schedule 'swiss': rounds; "
                               "default ceil(log2 n)")


class RerankDocument(BaseModel):
    text: str


class RerankResult(_DropNone):
    index: int = Field(description="the document's position in the request")
    relevance_score: float = Field(description="the aggregate the ranking is by")
    document: RerankDocument | None = None
    score: float = Field(description="the model's score (a z-score with normalize='zscore')")
    dimensions: dict[str, float] | None = None
    gating_weights: list[float] | None = None
    step_rewards: list[float] | None = None
    pareto_rank: int | None = Field(None, description="pareto: 0 on the non-dominated front, 1 on the next, ...")
    num_tokens: int
    truncated: bool


class RerankUsage(BaseModel):
    prompt_tokens: int = Field(description="the same as total_tokens (vLLM reports both)")
    total_tokens: int


class RerankResponse(_DropNone):
    id: str
    model: str
    revision: str
    kind: ModelKind
    normalized: bool
    aggregation: Aggregation
    weights: dict[str, float] | None = None
    pareto_front: list[int] | None = Field(None, description="pareto: indices of the documents on the first front")
    schedule: str | None = Field(None, description="pairwise models: the schedule the documents were compared on")
    comparisons: int | None = Field(None, description="pairwise models: the pairs compared (each read in both orders)")
    results: list[RerankResult]
    usage: RerankUsage


# ---- /v1/steps -----------------------------------------------------------------------


class StepsRequest(RankingOptions):
    items: list[ScoreItem] = Field(min_length=1, description="{prompt, steps} or {input_ids}")
    threshold: FiniteFloat | None = Field(None, description=(
        "report the first step whose reward is below this; default: the model's calibrated threshold "
        "(its spec's process.threshold, 0.5 unless set)"))


class StepsResult(BaseModel):
    index: int
    score: float = Field(description="the step rewards' aggregate (a z-score with normalize='zscore')")
    step_rewards: list[float]
    first_below: int | None = Field(description="index of the first step with reward < threshold; null if none")
    step_offset: int = Field(description="index of the caller's step the first reward belongs to (left truncation)")
    num_tokens: int
    truncated: bool


class StepsResponse(BaseModel):
    model: str
    revision: str
    aggregate: StepAggregate
    threshold: float
    normalized: bool
    results: list[StepsResult]
    usage: Usage
