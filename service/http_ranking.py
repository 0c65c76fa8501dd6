"""HTTP routes for ranking: `POST /v1/compare`, `POST /v1/rerank` (Cohere/vLLM-shaped) and
`POST /v1/steps`. Each turns its request into one `ScoreJob` for the scoring core, then
applies the pure functions of `service.ranking` to the outputs."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from models.inputs import Chat, ScoreInput, StepsInput, TextPair, TokenIds
from models.spec import ModelKind, RewardSpec, StepAggregate
from service.errors import APIError
from service.ranking import (
    Aggregation,
    Normalize,
    compare,
    default_aggregate,
    first_below,
    rerank,
    resolve_aggregation,
)
from service.scheduler import Priority
from service.schemas import ErrorBody, Message, ScoreItem, Usage
from service.scoring import ScoreJob, Scored

ERRORS = {status: {"model": ErrorBody} for status in (400, 404, 422, 429, 500, 503, 504)}
router = APIRouter()


class _DropNone(BaseModel):
    """Serialized without its None-valued fields, except those named in `_keep_none`
    (where null means something, like a tie's `winner`)."""

    _keep_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: SerializerFunctionWrapHandler):
        return {k: v for k, v in handler(self).items() if v is not None or k in self._keep_none}


# ---- what is ranked ------------------------------------------------------------------


class Candidate(BaseModel):
    """A response to rank: a string (its text), or an object with exactly one of `text`,
    `steps` (process models) or `input_ids` (the whole tokenized sequence, prompt
    included; `prompt_length` for models that gate on the prompt)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    steps: list[str] | None = Field(None, min_length=1)
    input_ids: list[int] | None = Field(None, min_length=1)
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


# ---- running a job -------------------------------------------------------------------

_ITEM = re.compile(r"^items\[(\d+)\]")


def renamed(err: APIError, name: Callable[[int, str], str], whole: str) -> APIError:
    """`err` with the scoring core's `items[i]...` field (and message) renamed to the
    request's own: `name(i, rest)` for one item, `whole` for the list."""
    field = err.field or ""
    if field == "items":
        err.field = whole
    elif match := _ITEM.match(field):
        index, rest = int(match[1]), field[match.end():]
        err.field = name(index, rest)
        err.message = err.message.replace(match[0], name(index, ""), 1)
    return err


def in_list(list_name: str, shared_messages: bool = False) -> Callable[[int, str], str]:
    """Items named `list_name[i]`; with `shared_messages`, errors in the conversation the
    items share name the request's own `messages`."""
    def name(index: int, rest: str) -> str:
        if shared_messages and rest.startswith(".messages"):
            return rest[1:]
        return f"{list_name}[{index}]{rest}"
    return name


async def run_job(request: Request, job: ScoreJob, name: Callable[[int, str], str], whole: str) -> Scored:
    """The job through the scoring core, cancelled if the client goes away; errors name
    the request's fields."""
    from service.http_api import _unless_disconnected  # late: http_api includes this router

    try:
        return await _unless_disconnected(request, request.app.state.scorer.score(job))
    except APIError as err:
        raise renamed(err, name, whole) from err


def model_spec(request: Request, model: str | None) -> RewardSpec:
    """The spec of the model a request names (404/503 as the scoring core answers)."""
    return request.app.state.registry.get(model).model.spec


def chosen_priority(value: Any) -> Priority | None:
    """Our priority classes; anything else (vLLM's integer priorities) means the default."""
    return value if isinstance(value, Priority) else None


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="model name; default: the server's default model")
    truncate: Literal["left", "right"] | None = Field(None, description="cut inputs longer than max_length")
    aggregate: StepAggregate | None = Field(None, description="process models: how step rewards make the score")
    normalize: Normalize = Field("none", description="'zscore': against the model's reference_stats")
    priority: Priority | None = Field(None, description="'interactive' or 'bulk'; default: the server's")
    timeout_ms: float | None = Field(None, gt=0)

    def job(self, inputs: list[ScoreInput], priority: Priority | None = None) -> ScoreJob:
        return ScoreJob(inputs=inputs, model=self.model, truncate=self.truncate, aggregate=self.aggregate,
                        priority=chosen_priority(self.priority) or priority, timeout_ms=self.timeout_ms,
                        normalize=self.normalize)


# ---- /v1/compare ---------------------------------------------------------------------


class CompareRequest(_Options):
    prompt: str | None = Field(None, description="the prompt the responses answer")
    messages: list[Message] | None = Field(None, min_length=1, description="or: the conversation before the responses")
    responses: list[Candidate] = Field(min_length=2)
    tie_margin: float = Field(0.0, ge=0, description="scores this close to the best tie with it")


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
    pairwise: list[list[float]] = Field(description="pairwise[i][j] = P(i preferred to j) = sigmoid(s_i - s_j)")
    results: list[CompareResult]
    usage: Usage


