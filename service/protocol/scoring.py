"""`/v1/score`'s request and response bodies (and rewardserve.v1's Score, which gRPC
validates with the same models, so an input gets the same error by every protocol)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictInt, Tag

from service.protocol.enums import (
    CacheMode,
    ModelKind,
    Normalize,
    OnItemError,
    PairwiseMode,
    Priority,
    StepAggregate,
    Truncate,
)


class Body(BaseModel):
    """A request body: unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


class Context(Body):
    """What a pipeline's verifiable rules and user functions read beside the text (veRL's
    reward function arguments); models ignore it."""

    ground_truth: Any = Field(None, description="the reference answer (OpenRLHF's `labels`), any JSON value")
    data_source: str | None = Field(None, description="the data set the item comes from (veRL's data_source)")
    extra_info: dict[str, Any] | None = Field(None, description="anything else a user function reads")


REFERENCE = Field(None, description=(
    "pairwise models, pairwise_mode 'vs_reference': the response this one is compared with"))


class TextItem(Context):
    """A prompt and the response to score."""

    prompt: str
    response: str
    reference: str | None = REFERENCE


class Message(Body):
    role: str
    content: str


class ChatItem(Context):
    """A conversation ending with the assistant response to score; rendered with the
    model's chat template when it has one."""

    messages: list[Message] = Field(min_length=2)
    reference: str | None = REFERENCE


class TokensItem(Context):
    """Pre-tokenized input. `prompt_length` (leading prompt tokens) is needed by models
    that gate on the prompt."""

    input_ids: list[StrictInt] = Field(min_length=1, description="token ids (integers; true is not 1)")
    prompt_length: int | None = Field(None, ge=1)


class StepsItem(Context):
    """A problem and its solution as reasoning steps, for process reward models; the
    server inserts the model's step markers itself."""

    prompt: str
    steps: list[str] = Field(min_length=1)


def _item_form(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        keys = value.__dict__
    elif isinstance(value, dict):
        keys = value
    else:  # not an object: no form fits, and validation reports it on the item
        return None
    for key, form in (("messages", "chat"), ("input_ids", "tokens"), ("steps", "steps")):
        if key in keys:
            return form
    return "text"


ScoreItem = Annotated[
    Annotated[TextItem, Tag("text")]
    | Annotated[ChatItem, Tag("chat")]
    | Annotated[TokensItem, Tag("tokens")]
    | Annotated[StepsItem, Tag("steps")],
    Discriminator(
        _item_form,
        custom_error_type="invalid_item",
        custom_error_message="an item must be an object: {prompt, response}, {messages}, {input_ids} "
        "or {prompt, steps}",
    ),
]
ITEM_FORMS = ("text", "chat", "tokens", "steps")
# /v1/score's body forms, ours and vLLM's (service.http.scoring): validation puts the form's
# tag first in an error's location.
BODY_FORMS = ("rewardserve", "vllm")


class ScoreRequest(Body):
    model: str | None = Field(None, description="model name; default: the server's default model")
    items: list[ScoreItem] = Field(min_length=1)
    truncate: Truncate | None = Field(
        None, description="cut inputs longer than the model's max_length; default: reject them"
    )
    aggregate: StepAggregate | None = Field(None, description="process models: how step rewards make the score")
    priority: Priority | None = Field(
        None, description="'interactive' (latency first) or 'bulk' (throughput first); default: the server's"
    )
    timeout_ms: float | None = Field(None, gt=0, description="give up on items not scored within this time")
    normalize: Normalize = Field(
        "none", description="'zscore': score and dimensions against the model's reference_stats"
    )
    cache: CacheMode = Field(CacheMode.use, description="'use', 'refresh' (recompute and overwrite) or 'bypass'")
    on_item_error: OnItemError = Field("request", description=(
        "'request': an item that cannot be scored fails the request; 'item': it gets its own error in `results` "
        "and the other items their scores"))
    pairwise_mode: PairwiseMode | None = Field(None, description=(
        "pairwise models: 'vs_reference', each score is P(response > the item's reference); 'group', each score is "
        "the item's mean P(item > other) over the other items with its prompt; default: the model's score_mode"))
    adapter: str | None = Field(None, description=(
        "a LoRA adapter of the model (its card lists them, `adapters`); default: the base model"))
    deterministic: bool | None = Field(None, description=(
        "true: every item is scored alone, so its score is the same bits whatever its batch-mates and batch "
        "size (slower); default: the model's `deterministic`"))
    token_rewards: bool = Field(False, description=(
        "implicit models: also return each response token's reward (`token_rewards` in each result), the terms "
        "the score reduces; not with normalize"))


class ComponentResult(BaseModel):
    """One pipeline component's value for an item, and whether it was computed."""

    value: float | None = Field(description="after its transforms; under on_component_error 'default' a failed "
                                "component's default")
    status: Literal["ok", "timeout", "error"]
    message: str | None = Field(None, description="why it is not ok")
    spread: float | None = Field(None, description="an ensemble's standard deviation across its models")
    extras: dict[str, float] | None = Field(None, description="a user function's other numbers (a dict's keys)")


class TokenRewards(BaseModel):
    """An implicit model's reward of each response token (asked by `token_rewards: true`)."""

    start: int = Field(description="the response's first token's position among the item's tokens (its prompt "
                       "length): the reward values[i] is of the item's token start + i")
    token_ids: list[int] = Field(description="the response's tokens, in order")
    values: list[float] = Field(description="each token's reward: beta * (log pi - log pi_ref), or log pi without "
                                "a reference; the score is their sum (avg: their mean, norm: minus their L2 norm)")


class ItemResult(BaseModel):
    index: int
    score: float = Field(description="the aggregate reward")
    dimensions: dict[str, float] | None = Field(None, description="multi-objective: score per named dimension")
    gating_weights: list[float] | None = Field(None, description="gated multi-objective: the prompt's weights")
    step_rewards: list[float] | None = Field(None, description="process: P(step is good) per step")
    token_rewards: TokenRewards | None = Field(None, description="implicit, when asked: each response token's reward")
    num_tokens: int
    truncated: bool
    cached: bool | None = Field(None, description="true when served from the result cache (else absent)")
    components: dict[str, ComponentResult] | None = Field(None, description="pipelines: every component's value")
    uncertainty: float | None = Field(None, description=(
        "pipelines with ensembles: the spread of the reward (the weighted ensemble spreads, in quadrature)"))


class ItemErrorDetail(BaseModel):
    """Why one item was not scored: what a request of that item alone would have got."""

    http_status: int = Field(description="422 bad input, 504 deadline passed, 500 the model failed on it")
    code: str
    message: str
    field: str | None = None


class FailedItem(BaseModel):
    """An item answered with an error instead of a score (on_item_error 'item')."""

    index: int
    error: ItemErrorDetail


class Usage(BaseModel):
    total_tokens: int


class ScoreResponse(BaseModel):
    model: str
    revision: str
    kind: ModelKind
    normalized: bool | None = Field(None, description="true when scores are z-scores (else absent)")
    results: list[ItemResult | FailedItem] = Field(
        description="per item in order; FailedItem only with on_item_error 'item'"
    )
    usage: Usage
