"""Compatibility endpoints, so clients written for other servers work unchanged:

- OpenRLHF's remote reward model: `POST /get_reward` (`--remote_rm_url http://HOST:PORT/get_reward`).
- vLLM's pooling API, at its unprefixed paths: `/pooling`, `/classify`, `/score`, `/rerank`
  (also `/v2/rerank`, Cohere's path); our own `/v1/score` and `/v1/rerank` keep our shapes.

Everything goes through the scoring core, so numbers and errors are those of /v1/score.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from models.inputs import Chat, ScoreInput, TokenIds
from models.reward_model import RewardModel
from models.spec import ModelKind
from service.errors import APIError
from service.http_ranking import (
    ERRORS,
    Candidate,
    RerankRequest,
    RerankResponse,
    candidate_inputs,
    chosen_priority,
    rerank_documents,
    run_job,
)
from service.ranking import Normalize, reference_stats_for, sigmoid, zscore
from service.scheduler import Priority
from service.schemas import Message
from service.scoring import ScoreJob

router = APIRouter()


class _Lenient(BaseModel):
    """Unknown fields are ignored (other servers' clients send their own options)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="model name; default: the server's default model")
    truncate: Literal["left", "right"] | None = Field(None, description="cut inputs longer than max_length")
    priority: Priority | int | None = Field(None, description="'interactive' or 'bulk' (vLLM's integers: the default)")
    timeout_ms: float | None = Field(None, gt=0)


def _model(request: Request, name: str | None) -> RewardModel:
    return request.app.state.registry.get(name).model


def _at(list_name: str):
    """Errors on item i name `list_name[i]` (the item is one string in these requests)."""
    return lambda index, rest: f"{list_name}[{index}]"


# ---- OpenRLHF ------------------------------------------------------------------------


class GetRewardRequest(_Lenient):
    """What OpenRLHF's remote reward client posts."""

    query: list[str] = Field(min_length=1, description="full texts: prompt followed by response")
    prompts: list[str] | None = Field(None, description="the prompt each query starts with")
    labels: list[Any] | None = Field(None, description="accepted and ignored")
    normalize: Normalize | None = Field(None, description="'zscore': rewards as z-scores (scores stay raw)")


class GetRewardResponse(BaseModel):
    rewards: list[float] = Field(description="the reward per query (a z-score with normalize='zscore')")
    scores: list[float] = Field(description="the model's raw score per query")
    extra_logs: dict[str, list[float]] = Field(description="per query, for the trainer's logs")


@router.post("/get_reward", response_model=GetRewardResponse, responses=ERRORS)
async def get_reward(
    body: GetRewardRequest,
    request: Request,
    model: str | None = Query(None, description="model name, when the body names none"),
    truncate: Literal["left", "right"] | None = Query(None, description="when the body says nothing"),
    normalize: Normalize | None = Query(None, description="when the body says nothing"),
    priority: Priority | None = Query(None, description="when the body says nothing; default: bulk"),
) -> GetRewardResponse:
    """OpenRLHF remote reward model. Each query is split into the prompt it starts with
    and the response after it; the response is scored as the answer to that prompt
    (without prompts, the whole query as the answer to an empty prompt). Bulk priority
    unless asked otherwise: trainers send one rollout per request, many at once, and the
    scheduler batches them across requests. Query-string options apply when the body has
    none, so they can ride on `--remote_rm_url`."""
    name = body.model or model
    spec = _model(request, name).spec
    if body.prompts is not None and len(body.prompts) != len(body.query):
        raise APIError(422, "invalid_request",
                       f"{len(body.prompts)} prompts for {len(body.query)} queries; give one per query", "prompts")
    stats = reference_stats_for(spec) if (body.normalize or normalize) == "zscore" else None
    inputs: list[ScoreInput] = []
    for i, text in enumerate(body.query):
        prompt = body.prompts[i] if body.prompts is not None else ""
        if not text.startswith(prompt):
            raise APIError(422, "invalid_request", f"query[{i}] does not start with prompts[{i}]", f"query[{i}]")
        inputs += candidate_inputs(spec, prompt, None, [Candidate(text=text[len(prompt):])])
    job = ScoreJob(inputs=inputs, model=name, truncate=body.truncate or truncate,
                   priority=chosen_priority(body.priority) or priority or Priority.bulk, timeout_ms=body.timeout_ms)
    scored = await run_job(request, job, _at("query"), "query")
    raw = scored.outputs
    shown = [zscore(out, stats) for out in raw] if stats is not None else raw
    extra: dict[str, list[float]] = {}
    if spec.kind == ModelKind.multi_objective:
        for dim in spec.multi_objective.dimensions:
            extra[f"rm/{dim}"] = [out.dimensions[dim] for out in shown]
    if spec.kind == ModelKind.process:
        extra["rm/num_steps"] = [float(len(out.step_rewards)) for out in raw]
    extra["rm/truncated"] = [float(out.truncated) for out in raw]
    return GetRewardResponse(rewards=[out.score for out in shown], scores=[out.score for out in raw], extra_logs=extra)


# ---- vLLM ----------------------------------------------------------------------------

VllmInput = str | list[str] | list[int] | list[list[int]]


class VllmUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0
    prompt_tokens_details: None = None


def _usage(tokens: int) -> VllmUsage:
    return VllmUsage(prompt_tokens=tokens, total_tokens=tokens)


class _VllmInputRequest(_Lenient):
    input: VllmInput | None = Field(None, description="text(s) as they are (markers and templates included), or token ids")
    messages: list[Message] | None = Field(None, min_length=2, description="or: one conversation ending in the response")


def _entries(value: VllmInput) -> list[str | list[int]]:
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) for v in value):
        return [list(value)]
    return list(value)


