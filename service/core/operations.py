"""The ranking operations, whichever transport carries them: compare (`/v1/compare`),
rerank (`/v1/rerank`, Cohere/vLLM-shaped) and steps (`/v1/steps`). Each turns its request
(service.protocol.ranking) into one `ScoreJob` for the scorer, then applies the pure
functions of `service.core.ranking` to the outputs; errors name the request's own fields.
Pairwise models compare and rerank by their pairs instead (service.core.pairwise_ranking)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from models.inputs import ScoreInput, StepsInput
from service.core.errors import APIError, in_list
from service.core.inputs import candidate_inputs, item_input
from service.core.normalize import default_aggregate
from service.core.pairwise import PairJob
from service.core.pairwise_ranking import compare_pairwise, rerank_pairwise
from service.core.ranking import compare, first_below, rerank, resolve_aggregation
from service.core.scoring import ScoreJob, Scorer
from service.protocol.enums import ModelKind, Priority
from service.protocol.ranking import (
    PAIRWISE_DEFAULT_MAX,
    PAIRWISE_MAX,
    CompareRequest,
    CompareResponse,
    CompareResult,
    RankingOptions,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    StepsRequest,
    StepsResponse,
    StepsResult,
    Verdict,
)
from service.protocol.scoring import Usage


def chosen_priority(value: Any) -> Priority | None:
    """Our priority classes; anything else (vLLM's integer priorities) means the default."""
    return value if isinstance(value, Priority) else None


def ranking_job(body: RankingOptions, inputs: list[ScoreInput]) -> ScoreJob:
    """The job a ranking request makes of its candidates' inputs."""
    return ScoreJob(inputs=inputs, model=body.model, truncate=body.truncate, aggregate=body.aggregate,
                    priority=chosen_priority(body.priority), timeout_ms=body.timeout_ms, normalize=body.normalize,
                    adapter=body.adapter)


def pair_job(body: RankingOptions) -> PairJob:
    """The options a ranking request compares pairs under (a pairwise model's)."""
    return PairJob(model=body.model, truncate=body.truncate, priority=chosen_priority(body.priority),
                   timeout_ms=body.timeout_ms, adapter=body.adapter)


# ---- /v1/compare ---------------------------------------------------------------------


def wants_pairwise(body: CompareRequest) -> bool:
    """Whether the answer carries the pairwise matrix: as asked, else for up to
    PAIRWISE_DEFAULT_MAX responses; 422 when asked past PAIRWISE_MAX."""
    if body.pairwise and len(body.responses) > PAIRWISE_MAX:
        raise APIError(422, "invalid_request", f"the pairwise matrix of {len(body.responses)} responses is too "
                       f"large; it is given for up to {PAIRWISE_MAX}", "pairwise")
    return body.pairwise if body.pairwise is not None else len(body.responses) <= PAIRWISE_DEFAULT_MAX


async def compare_responses(scorer: Scorer, body: CompareRequest) -> CompareResponse:
    """The responses scored as one job, then compared (`ranking.compare`)."""
    spec = scorer.spec(body.model)
    if spec.kind == ModelKind.pairwise:
        return await compare_pairwise(scorer, body, pair_job(body))
    pairwise = wants_pairwise(body)  # refuse before scoring anything
    inputs = candidate_inputs(spec, body.prompt, body.messages, body.responses)
    scored = await scorer.score_as(ranking_job(body, inputs), in_list("responses", shared_prompt="prompt"), "responses")
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


async def rerank_documents(scorer: Scorer, body: RerankRequest) -> RerankResponse:
    """The documents scored as one job, then ranked (`ranking.rerank`); an aggregation the
    model cannot give is refused before anything is scored."""
    runner = scorer.runner(body.model)
    spec = runner.model.spec
    if spec.kind == ModelKind.pairwise:
        return await rerank_pairwise(scorer, body, pair_job(body))
    for name in ("schedule", "rounds"):
        if getattr(body, name) is not None:
            raise APIError(422, "invalid_request", f"{name} applies to pairwise models; {runner.name!r} is "
                           f"{spec.kind.value}", name)
    keep = kept_prompt_tokens(body.truncate_prompt_tokens, runner.model.encoder.max_length)
    inputs = candidate_inputs(spec, body.query, body.messages, body.documents, prompt_field="query")
    dimensions = spec.multi_objective.dimensions if spec.multi_objective else None
    resolve_aggregation(dimensions, body.aggregation, body.weights)  # refuse before scoring anything
    job = replace(ranking_job(body, inputs), keep=keep)
    if body.truncate_prompt_tokens is not None:  # vLLM's: it cuts, from the left unless `truncate` says
        job = replace(job, truncate=job.truncate or "left")
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
        id=f"rerank-{uuid.uuid4().hex}",
        model=scored.model,
        revision=scored.revision,
        kind=scored.kind,
        normalized=scored.normalized,
        aggregation=ranking.aggregation,
        weights=ranking.weights,
        pareto_front=ranking.pareto_front,
        results=results,
        usage=RerankUsage(prompt_tokens=scored.total_tokens, total_tokens=scored.total_tokens),
    )


# ---- /v1/steps -----------------------------------------------------------------------


async def score_steps(scorer: Scorer, body: StepsRequest) -> StepsResponse:
    """The items scored as one job by a process model; with left truncation, step indices
    count the caller's steps (`step_offset`)."""
    spec = scorer.spec(body.model)
    if spec.kind != ModelKind.process:
        raise APIError(422, "invalid_request", f"/v1/steps needs a process reward model; this one is {spec.kind.value}",
                       "model")
    inputs = [item_input(item) for item in body.items]
    threshold = spec.process.threshold if body.threshold is None else body.threshold
    scored = await scorer.score_as(ranking_job(body, inputs), in_list("items"), "items")
    results = []
    for i, (item, out) in enumerate(zip(inputs, scored.outputs)):
        offset = 0
        if out.truncated and body.truncate == "left" and isinstance(item, StepsInput):
            offset = len(item.steps) - len(out.step_rewards)
        below = first_below(out.step_rewards, threshold)
        results.append(StepsResult(index=i, score=out.score, step_rewards=out.step_rewards,
                                   first_below=None if below is None else offset + below, step_offset=offset,
                                   num_tokens=out.num_tokens, truncated=out.truncated))
    return StepsResponse(
        model=scored.model,
        revision=scored.revision,
        aggregate=default_aggregate(spec, body.aggregate),
        threshold=threshold,
        normalized=scored.normalized,
        results=results,
        usage=Usage(total_tokens=scored.total_tokens),
    )
