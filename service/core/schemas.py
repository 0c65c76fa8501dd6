"""Request and response bodies of the scoring API. HTTP validates JSON with them (and its
OpenAPI schema is generated from them); gRPC and KServe v2 requests are validated by the
same models, so an input gets the same error by every protocol."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictInt, Tag

from models.heads import RewardOutput
from models.inputs import Chat, ScoreInput, StepsInput, TextPair, TokenIds
from models.reward_model import ModelInfo
from models.spec import ModelKind, StepAggregate
from service.engine.cache import CacheMode
from service.engine.scheduler import Priority


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextItem(_Body):
    """A prompt and the response to score."""

    prompt: str
    response: str

    def to_input(self) -> ScoreInput:
        return TextPair(self.prompt, self.response)


class Message(_Body):
    role: str
    content: str


class ChatItem(_Body):
    """A conversation ending with the assistant response to score; rendered with the
    model's chat template when it has one."""

    messages: list[Message] = Field(min_length=2)

    def to_input(self) -> ScoreInput:
        return Chat(tuple((m.role, m.content) for m in self.messages))


class TokensItem(_Body):
    """Pre-tokenized input. `prompt_length` (leading prompt tokens) is needed by models
    that gate on the prompt."""

    input_ids: list[StrictInt] = Field(min_length=1, description="token ids (integers; true is not 1)")
    prompt_length: int | None = Field(None, ge=1)

    def to_input(self) -> ScoreInput:
        return TokenIds(tuple(self.input_ids), self.prompt_length)


class StepsItem(_Body):
    """A problem and its solution as reasoning steps, for process reward models; the
    server inserts the model's step markers itself."""

    prompt: str
    steps: list[str] = Field(min_length=1)

    def to_input(self) -> ScoreInput:
        return StepsInput(self.prompt, tuple(self.steps))


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
    Annotated[TextItem, Tag("text")] | Annotated[ChatItem, Tag("chat")] | Annotated[TokensItem, Tag("tokens")] | Annotated[StepsItem, Tag("steps")],
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


class ScoreRequest(_Body):
    model: str | None = Field(None, description="model name; default: the server's default model")
    items: list[ScoreItem] = Field(min_length=1)
    truncate: Literal["left", "right"] | None = Field(
        None, description="cut inputs longer than the model's max_length; default: reject them"
    )
    aggregate: StepAggregate | None = Field(None, description="process models: how step rewards make the score")
    priority: Priority | None = Field(
        None, description="'interactive' (latency first) or 'bulk' (throughput first); default: the server's"
    )
    timeout_ms: float | None = Field(None, gt=0, description="give up on items not scored within this time")
    normalize: Literal["none", "zscore"] = Field(
        "none", description="'zscore': score and dimensions against the model's reference_stats"
    )
    cache: CacheMode = Field(CacheMode.use, description="'use', 'refresh' (recompute and overwrite) or 'bypass'")
    on_item_error: Literal["request", "item"] = Field("request", description=(
        "'request': an item that cannot be scored fails the request; 'item': it gets its own error in `results` "
        "and the other items their scores"))


class ItemResult(BaseModel):
    index: int
    score: float = Field(description="the aggregate reward")
    dimensions: dict[str, float] | None = Field(None, description="multi-objective: score per named dimension")
    gating_weights: list[float] | None = Field(None, description="gated multi-objective: the prompt's weights")
    step_rewards: list[float] | None = Field(None, description="process: P(step is good) per step")
    num_tokens: int
    truncated: bool
    cached: bool | None = Field(None, description="true when served from the result cache (else absent)")

    @classmethod
    def from_output(cls, index: int, out: RewardOutput) -> ItemResult:
        return cls(index=index, score=out.score, dimensions=out.dimensions, gating_weights=out.gating_weights,
                   step_rewards=out.step_rewards, num_tokens=out.num_tokens, truncated=out.truncated,
                   cached=out.cached or None)


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
    results: list[ItemResult | FailedItem] = Field(description="per item in order; FailedItem only with on_item_error 'item'")
    usage: Usage


class ModelCard(BaseModel):
    """A served model; everything but name and status is known once it has loaded."""

    name: str
    status: Literal["loading", "ready", "failed"]
    kind: ModelKind | None = None
    revision: str | None = Field(None, description="sha256 over weights, tokenizer, config, head and spec")
    max_length: int | None = None
    architecture: str | None = None
    dimensions: list[str] | None = None
    step_aggregate: StepAggregate | None = None
    device: str | None = None
    dtype: str | None = None
    error: str | None = Field(None, description="why a failed model failed to load")

    @classmethod
    def build(cls, name: str, status: str, info: ModelInfo | None, error: str | None = None) -> ModelCard:
        fields = dict(info.__dict__) if info else {"name": name}
        return cls(status=status, error=error, **fields)


class ModelObject(BaseModel):
    """A model as OpenAI's and vLLM's `GET /v1/models` list it (one per name it answers to)."""

    id: str = Field(description="a name requests may give: the model's name or one of its aliases")
    object: Literal["model"] = "model"
    created: int = Field(description="when the server started (Unix seconds)")
    owned_by: str = "rewardserve"
    root: str = Field(description="the model's configured path")
    parent: str | None = Field(None, description="for an alias: the model's name")
    max_model_len: int | None = Field(None, description="the model's max_length, once it has loaded")


class ModelDetail(ModelObject, ModelCard):
    """One model as OpenAI's `GET /v1/models/{model}` answers it (what the OpenAI SDK's
    `models.retrieve` reads), with our card beside it."""


class ModelList(BaseModel):
    """Both listings: OpenAI/vLLM's (`object`, `data`) and ours, richer (`models`)."""

    object: Literal["list"] = "list"
    data: list[ModelObject] = Field(default_factory=list)
    models: list[ModelCard]


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["live", "ready", "loading", "failed"]
    models: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def of(cls, models: dict[str, str]) -> Health:
        """Readiness from each model's status: ready when all are, failed when one failed."""
        statuses = set(models.values())
        return cls(status="ready" if statuses <= {"ready"} else "failed" if "failed" in statuses else "loading",
                   models=models)
