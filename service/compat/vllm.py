"""vLLM's pooling API (`/pooling`, `/classify`, `/score`, `/rerank`): its request and
response shapes (service.compat.vllm_inputs for the request fields), scored by the core,
so numbers and errors are those of /v1/score. Inputs longer than the model's max_length
are cut from the left unless the request says otherwise; each result says whether it was."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.inputs import ScoreInput
from models.reward_model import RewardModel
from service.compat.vllm_inputs import (
    VllmMessage,
    VllmOptions,
    VllmRequest,
    content_text,
    input_items,
    input_texts,
)
from service.core.errors import APIError, renamed, whole_item
from service.core.inputs import candidate_inputs
from service.core.operations import chosen_priority, rerank_documents
from service.core.ranking import sigmoid
from service.core.scoring import Scored, ScoreJob, Scorer, refuse_per_request
from service.pipelines.pipeline import ModelCall
from service.pipelines.rules import RuleInput
from service.protocol.enums import ModelKind, Normalize, Priority
from service.protocol.ranking import Candidate, RerankRequest, RerankResponse

VllmInput = str | list[str] | list[int] | list[list[int]]


class VllmUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0
    prompt_tokens_details: None = None


def vllm_usage(tokens: int) -> VllmUsage:
    return VllmUsage(prompt_tokens=tokens, total_tokens=tokens)


def _entries(value: VllmInput | None) -> list[str | list[int]] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) for v in value):
        return [list(value)]
    return list(value)


def activated(kind: ModelKind, values: list[float], activation: bool | None) -> list[float]:
    """Scores as the request wants them: sigmoid(score) with activation, the raw score
    without. Process models' values are step probabilities already: activation changes
    nothing, and their raw step logits are not served."""
    if kind == ModelKind.process:
        if activation is False:
            raise APIError(422, "invalid_request", "a process model's rewards are probabilities; its raw logits "
                           "are not served", "use_activation")
        return values
    return [sigmoid(v) for v in values] if activation else values


async def scored_request(scorer: Scorer, body: VllmRequest,
                         build: Callable[[RewardModel], Awaitable[list[ScoreInput]]],
                         texts: list[RuleInput | None], whole: str, normalize: Normalize | None = None) -> Scored:
    """The inputs `build` makes for a model, scored by the model `body` names; for a pipeline,
    each of its models scores the inputs `build` makes for it and its rules read `texts`.
    Errors on item i name `whole[i]`."""
    job = ScoreJob(inputs=[], model=body.model, truncate=body.side(), priority=chosen_priority(body.priority),
                   timeout_ms=body.timeout_ms, deterministic=body.deterministic, normalize=normalize)

    async def model_job(model: RewardModel) -> ScoreJob:
        return replace(job, inputs=await build(model), keep=body.kept_tokens(model.encoder.max_length))

    async def score_model(call: ModelCall) -> list:
        return await scorer.score_call(await model_job(scorer.runner(call.model).model), call)

    pipeline = scorer.pipeline(body.model)
    try:
        if pipeline is None:
            return await scorer.score(await model_job(scorer.runner(body.model).model))
        refuse_per_request(normalize=normalize)
        return await scorer.run_pipeline(pipeline, texts, score_model)
    except APIError as err:
        raise renamed(err, whole_item(whole), whole) from err


async def _score_inputs(scorer: Scorer, body: VllmRequest, input: VllmInput | None,
                        messages: list[VllmMessage] | None, add_special_tokens: bool | None,
                        normalize: Normalize | None = None) -> Scored:
    entries = _entries(input)

    async def build(model: RewardModel) -> list[ScoreInput]:
        return await input_items(model, body, entries, messages, add_special_tokens)

    return await scored_request(scorer, body, build, input_texts(entries, messages), "input", normalize)


class _InputRequest(VllmRequest):
    input: VllmInput | None = Field(
        None, description="text(s) as they are (markers and templates included), or token ids"
    )
    messages: list[VllmMessage] | None = Field(None, min_length=1, description="or: one conversation")
    add_special_tokens: bool | None = Field(None, description="input: add BOS and the like (default true)")


# ---- /pooling ---------------------------------------------------------------------------


class PoolingRequest(_InputRequest):
    normalize: Normalize | None = Field(None, description="'zscore': scalar and multi-objective values as z-scores")
    encoding_format: Literal["float", "base64"] = Field("float", description="base64: float32 bytes, base64-encoded")
    embed_dtype: Literal["float32"] = "float32"
    endianness: Literal["native", "little", "big"] = "native"


class PoolingData(BaseModel):
    index: int
    object: Literal["pooling"] = "pooling"
    data: list[float] | str
    truncated: bool


class PoolingResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[PoolingData]
    usage: VllmUsage


def _encoded(values: list[float], body: PoolingRequest) -> list[float] | str:
    if body.encoding_format == "float":
        return values
    order = {"native": "=", "little": "<", "big": ">"}[body.endianness]
    return base64.b64encode(np.asarray(values, dtype=np.dtype(f"{order}f4")).tobytes()).decode()


async def pooling(scorer: Scorer, body: PoolingRequest) -> PoolingResponse:
    """vLLM pooling: per input, the process model's step rewards, the multi-objective
    model's dimensions (in the model's order) or the scalar model's [score] (raw unless
    use_activation is true); `encoding_format: "base64"` sends them as float32 bytes."""
    scored = await _score_inputs(scorer, body, body.input, body.messages, body.add_special_tokens, body.normalize)
    kind = scored.kind

    def vector(out) -> list[float]:
        if kind == ModelKind.process:
            return out.step_rewards
        return list(out.dimensions.values()) if kind == ModelKind.multi_objective else [out.score]

    data = [PoolingData(index=i, data=_encoded(activated(kind, vector(out), body.wants_activation()), body),
                        truncated=out.truncated) for i, out in enumerate(scored.outputs)]
    return PoolingResponse(id=f"pooling-{uuid.uuid4().hex}", created=int(time.time()), model=scored.model, data=data,
                           usage=vllm_usage(scored.total_tokens))


# ---- /classify --------------------------------------------------------------------------


class ClassifyRequest(_InputRequest):
    pass


class ClassificationData(BaseModel):
    index: int
    label: str | None
    probs: list[float]
    num_classes: int
    truncated: bool


class ClassificationResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ClassificationData]
    usage: VllmUsage


async def classify(scorer: Scorer, body: ClassifyRequest) -> ClassificationResponse:
    """vLLM classify. Scalar and multi-objective models are one-class classifiers:
    probs = [sigmoid(score)], or [score] with use_activation (or activation, softmax)
    false, as veRL asks. Process models: probs = [1 - score, score] (the score, the step
    aggregate, is a probability of good). `label` is the model config's name of the most
    probable class, as vLLM reports it."""
    scored = await _score_inputs(scorer, body, body.input, body.messages, body.add_special_tokens)
    is_model = scored.kind != ModelKind.pipeline
    id2label = (getattr(scorer.runner(scored.model).model.config, "id2label", None) if is_model else None) or {}
    wants = body.wants_activation()
    data = []
    for i, out in enumerate(scored.outputs):
        if scored.kind == ModelKind.process:
            probs = [1.0 - out.score, *activated(scored.kind, [out.score], wants)]
        else:
            probs = activated(scored.kind, [out.score], wants is not False)
        best = max(range(len(probs)), key=probs.__getitem__)
        data.append(ClassificationData(index=i, label=id2label.get(best, f"LABEL_{best}"), probs=probs,
                                       num_classes=len(probs), truncated=out.truncated))
    return ClassificationResponse(id=f"classify-{uuid.uuid4().hex}", created=int(time.time()), model=scored.model,
                                  data=data, usage=vllm_usage(scored.total_tokens))


# ---- /score -----------------------------------------------------------------------------

SCORE_PAIRS = (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"), ("text_1", "text_2"))
# The pair names that are vLLM's only (`items` is /v1/score's own list too).
VLLM_SCORE_FIELDS = frozenset(name for pair in SCORE_PAIRS for name in pair) - {"items"}
ScoreValue = str | dict[str, Any]


class VllmScoreRequest(VllmRequest):
    """Pairs under any of vLLM's names: queries + documents (or items), data_1 + data_2,
    text_1 + text_2; each side one value or a list (1:1, 1:N or N:N)."""

    queries: ScoreValue | list[ScoreValue] | None = Field(None, description="the prompt(s)")
    documents: ScoreValue | list[ScoreValue] | None = Field(None, description="the response(s)")
    items: ScoreValue | list[ScoreValue] | None = Field(None, description="the response(s), another name")
    data_1: ScoreValue | list[ScoreValue] | None = None
    data_2: ScoreValue | list[ScoreValue] | None = None
    text_1: ScoreValue | list[ScoreValue] | None = None
    text_2: ScoreValue | list[ScoreValue] | None = Field(
        None, description="process models: responses are cut into steps at the marker or blank lines")
    normalize: Normalize | None = None

    def pairs(self) -> tuple[str, str, list[str], list[str]]:
        """(first name, second name, prompts, responses), one prompt per response."""
        given = [(a, b) for a, b in SCORE_PAIRS if getattr(self, a) is not None and getattr(self, b) is not None]
        stray = [
            n for pair in SCORE_PAIRS for n in pair if getattr(self, n) is not None and not any(n in g for g in given)
        ]
        if len(given) != 1 or stray:
            raise APIError(422, "invalid_request", "give one pair: queries + documents, queries + items, "
                           "data_1 + data_2 or text_1 + text_2", (stray or ["queries"])[0])
        first, second = given[0]
        sides = []
        for name in (first, second):
            value = getattr(self, name)
            values = value if isinstance(value, list) else [value]
            sides.append([content_text(v, f"{name}[{i}]") for i, v in enumerate(values)])
        firsts, seconds = sides
        if not firsts or not seconds:
            raise APIError(422, "invalid_request", "must not be empty", first if not firsts else second)
        if len(firsts) == 1:
            firsts = firsts * len(seconds)
        elif len(firsts) != len(seconds):
            raise APIError(422, "invalid_request", f"{len(firsts)} {first} for {len(seconds)} {second}: give one "
                           f"{first}, or as many as {second}", second)
        return first, second, firsts, seconds


def is_vllm_score(body: Any) -> bool:
    """Whether a /v1/score body is in vLLM's form: it names one of vLLM's pair fields."""
    if isinstance(body, BaseModel):
        return isinstance(body, VllmScoreRequest)
    return isinstance(body, dict) and not VLLM_SCORE_FIELDS.isdisjoint(body)


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float
    truncated: bool


class VllmScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: VllmUsage


async def score(scorer: Scorer, body: VllmScoreRequest) -> VllmScoreResponse:
    """vLLM score: each pair is a prompt and a response, scored like /v1/score's
    {prompt, response}; the raw score unless use_activation is true (then sigmoid)."""
    first, second, firsts, seconds = body.pairs()

    async def build(model: RewardModel) -> list[ScoreInput]:
        return [item for prompt, response in zip(firsts, seconds)
                for item in candidate_inputs(model.spec, prompt, None, [Candidate(text=response)], prompt_field=first)]

    texts = [RuleInput(response, prompt) for prompt, response in zip(firsts, seconds)]
    scored = await scored_request(scorer, body, build, texts, second, body.normalize)
    wants = body.wants_activation()
    data = [ScoreData(index=i, score=activated(scored.kind, [out.score], wants)[0], truncated=out.truncated)
            for i, out in enumerate(scored.outputs)]
    return VllmScoreResponse(id=f"score-{uuid.uuid4().hex}", created=int(time.time()), model=scored.model, data=data,
                             usage=vllm_usage(scored.total_tokens))


# ---- /rerank ----------------------------------------------------------------------------


class VllmRerankRequest(RerankRequest, VllmOptions):
    """/v1/rerank's request with vLLM's fields: unknown fields are ignored (vLLM's and
    Cohere's own options), `{"content": [parts]}` values are read as their text, inputs
    are cut from the left by default, and use_activation puts relevance scores through a
    sigmoid (the order stays the same)."""

    model_config = ConfigDict(extra="ignore")

    priority: Priority | int | None = Field(None, description="'interactive' or 'bulk' (vLLM's integers: the default)")

    @model_validator(mode="before")
    @classmethod
    def _texts(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("query"), (dict, list)):
            data["query"] = content_text(data["query"], "query")
        if isinstance(data.get("documents"), list):
            data["documents"] = [content_text(d, f"documents[{i}]") if isinstance(d, dict) and "content" in d else d
                                 for i, d in enumerate(data["documents"])]
        data.setdefault("truncate", data.get("truncation_side") or "left")
        return data


async def rerank(scorer: Scorer, body: VllmRerankRequest) -> RerankResponse:
    response = await rerank_documents(scorer, body)
    wants = body.wants_activation()
    if wants is not None:
        kind = response.kind
        for result in response.results:
            result.relevance_score = activated(kind, [result.relevance_score], wants)[0]
    return response

