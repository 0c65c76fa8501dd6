"""HTTP routes of the scoring API: `POST /v1/score`, the model listing and the health
probes (liveness answers at once; readiness turns true when every model has warmed up)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.core.schemas import (
    Health,
    ModelDetail,
    ModelList,
    ScoreRequest,
    ScoreResponse,
)
from service.core.scoring import score_job, score_response
from service.http.disconnect import unless_disconnected
from service.http.errors import ERROR_RESPONSES

router = APIRouter()


@router.post("/v1/score", response_model=ScoreResponse, response_model_exclude_none=True, responses=ERROR_RESPONSES)
async def score(body: ScoreRequest, request: Request) -> ScoreResponse:
    """Score a batch of items with one model: a score per item, per-dimension scores for
    multi-objective models, step rewards for process models."""
    scored = await unless_disconnected(request, request.app.state.scorer.score(score_job(body)))
    return score_response(scored)


@router.get("/v1/models", response_model=ModelList, response_model_exclude_none=True)
async def list_models(request: Request) -> ModelList:
    """The served models, in OpenAI's shape (`data`, what the OpenAI SDK and vLLM clients
    read) and ours (`models`, with kind, revision, dimensions and status)."""
    return request.app.state.scorer.model_list()


@router.get("/v1/models/{name:path}", response_model=ModelDetail, response_model_exclude_none=True,
            responses=ERROR_RESPONSES)
async def get_model(name: str, request: Request) -> ModelDetail:
    """One model (by its name or an alias) in OpenAI's shape (`id`, `object`, `created`,
    `owned_by`: what the OpenAI SDK's `models.retrieve` reads) and ours beside it."""
    return request.app.state.scorer.model_detail(name)


@router.get("/health/live", response_model=Health)
@router.head("/health/live", include_in_schema=False)
async def live() -> Health:
    return Health(status="live")


@router.get("/health/ready", response_model=Health, responses={503: {"model": Health}})
@router.head("/health/ready", include_in_schema=False)
async def ready(request: Request):
    health = Health.of(request.app.state.registry.statuses)
    if health.status == "ready":
        return health
    return JSONResponse(status_code=503, content=health.model_dump())