@router.post("/v1/compare", response_model=CompareResponse, responses=ERRORS)
async def compare_responses(body: CompareRequest, request: Request) -> CompareResponse:
    """Compare two or more responses to one prompt under Bradley–Terry: pairwise
    preference probabilities, each response's probability of being preferred to all the
    others, the winner and, for multi-objective models, the winner per dimension."""
    spec = model_spec(request, body.model)
    inputs = candidate_inputs(spec, body.prompt, body.messages, body.responses)
    scored = await run_job(request, body.job(inputs), in_list("responses", shared_messages=True), "responses")
    result = compare(scored.outputs, body.tie_margin)
    dims = None
    if result.dimensions is not None:
        dims = {name: Verdict(winner=v.winner, tied=v.tied) for name, v in result.dimensions.items()}
    return CompareResponse(
        model=scored.model, revision=scored.revision, kind=scored.kind, normalized=scored.normalized,
        winner=result.overall.winner, tied=result.overall.tied, dimension_winners=dims, pairwise=result.pairwise,
        results=[CompareResult(index=i, score=out.score, win_probability=p, dimensions=out.dimensions,
                               gating_weights=out.gating_weights, step_rewards=out.step_rewards,
                               num_tokens=out.num_tokens, truncated=out.truncated)
                 for i, (out, p) in enumerate(zip(scored.outputs, result.win_probability))],
        usage=Usage(total_tokens=scored.total_tokens),
    )


# ---- /v1/rerank ----------------------------------------------------------------------


class RerankRequest(_Options):
    """Cohere/vLLM rerank shape (`query`, `documents`, `top_n`) plus our options."""

    query: str | None = Field(None, description="the prompt the documents answer")
    messages: list[Message] | None = Field(None, min_length=1, description="or: the conversation before them")
    documents: list[Candidate] = Field(min_length=1, description="strings, {text}, {steps} or {input_ids}")
    top_n: int | None = Field(None, ge=0, description="return the best n; default (or 0): all")
    return_documents: bool = Field(True, description="echo each text document in its result")
    aggregation: Aggregation | None = Field(
        None, description="'model' (the model's score), 'weights' (sum of weights x dimensions) or 'pareto' "
        "(Pareto fronts over the dimensions, then the aggregate); default: 'weights' when weights are given, else 'model'"
    )
    weights: dict[str, float] | None = Field(None, description="multi-objective: weight per dimension (others weigh 0)")


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
    results: list[RerankResult]
    usage: RerankUsage


async def rerank_documents(body: RerankRequest, request: Request) -> RerankResponse:
    spec = model_spec(request, body.model)
    inputs = candidate_inputs(spec, body.query, body.messages, body.documents, prompt_field="query")
    dimensions = spec.multi_objective.dimensions if spec.multi_objective else None
    resolve_aggregation(dimensions, body.aggregation, body.weights)  # refuse before scoring anything
    scored = await run_job(request, body.job(inputs), in_list("documents", shared_messages=True), "documents")
    ranking = rerank(scored.outputs, body.top_n, body.aggregation, body.weights)
    results = []
    for ranked in ranking.results:
        out, doc = scored.outputs[ranked.index], body.documents[ranked.index]
        text = RerankDocument(text=doc.text) if body.return_documents and doc.text is not None else None
        results.append(RerankResult(
            index=ranked.index, relevance_score=ranked.value, document=text, score=out.score,
            dimensions=out.dimensions, gating_weights=out.gating_weights, step_rewards=out.step_rewards,
            pareto_rank=ranked.pareto_rank, num_tokens=out.num_tokens, truncated=out.truncated))
    return RerankResponse(
        id=f"rerank-{uuid.uuid4().hex}", model=scored.model, revision=scored.revision, kind=scored.kind,
        normalized=scored.normalized, aggregation=ranking.aggregation, weights=ranking.weights,
        pareto_front=ranking.pareto_front, results=results, usage=RerankUsage(total_tokens=scored.total_tokens),
    )


@router.post("/v1/rerank", response_model=RerankResponse, responses=ERRORS)
async def rerank_endpoint(body: RerankRequest, request: Request) -> RerankResponse:
    """Order candidate responses to one prompt, best first: by the model's score, by
    caller weights over a multi-objective model's dimensions, or by Pareto fronts."""
    return await rerank_documents(body, request)


# ---- /v1/steps -----------------------------------------------------------------------


class StepsRequest(_Options):
    items: list[ScoreItem] = Field(min_length=1, description="{prompt, steps} or {input_ids}")
    threshold: float = Field(0.5, description="report the first step whose reward is below this")


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


@router.post("/v1/steps", response_model=StepsResponse, responses=ERRORS)
async def score_steps(body: StepsRequest, request: Request) -> StepsResponse:
    """Process rewards per step, their aggregate, and the first step below a threshold."""
    spec = model_spec(request, body.model)
    if spec.kind != ModelKind.process:
        raise APIError(422, "invalid_request", f"/v1/steps needs a process reward model; this one is {spec.kind.value}",
                       "model")
    inputs = [item.to_input() for item in body.items]
    scored = await run_job(request, body.job(inputs), in_list("items"), "items")
    results = []
    for i, (item, out) in enumerate(zip(inputs, scored.outputs)):
        offset = 0
        if out.truncated and body.truncate == "left" and isinstance(item, StepsInput):
            offset = len(item.steps) - len(out.step_rewards)
        below = first_below(out.step_rewards, body.threshold)
        results.append(StepsResult(index=i, score=out.score, step_rewards=out.step_rewards,
                                   first_below=None if below is None else offset + below, step_offset=offset,
                                   num_tokens=out.num_tokens, truncated=out.truncated))
    return StepsResponse(model=scored.model, revision=scored.revision, aggregate=default_aggregate(spec, body.aggregate),
                         threshold=body.threshold, normalized=scored.normalized, results=results,
                         usage=Usage(total_tokens=scored.total_tokens))
