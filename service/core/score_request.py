"""A /v1/score request and response as every transport reads and writes them: the body
validated (so each transport refuses bad input with HTTP's error), the `ScoreJob` it makes,
and the `Scored` it gets back as the protocol's ScoreResponse."""

from __future__ import annotations

import dataclasses

from pydantic import ValidationError

from models.heads import RewardOutput
from service.core.errors import APIError, status_message, validation_error
from service.core.inputs import item_input, rule_input
from service.core.scoring import Scored, ScoreJob
from service.pipelines.values import PipelineOutput
from service.protocol.scoring import (
    ComponentResult,
    FailedItem,
    ItemErrorDetail,
    ItemResult,
    ScoreRequest,
    ScoreResponse,
    TokenRewards,
    Usage,
)

_JOB_OPTIONS = [f.name for f in dataclasses.fields(ScoreJob) if f.name != "inputs"]


def parse_score_request(body: dict) -> ScoreRequest:
    """`body` (a /v1/score JSON body as Python values) validated as HTTP validates it; an
    invalid one raises the APIError HTTP would answer with."""
    try:
        return ScoreRequest.model_validate(body)
    except ValidationError as err:
        raise validation_error(err.errors()) from None


def score_job(body: ScoreRequest, deadline_ms: float | None = None) -> ScoreJob:
    """The job a request with this body makes (every option ScoreJob and the request share
    is carried over), its timeout cut to `deadline_ms` when that is sooner."""
    options = {name: getattr(body, name) for name in _JOB_OPTIONS if name in type(body).model_fields}
    if deadline_ms is not None and (options.get("timeout_ms") is None or deadline_ms < options["timeout_ms"]):
        options["timeout_ms"] = deadline_ms
    references = tuple(getattr(item, "reference", None) for item in body.items)
    return ScoreJob(inputs=[item_input(item) for item in body.items],
                    references=references if any(r is not None for r in references) else None,
                    texts=tuple(rule_input(item) for item in body.items), **options)


def score_response(scored: Scored) -> ScoreResponse:
    return ScoreResponse(
        model=scored.model, revision=scored.revision, kind=scored.kind, normalized=scored.normalized or None,
        results=[failed_item(i, scored.errors[i]) if out is None else item_result(i, out)
                 for i, out in enumerate(scored.outputs)],
        usage=Usage(total_tokens=scored.total_tokens),
    )


def item_result(index: int, out: RewardOutput) -> ItemResult:
    pipeline = out if isinstance(out, PipelineOutput) else None
    dense = out.token_rewards
    return ItemResult(index=index, score=out.score, dimensions=out.dimensions, gating_weights=out.gating_weights,
                      step_rewards=out.step_rewards, num_tokens=out.num_tokens, truncated=out.truncated,
                      token_rewards=dense and TokenRewards(start=dense.start, token_ids=dense.token_ids,
                                                           values=dense.values),
                      cached=out.cached or None,
                      components=pipeline and {name: ComponentResult(value=v.value, status=v.status, message=v.message,
                                                                     spread=v.spread, extras=v.extras)
                                               for name, v in pipeline.components.items()},
                      uncertainty=pipeline and pipeline.uncertainty)


def failed_item(index: int, err: APIError) -> FailedItem:
    return FailedItem(index=index, error=ItemErrorDetail(http_status=err.status, code=err.code,
                                                         message=status_message(err), field=err.field))
