"""OpenRLHF's remote reward model (`--remote_rm_url http://HOST:PORT/get_reward`): the
request it posts and the rewards it reads, scored by the core like /v1/score."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from models.inputs import ScoreInput, Truncate
from models.spec import ModelKind
from service.compat.common import Lenient
from service.core.candidates import Candidate, candidate_inputs
from service.core.errors import APIError, whole_item
from service.core.normalize import Normalize, reference_stats_for, zscore
from service.core.operations import chosen_priority
from service.core.scoring import ScoreJob, Scorer
from service.engine.scheduler import Priority


class GetRewardRequest(Lenient):
    """What OpenRLHF's remote reward client posts."""

    query: list[str] = Field(min_length=1, description="full texts: prompt followed by response")
    prompts: list[str] | None = Field(None, description="the prompt each query starts with")
    labels: list[Any] | None = Field(None, description="accepted and ignored")
    normalize: Normalize | None = Field(None, description="'zscore': rewards as z-scores (scores stay raw)")


class GetRewardResponse(BaseModel):
    rewards: list[float] = Field(description="the reward per query (a z-score with normalize='zscore')")
    scores: list[float] = Field(description="the model's raw score per query")
    extra_logs: dict[str, list[float]] = Field(description="per query, for the trainer's logs (rm/truncated: 1 if cut)")
    truncate: Truncate = Field(description="the end over-long queries were cut at (left unless asked otherwise)")


async def get_reward(scorer: Scorer, body: GetRewardRequest, model: str | None = None,
                     truncate: Truncate | None = None, normalize: Normalize | None = None,
                     priority: Priority | None = None) -> GetRewardResponse:
    """OpenRLHF remote reward model. Each query is split into the prompt it starts with
    and the response after it; the response is scored as the answer to that prompt
    (without prompts, the whole query as the answer to an empty prompt). Bulk priority
    unless asked otherwise: trainers send one rollout per request, many at once, and the
    scheduler batches them across requests. Over-long queries are cut from the left (as
    OpenRLHF's own server truncates rather than failing), unless `truncate` says otherwise. Query-string options apply when the body has
    none, so they can ride on `--remote_rm_url`."""
    name = body.model or model
    spec = scorer.spec(name)
    if body.prompts is not None and len(body.prompts) != len(body.query):
        raise APIError(422, "invalid_request",
                       f"{len(body.prompts)} prompts for {len(body.query)} queries; give one per query", "prompts")
    stats = reference_stats_for(spec) if (body.normalize or normalize) == "zscore" else None
    inputs: list[ScoreInput] = []
    for i, text in enumerate(body.query):
        prompt = body.prompts[i] if body.prompts is not None else ""
        response = response_after(text, prompt)
        if response is None:
            raise APIError(422, "invalid_request", f"query[{i}] does not start with prompts[{i}] (even ignoring "
                           "whitespace)", f"query[{i}]")
        inputs += candidate_inputs(spec, prompt, None, [Candidate(text=response)])
    side = body.truncate or truncate or "left"
    job = ScoreJob(inputs=inputs, model=name, truncate=side,
                   priority=chosen_priority(body.priority) or priority or Priority.bulk, timeout_ms=body.timeout_ms)
    scored = await scorer.score_as(job, whole_item("query"), "query")
    raw = scored.outputs
    shown = [zscore(out, stats) for out in raw] if stats is not None else raw
    extra: dict[str, list[float]] = {}
    if spec.kind == ModelKind.multi_objective:
        for dim in spec.multi_objective.dimensions:
            extra[f"rm/{dim}"] = [out.dimensions[dim] for out in shown]
    if spec.kind == ModelKind.process:
        extra["rm/num_steps"] = [float(len(out.step_rewards)) for out in raw]
    extra["rm/truncated"] = [float(out.truncated) for out in raw]
    return GetRewardResponse(rewards=[out.score for out in shown], scores=[out.score for out in raw], extra_logs=extra,
                             truncate=side)


def response_after(query: str, prompt: str) -> str | None:
    """What follows `prompt` in `query`, or None when the query does not start with it.
    The trainer decodes prompt and response together, and a SentencePiece tokenizer's
    decode puts a space after a special token (`<s> [INST]` for the prompt `<s>[INST]`),
    so where the exact prefix is missing the prompt is matched ignoring whitespace."""
    if query.startswith(prompt):
        return query[len(prompt):]
    at = 0
    for char in prompt:
        if char.isspace():
            continue
        while at < len(query) and query[at].isspace():
            at += 1
        if at == len(query) or query[at] != char:
            return None
        at += 1
    return query[at:]
