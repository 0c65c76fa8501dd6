"""HTTP routes of the compatibility APIs, so clients written for other servers work
unchanged (service.compat):

- OpenRLHF's remote reward model: `POST /get_reward` (`--remote_rm_url http://HOST:PORT/get_reward`).
- vLLM's pooling API, at its unprefixed paths: `/pooling`, `/classify`, `/score`, `/rerank`
  (also `/v2/rerank`, Cohere's path), and its `/generative_scoring` (by label-token judges);
  our own `/v1/score` (which answers a body in vLLM's form as `/score`: service.http.scoring)
  and `/v1/rerank` keep our shapes.
"""

from __future__ import annotations

from inspect import getdoc
from typing import Literal

from fastapi import APIRouter, Query, Request

from service.compat import openrlhf, vllm, vllm_generative
from service.http.disconnect import unless_disconnected
from service.http.errors import ERROR_RESPONSES
from service.protocol.enums import Normalize, Priority
from service.protocol.ranking import RerankResponse

router = APIRouter()


@router.post("/get_reward", response_model=openrlhf.GetRewardResponse, responses=ERROR_RESPONSES,
             description=getdoc(openrlhf.get_reward))
async def get_reward(
    body: openrlhf.GetRewardRequest,
    request: Request,
    model: str | None = Query(None, description="model name, when the body names none"),
    truncate: Literal["left", "right"] | None = Query(None, description="when the body says nothing"),
    normalize: Normalize | None = Query(None, description="when the body says nothing"),
    priority: Priority | None = Query(None, description="when the body says nothing; default: bulk"),
    mode: openrlhf.Mode | None = Query(None, description="when the body says nothing; default: serve_rm for decoders' "
                                        "sequence scores, else split"),
    deterministic: bool | None = Query(None, description="when the body says nothing; default: the model's"),
) -> openrlhf.GetRewardResponse:
    work = openrlhf.get_reward(request.app.state.scorer, body, model, truncate, normalize, priority, mode,
                               deterministic)
    return await unless_disconnected(request, work)


@router.post("/pooling", response_model=vllm.PoolingResponse, responses=ERROR_RESPONSES,
             description=getdoc(vllm.pooling))
async def pooling(body: vllm.PoolingRequest, request: Request) -> vllm.PoolingResponse:
    return await unless_disconnected(request, vllm.pooling(request.app.state.scorer, body))


@router.post("/classify", response_model=vllm.ClassificationResponse, responses=ERROR_RESPONSES,
             description=getdoc(vllm.classify))
async def classify(body: vllm.ClassifyRequest, request: Request) -> vllm.ClassificationResponse:
    return await unless_disconnected(request, vllm.classify(request.app.state.scorer, body))


@router.post("/score", response_model=vllm.VllmScoreResponse, responses=ERROR_RESPONSES,
             description=getdoc(vllm.score))
async def score(body: vllm.VllmScoreRequest, request: Request) -> vllm.VllmScoreResponse:
    return await unless_disconnected(request, vllm.score(request.app.state.scorer, body))


@router.post("/rerank", response_model=RerankResponse, responses=ERROR_RESPONSES)
@router.post("/v2/rerank", response_model=RerankResponse, responses=ERROR_RESPONSES, include_in_schema=False)
async def rerank(body: vllm.VllmRerankRequest, request: Request) -> RerankResponse:
    """vLLM / Cohere rerank: /v1/rerank at the paths their clients call, with vLLM's fields."""
    return await unless_disconnected(request, vllm.rerank(request.app.state.scorer, body))


@router.post("/generative_scoring", response_model=vllm.VllmScoreResponse, responses=ERROR_RESPONSES,
             description=getdoc(vllm_generative.generative_scoring))
async def generative_scoring(body: vllm_generative.GenerativeScoringRequest,
                             request: Request) -> vllm.VllmScoreResponse:
    return await unless_disconnected(request, vllm_generative.generative_scoring(request.app.state.scorer, body))
