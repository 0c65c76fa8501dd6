"""HTTP routes of the scoring API: `POST /v1/score` (our body, or vLLM's, answered as vLLM's
/score answers it), the model listing and the health probes (liveness answers at once;
readiness turns true when every model has warmed up)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import Discriminator, Tag

from service.compat import vllm
from service.core.score_request import score_job, score_response
from service.http.disconnect import unless_disconnected
from service.http.errors import ERROR_RESPONSES
from service.protocol.catalog import Health, ModelDetail, ModelList
from service.protocol.scoring import BODY_FORMS, ScoreRequest, ScoreResponse

router = APIRouter()
OWN_FORM, VLLM_FORM = BODY_FORMS
ScoreBody = Annotated[
    Annotated[ScoreRequest, Tag(OWN_FORM)] | Annotated[vllm.VllmScoreRequest, Tag(VLLM_FORM)],
    Discriminator(lambda body: VLLM_FORM if vllm.is_vllm_score(body) else OWN_FORM),
]


@router.post("/v1/score", response_model=ScoreResponse | vllm.VllmScoreResponse, response_model_exclude_none=True,
             responses=ERROR_RESPONSES)
async def score(body: ScoreBody, request: Request):
    """Score a batch of items with one model: a score per item, per-dimension scores for
    multi-objective models, step rewards for process models. A body in vLLM's form (a pair
    of queries + documents, queries + items, data_1 + data_2 or text_1 + text_2: vLLM
    clients post to /v1/score) is vLLM's score, answered in vLLM's shape exactly as /score."""
    scorer = request.app.state.scorer
    if isinstance(body, vllm.VllmScoreRequest):
        answer = await unless_disconnected(request, vllm.score(scorer, body))
        return JSONResponse(answer.model_dump(mode="json"))  # all of it, as /score: vLLM writes its nulls
    return score_response(await unless_disconnected(request, scorer.score(score_job(body))))


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
    health = Health.of(request.app.state.scorer.statuses)
    if health.status == "ready":
        return health
    return JSONResponse(status_code=503, content=health.model_dump())
