"""HTTP routes of the ranking operations: `POST /v1/compare`, `POST /v1/rerank` and
`POST /v1/steps` (service.core.operations; their bodies in service.protocol.ranking)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.core import operations
from service.http.disconnect import unless_disconnected
from service.http.errors import ERROR_RESPONSES
from service.protocol.ranking import (
    CompareRequest,
    CompareResponse,
    RerankRequest,
    RerankResponse,
    StepsRequest,
    StepsResponse,
)

router = APIRouter()


@router.post("/v1/compare", response_model=CompareResponse, responses=ERROR_RESPONSES)
async def compare(body: CompareRequest, request: Request) -> CompareResponse:
    """Compare two or more responses to one prompt under Bradley–Terry: pairwise
    preference probabilities, each response's probability of being preferred to all the
    others, the winner and, for multi-objective models, the winner per dimension."""
    return await unless_disconnected(request, operations.compare_responses(request.app.state.scorer, body))


@router.post("/v1/rerank", response_model=RerankResponse, responses=ERROR_RESPONSES)
async def rerank(body: RerankRequest, request: Request) -> RerankResponse:
    """Order candidate responses to one prompt, best first: by the model's score, by
    caller weights over a multi-objective model's dimensions, or by Pareto fronts."""
    return await unless_disconnected(request, operations.rerank_documents(request.app.state.scorer, body))


@router.post("/v1/steps", response_model=StepsResponse, responses=ERROR_RESPONSES)
async def steps(body: StepsRequest, request: Request) -> StepsResponse:
    """Process rewards per step, their aggregate, and the first step below a threshold."""
    return await unless_disconnected(request, operations.score_steps(request.app.state.scorer, body))