async def _raw_inputs(model: RewardModel, body: _VllmInputRequest) -> list[ScoreInput]:
    """vLLM reads `input` texts as they are: tokenized with the tokenizer's special tokens,
    no pair split and no chat template (put markers and templates in the text yourself);
    `messages` go through the chat template like /v1/score's."""
    if (body.input is None) == (body.messages is None):
        raise APIError(422, "invalid_request", "give input or messages", "input")
    if body.messages is not None:
        return [Chat(tuple((m.role, m.content) for m in body.messages))]
    entries = _entries(body.input)
    if not entries:
        raise APIError(422, "invalid_request", "input must not be empty", "input")
    tokenizer = model.encoder.tokenizer

    def tokenize() -> list[ScoreInput]:
        return [TokenIds(tuple(tokenizer(e, add_special_tokens=True, verbose=False)["input_ids"]) if isinstance(e, str)
                         else tuple(e)) for e in entries]

    return await asyncio.to_thread(tokenize)


class PoolingRequest(_VllmInputRequest):
    normalize: Normalize | None = Field(None, description="'zscore': scalar and multi-objective values as z-scores")


class PoolingData(BaseModel):
    index: int
    object: Literal["pooling"] = "pooling"
    data: list[float]


class PoolingResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[PoolingData]
    usage: VllmUsage


@router.post("/pooling", response_model=PoolingResponse, responses=ERRORS)
async def pooling(body: PoolingRequest, request: Request) -> PoolingResponse:
    """vLLM pooling: per input, the process model's step rewards, the multi-objective
    model's dimensions (in the model's order) or the scalar model's [score]."""
    model = _model(request, body.model)
    inputs = await _raw_inputs(model, body)
    job = ScoreJob(inputs=inputs, model=body.model, truncate=body.truncate, priority=chosen_priority(body.priority),
                   timeout_ms=body.timeout_ms, normalize=body.normalize)
    scored = await run_job(request, job, _at("input"), "input")
    kind = scored.kind

    def vector(out) -> list[float]:
        if kind == ModelKind.process:
            return out.step_rewards
        if kind == ModelKind.multi_objective:
            return list(out.dimensions.values())
        return [out.score]

    return PoolingResponse(id=f"pool-{uuid.uuid4().hex}", created=int(time.time()), model=scored.model,
                           data=[PoolingData(index=i, data=vector(out)) for i, out in enumerate(scored.outputs)],
                           usage=_usage(scored.total_tokens))


class ClassifyRequest(_VllmInputRequest):
    pass


class ClassificationData(BaseModel):
    index: int
    label: str | None
    probs: list[float]
    num_classes: int


class ClassificationResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ClassificationData]
    usage: VllmUsage


@router.post("/classify", response_model=ClassificationResponse, responses=ERRORS)
async def classify(body: ClassifyRequest, request: Request) -> ClassificationResponse:
    """vLLM classify. Scalar and multi-objective models are one-class classifiers:
    probs = [sigmoid(score)]. Process models: probs = [1 - score, score] (the score, the
    step aggregate, is a probability of good). `label` is the model config's name of the
    most probable class, as vLLM reports it."""
    model = _model(request, body.model)
    inputs = await _raw_inputs(model, body)
    job = ScoreJob(inputs=inputs, model=body.model, truncate=body.truncate, priority=chosen_priority(body.priority),
                   timeout_ms=body.timeout_ms)
    scored = await run_job(request, job, _at("input"), "input")
    id2label = getattr(model.config, "id2label", None) or {}
    data = []
    for i, out in enumerate(scored.outputs):
        probs = [1.0 - out.score, out.score] if scored.kind == ModelKind.process else [sigmoid(out.score)]
        best = max(range(len(probs)), key=probs.__getitem__)
        data.append(ClassificationData(index=i, label=id2label.get(best, f"LABEL_{best}"), probs=probs,
                                       num_classes=len(probs)))
    return ClassificationResponse(id=f"classify-{uuid.uuid4().hex}", created=int(time.time()), model=scored.model,
                                  data=data, usage=_usage(scored.total_tokens))


class VllmScoreRequest(_Lenient):
    text_1: str | list[str] = Field(description="the prompt(s)")
    text_2: str | list[str] = Field(description="the response(s); process models: steps cut at the marker or blank lines")
    normalize: Normalize | None = None


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class VllmScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: VllmUsage


@router.post("/score", response_model=VllmScoreResponse, responses=ERRORS)
async def vllm_score(body: VllmScoreRequest, request: Request) -> VllmScoreResponse:
    """vLLM score: each (text_1, text_2) pair is a prompt and a response, scored like
    /v1/score's {prompt, response}. 1:1, 1:N (one text_1 for every text_2) or N:N."""
    firsts = [body.text_1] if isinstance(body.text_1, str) else body.text_1
    seconds = [body.text_2] if isinstance(body.text_2, str) else body.text_2
    if not firsts or not seconds:
        raise APIError(422, "invalid_request", "text_1 and text_2 must not be empty", "text_1" if not firsts else "text_2")
    if len(firsts) == 1:
        firsts = firsts * len(seconds)
    elif len(firsts) != len(seconds):
        raise APIError(422, "invalid_request", f"{len(firsts)} text_1 for {len(seconds)} text_2: give one text_1, "
                       "or as many as text_2", "text_2")
    spec = _model(request, body.model).spec
    inputs: list[ScoreInput] = []
    for first, second in zip(firsts, seconds):
        inputs += candidate_inputs(spec, first, None, [Candidate(text=second)], prompt_field="text_1")
    job = ScoreJob(inputs=inputs, model=body.model, truncate=body.truncate, priority=chosen_priority(body.priority),
                   timeout_ms=body.timeout_ms, normalize=body.normalize)
    scored = await run_job(request, job, _at("text_2"), "text_2")
    return VllmScoreResponse(id=f"score-{uuid.uuid4().hex}", created=int(time.time()), model=scored.model,
                             data=[ScoreData(index=i, score=out.score) for i, out in enumerate(scored.outputs)],
                             usage=_usage(scored.total_tokens))


class CompatRerankRequest(RerankRequest):
    """/v1/rerank's request, ignoring unknown fields (vLLM's and Cohere's own options)."""

    model_config = ConfigDict(extra="ignore")

    priority: Priority | int | None = Field(None, description="'interactive' or 'bulk' (vLLM's integers: the default)")


@router.post("/rerank", response_model=RerankResponse, responses=ERRORS)
@router.post("/v2/rerank", response_model=RerankResponse, responses=ERRORS, include_in_schema=False)
async def vllm_rerank(body: CompatRerankRequest, request: Request) -> RerankResponse:
    """vLLM / Cohere rerank: /v1/rerank at the paths their clients call."""
    return await rerank_documents(body, request)
