"""vLLM's pooling API (`/pooling`, `/classify`, `/score`, `/rerank`): its request and
response shapes, scored by the core, so numbers and errors are those of /v1/score."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from models.inputs import Chat, ScoreInput, TokenIds
from models.reward_model import RewardModel
from models.spec import ModelKind
from service.compat.common import Lenient
from service.core.candidates import Candidate, candidate_inputs
from service.core.errors import APIError, whole_item
from service.core.normalize import Normalize
from service.core.operations import RerankRequest, chosen_priority
from service.core.ranking import sigmoid
from service.core.schemas import Message
from service.core.scoring import ScoreJob, Scorer
from service.engine.scheduler import Priority

VllmInput = str | list[str] | list[int] | list[list[int]]


class VllmUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0
    prompt_tokens_details: None = None


def _usage(tokens: int) -> VllmUsage:
    return VllmUsage(prompt_tokens=tokens, total_tokens=tokens)


class _VllmInputRequest(Lenient):
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


async def pooling(scorer: Scorer, body: PoolingRequest) -> PoolingResponse:
    """vLLM pooling: per input, the process model's step rewards, the multi-objective
    model's dimensions (in the model's order) or the scalar model's [score]."""
    model = scorer.runner(body.model).model
    inputs = await _raw_inputs(model, body)
    job = ScoreJob(inputs=inputs, model=body.model, truncate=body.truncate, priority=chosen_priority(body.priority),
                   timeout_ms=body.timeout_ms, normalize=body.normalize)
    scored = await scorer.score_as(job, whole_item("input"), "input")
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


async def classify(scorer: Scorer, body: ClassifyRequest) -> ClassificationResponse:
    """vLLM classify. Scalar and multi-objective models are one-class classifiers:
    probs = [sigmoid(score)]. Process models: probs = [1 - score, score] (the score, the
    step aggregate, is a probability of good). `label` is the model config's name of the
    most probable class, as vLLM reports it."""
    model = scorer.runner(body.model).model
    inputs = await _raw_inputs(model, body)
    job = ScoreJob(inputs=inputs, model=body.model, truncate=body.truncate, priority=chosen_priority(body.priority),
                   timeout_ms=body.timeout_ms)
    scored = await scorer.score_as(job, whole_item("input"), "input")
    id2label = getattr(model.config, "id2label", None) or {}
    data = []
    for i, out in enumerate(scored.outputs):
        probs = [1.0 - out.score, out.score] if scored.kind == ModelKind.process else [sigmoid(out.score)]
        best = max(range(len(probs)), key=probs.__getitem__)
        data.append(ClassificationData(index=i, label=id2label.get(best, f"LABEL_{best}"), probs=probs,
                                       num_classes=len(probs)))
    return ClassificationResponse(id=f"classify-{uuid.uuid4().hex}", created=int(time.time()), model=scored.model,
                                  data=data, usage=_usage(scored.total_tokens))


class VllmScoreRequest(Lenient):
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


async def score(scorer: Scorer, body: VllmScoreRequest) -> VllmScoreResponse:
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
    spec = scorer.spec(body.model)
    inputs: list[ScoreInput] = []
    for first, second in zip(firsts, seconds):
        inputs += candidate_inputs(spec, first, None, [Candidate(text=second)], prompt_field="text_1")
    job = ScoreJob(inputs=inputs, model=body.model, truncate=body.truncate, priority=chosen_priority(body.priority),
                   timeout_ms=body.timeout_ms, normalize=body.normalize)
    scored = await scorer.score_as(job, whole_item("text_2"), "text_2")
    return VllmScoreResponse(id=f"score-{uuid.uuid4().hex}", created=int(time.time()), model=scored.model,
                             data=[ScoreData(index=i, score=out.score) for i, out in enumerate(scored.outputs)],
                             usage=_usage(scored.total_tokens))


class VllmRerankRequest(RerankRequest):
    """/v1/rerank's request, ignoring unknown fields (vLLM's and Cohere's own options)."""

    model_config = ConfigDict(extra="ignore")

    priority: Priority | int | None = Field(None, description="'interactive' or 'bulk' (vLLM's integers: the default)")
