"""OpenRLHF's remote reward model (`--remote_rm_url http://HOST:PORT/get_reward`): the
request it posts and the rewards it reads, scored by the core like /v1/score.

OpenRLHF's client posts each rollout as the policy decoded it (`query`: chat template
applied, special tokens written out, padding and EOS left on), and its own server,
`openrlhf.cli.serve_rm`, strips the padding and EOS texts from both ends, appends the
reward model's EOS and tokenizes the text as it is. Mode `serve_rm`, the default, does
exactly that, so a reward model gives the numbers it gave under serve_rm; mode `split`
scores the response after `prompts[i]` as the answer to that prompt through the reward
model's own chat template, for a policy whose template is not the reward model's. Process
models and encoders default to `split`: serve_rm serves neither (a rollout carries no step
markers, and an encoder reads a prompt and response pair).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, Field

from models.heads import RewardOutput
from models.inputs import RenderedText, ScoreInput
from models.reward_model import RewardModel
from service.compat.common import Lenient
from service.compat.rollouts import RolloutEnds, split_response
from service.core.errors import APIError, renamed, whole_item
from service.core.inputs import candidate_inputs
from service.core.normalize import reference_stats_for, zscore
from service.core.operations import chosen_priority
from service.core.scoring import ScoreJob, Scorer, refuse_per_request
from service.pipelines.pipeline import ModelCall, Pipeline
from service.pipelines.rules import RuleInput
from service.protocol.enums import ModelKind, Normalize, Priority, Truncate
from service.protocol.ranking import Candidate

Mode = Literal["serve_rm", "split"]


class GetRewardRequest(Lenient):
    """What OpenRLHF's remote reward client posts."""

    query: list[str] = Field(min_length=1, description="full texts as the policy decoded them: prompt followed by "
                             "response")
    prompts: list[str] | None = Field(None, description="the prompt each query starts with")
    labels: list[Any] | None = Field(None, description="each query's ground truth, which a pipeline's rules read "
                                     "(a model ignores it)")
    normalize: Normalize | None = Field(None, description="'zscore': rewards as z-scores (scores stay raw); "
                                        "OpenRLHF's --normalize_reward")
    mode: Mode | None = Field(None, description="'serve_rm': each query tokenized as OpenRLHF's serve_rm does (the "
                              "default for decoders' sequence scores); 'split': the response after prompts[i] scored "
                              "through the model's chat template (the default for encoders and process models)")


class GetRewardResponse(BaseModel):
    rewards: list[float] = Field(description="the reward per query (a z-score with normalize='zscore')")
    scores: list[float] = Field(description="the model's raw score per query (a pipeline's reward)")
    extra_logs: dict[str, list[float]] = Field(description="per query, for the trainer's logs (rm/truncated: 1 if cut; "
                                               "a pipeline's pipeline/<component>: the component's value)")
    truncate: Truncate = Field(description="the end over-long queries were cut at (left unless asked otherwise)")


async def get_reward(scorer: Scorer, body: GetRewardRequest, model: str | None = None,
                     truncate: Truncate | None = None, normalize: Normalize | None = None,
                     priority: Priority | None = None, mode: Mode | None = None,
                     deterministic: bool | None = None) -> GetRewardResponse:
    """OpenRLHF remote reward model. In mode `serve_rm` (the default for decoders' sequence
    scores) each query is scored as OpenRLHF's own server scores it: padding and EOS stripped from
    both ends, the model's EOS appended, the text tokenized as it is. In mode `split` each
    query is split into the prompt it starts with and the response after it, and the
    response is scored as the answer to that prompt (without prompts, to an empty prompt),
    a process model's steps cut at blank lines. Bulk priority unless asked
    otherwise: trainers send one rollout per request, many at once, and the scheduler
    batches them across requests. Over-long queries are cut from the left (OpenRLHF's
    server truncates rather than failing), unless `truncate` says otherwise. Query-string
    options apply when the body has none, so they can ride on `--remote_rm_url`. A pipeline
    scores each query with its models as they would alone, its rules reading the response
    (after prompts[i], else the query less padding and EOS) against labels[i]; extra_logs
    holds each component's values (`pipeline/<component>`)."""
    name = body.model or model
    _one_per_query(body, "prompts")
    side = body.truncate or truncate or "left"
    job = ScoreJob(inputs=[], model=name, truncate=side,
                   priority=chosen_priority(body.priority) or priority or Priority.bulk, timeout_ms=body.timeout_ms,
                   deterministic=body.deterministic if body.deterministic is not None else deterministic)
    mode = body.mode or mode
    pipeline = scorer.pipeline(name)
    if pipeline is not None:
        refuse_per_request(normalize=body.normalize or normalize)
        return await pipeline_reward(scorer, pipeline, body, job, mode)
    reward_model = scorer.runner(name).model
    spec = reward_model.spec
    stats = reference_stats_for(spec) if (body.normalize or normalize) == "zscore" else None
    job = replace(job, inputs=model_inputs(reward_model, body, mode))
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


