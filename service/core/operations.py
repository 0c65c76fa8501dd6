"""The ranking operations, whichever transport carries them: compare (`/v1/compare`),
rerank (`/v1/rerank`, Cohere/vLLM-shaped) and steps (`/v1/steps`). Each turns its request
into one `ScoreJob` for the scorer, then applies the pure functions of
`service.core.ranking` to the outputs; errors name the request's own fields."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, SerializerFunctionWrapHandler, model_serializer

from models.inputs import ScoreInput, StepsInput
from models.spec import ModelKind, StepAggregate
from service.core.candidates import Candidate, candidate_inputs
from service.core.errors import APIError, in_list
from service.core.normalize import Normalize, default_aggregate
from service.core.ranking import (
    Aggregation,
    compare,
    first_below,
    rerank,
    resolve_aggregation,
)
from service.core.schemas import Message, ScoreItem, Usage
from service.core.scoring import ScoreJob, Scorer
from service.engine.scheduler import Priority


class _DropNone(BaseModel):
    """Serialized without its None-valued fields, except those named in `_keep_none`
    (where null means something, like a tie's `winner`)."""

    _keep_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: SerializerFunctionWrapHandler):
        return {k: v for k, v in handler(self).items() if v is not None or k in self._keep_none}


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


PAIRWISE_DEFAULT_MAX = 64  # responses up to which the pairwise matrix comes unasked
PAIRWISE_MAX = 512  # its largest size when asked for: 262,144 numbers


class CompareRequest(_Options):
    prompt: str | None = Field(None, description="the prompt the responses answer")
    messages: list[Message] | None = Field(None, min_length=1, description="or: the conversation before the responses")
    responses: list[Candidate] = Field(min_length=2)
    tie_margin: float = Field(0.0, ge=0, description="scores this close to the best tie with it")
    pairwise: bool | None = Field(None, description=(
        f"include the pairwise matrix; default: for up to {PAIRWISE_DEFAULT_MAX} responses (at most {PAIRWISE_MAX})"))

    def wants_pairwise(self) -> bool:
        if self.pairwise and len(self.responses) > PAIRWISE_MAX:
            raise APIError(422, "invalid_request", f"the pairwise matrix of {len(self.responses)} responses is too "
                           f"large; it is given for up to {PAIRWISE_MAX}", "pairwise")
        return self.pairwise if self.pairwise is not None else len(self.responses) <= PAIRWISE_DEFAULT_MAX


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


async def compare_responses(scorer: Scorer, body: CompareRequest) -> CompareResponse:
    """The responses scored as one job, then compared (`ranking.compare`)."""
    spec = scorer.spec(body.model)
    pairwise = body.wants_pairwise()  # refuse before scoring anything
    inputs = candidate_inputs(spec, body.prompt, body.messages, body.responses)
    scored = await scorer.score_as(body.job(inputs), in_list("responses", shared_prompt="prompt"), "responses")
    result = compare(scored.outputs, body.tie_margin, with_pairwise=pairwise)
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
    weights: dict[str, FiniteFloat] | None = Field(
        None, description="multi-objective: weight per dimension (others weigh 0)")
    truncate_prompt_tokens: int | None = Field(
        None, ge=-1, description="vLLM's: k cuts each input to k tokens (at most the model's max_length; -1: "
        "max_length), from the side `truncate` names (default left), its leading and closing special tokens kept")

    def job(self, inputs: list[ScoreInput], priority: Priority | None = None) -> ScoreJob:
        job = super().job(inputs, priority)
        return replace(job, truncate=job.truncate or "left") if self.truncate_prompt_tokens is not None else job


def kept_prompt_tokens(k: int | None, max_length: int) -> int | None:
    """vLLM's truncate_prompt_tokens against a model's max_length: the tokens truncation
    keeps (ScoreJob.keep); None for max_length (k not given, or -1). Past max_length, or
    0, is 422."""
    if k is None or k == -1:
        return None
    if k > max_length:
        raise APIError(422, "invalid_request", f"{k} is more than the model's max_length {max_length}",
                       "truncate_prompt_tokens")
    if k == 0:
        raise APIError(422, "invalid_request", "must keep at least one token", "truncate_prompt_tokens")
    return k


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
    results: list[RerankResult]
    usage: RerankUsage


async def rerank_documents(scorer: Scorer, body: RerankRequest) -> RerankResponse:
    """The documents scored as one job, then ranked (`ranking.rerank`); an aggregation the
    model cannot give is refused before anything is scored."""
    runner = scorer.runner(body.model)
    spec = runner.model.spec
    keep = kept_prompt_tokens(body.truncate_prompt_tokens, runner.model.encoder.max_length)
    inputs = candidate_inputs(spec, body.query, body.messages, body.documents, prompt_field="query")
    dimensions = spec.multi_objective.dimensions if spec.multi_objective else None
    resolve_aggregation(dimensions, body.aggregation, body.weights)  # refuse before scoring anything
    job = replace(body.job(inputs), keep=keep)
    scored = await scorer.score_as(job, in_list("documents", shared_prompt="query"), "documents")
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
        pareto_front=ranking.pareto_front, results=results, usage=RerankUsage(prompt_tokens=scored.total_tokens, total_tokens=scored.total_tokens),
    )


# ---- /v1/steps -----------------------------------------------------------------------


class StepsRequest(_Options):
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


async def score_steps(scorer: Scorer, body: StepsRequest) -> StepsResponse:
    """The items scored as one job by a process model; with left truncation, step indices
    count the caller's steps (`step_offset`)."""
    spec = scorer.spec(body.model)
    if spec.kind != ModelKind.process:
        raise APIError(422, "invalid_request", f"/v1/steps needs a process reward model; this one is {spec.kind.value}",
                       "model")
    inputs = [item.to_input() for item in body.items]
    threshold = spec.process.threshold if body.threshold is None else body.threshold
    scored = await scorer.score_as(body.job(inputs), in_list("items"), "items")
    results = []
    for i, (item, out) in enumerate(zip(inputs, scored.outputs)):
        offset = 0
        if out.truncated and body.truncate == "left" and isinstance(item, StepsInput):
            offset = len(item.steps) - len(out.step_rewards)
        below = first_below(out.step_rewards, threshold)
        results.append(StepsResult(index=i, score=out.score, step_rewards=out.step_rewards,
                                   first_below=None if below is None else offset + below, step_offset=offset,
                                   num_tokens=out.num_tokens, truncated=out.truncated))
    return StepsResponse(model=scored.model, revision=scored.revision, aggregate=default_aggregate(spec, body.aggregate),
                         threshold=threshold, normalized=scored.normalized, results=results,
                         usage=Usage(total_tokens=scored.total_tokens))