def model_inputs(model: RewardModel, body: GetRewardRequest, mode: Mode | None) -> list[ScoreInput]:
    """Each query as `model` scores it in `mode` (default: the model's own, default_mode)."""
    ends = RolloutEnds.of(model.encoder.tokenizer)
    as_sent = (mode or default_mode(model)) == "serve_rm"
    inputs: list[ScoreInput] = []
    for i, query in enumerate(body.query):
        prompt = body.prompts[i] if body.prompts is not None else ""
        text = ends.strip(query)
        if as_sent:
            inputs.append(RenderedText(text + ends.eos, prompt or None))
        else:
            response = split_response(ends, text, prompt, i)
            inputs += candidate_inputs(model.spec, prompt, None, [Candidate(text=response)])
    return inputs


def default_mode(model: RewardModel) -> Mode:
    return "split" if model.is_encoder or model.spec.kind == ModelKind.process else "serve_rm"


async def pipeline_reward(scorer: Scorer, pipeline: Pipeline, body: GetRewardRequest, job: ScoreJob,
                          mode: Mode | None) -> GetRewardResponse:
    """The queries' rewards from `pipeline`: each model component's inputs built as
    /get_reward builds them for that model, the rules reading each query's response."""
    async def score_model(call: ModelCall) -> list[RewardOutput | Exception]:
        inputs = model_inputs(scorer.runner(call.model).model, body, mode)
        return await scorer.score_call(replace(job, inputs=inputs), call)

    try:
        texts = rule_texts(scorer, pipeline, body)
        scored = await scorer.run_pipeline(pipeline, texts, score_model)
    except APIError as err:
        raise renamed(err, _query_or_label, "query") from err
    outs = scored.outputs
    extra = {f"pipeline/{c.name}": [out.components[c.name].value for out in outs] for c in pipeline.config.components}
    return GetRewardResponse(rewards=[out.score for out in outs], scores=[out.score for out in outs],
                             extra_logs=extra, truncate=job.truncate)


def rule_texts(scorer: Scorer, pipeline: Pipeline, body: GetRewardRequest) -> list[RuleInput]:
    """What the rules read of each query: the response after prompts[i] (without prompts, the
    query), its padding and EOS stripped as the pipeline's first model's tokenizer writes
    them, and labels[i] as the ground truth."""
    _one_per_query(body, "labels")
    models = [scorer.runner(call.model).model for call in pipeline.calls]
    ends = RolloutEnds.of(models[0].encoder.tokenizer) if models else RolloutEnds(None, None, None)
    texts = []
    for i, query in enumerate(body.query):
        text = ends.strip(query)
        prompt = body.prompts[i] if body.prompts is not None else None
        response = split_response(ends, text, prompt, i) if prompt is not None else text
        label = body.labels[i] if body.labels is not None else None
        texts.append(RuleInput(response, prompt, ground_truth=label))
    return texts


def _one_per_query(body: GetRewardRequest, field: str) -> None:
    given = getattr(body, field)
    if given is not None and len(given) != len(body.query):
        raise APIError(422, "invalid_request", f"{len(given)} {field} for {len(body.query)} queries; give one per "
                       "query", field)


def _query_or_label(index: int, rest: str) -> str:
    """A pipeline's errors on item i: its missing ground truth is labels[i], anything else query[i]."""
    return f"labels[{index}]" if rest == ".ground_truth" else f"query[{index}]"
