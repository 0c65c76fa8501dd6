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

import re
from typing import Any, Literal

from pydantic import BaseModel, Field

from models.inputs import RenderedText, ScoreInput
from models.reward_model import RewardModel
from service.compat.common import Lenient
from service.core.errors import APIError, whole_item
from service.core.inputs import candidate_inputs
from service.core.normalize import reference_stats_for, zscore
from service.core.operations import chosen_priority
from service.core.scoring import ScoreJob, Scorer
from service.protocol.enums import ModelKind, Normalize, Priority, Truncate
from service.protocol.ranking import Candidate

Mode = Literal["serve_rm", "split"]


class GetRewardRequest(Lenient):
    """What OpenRLHF's remote reward client posts."""

    query: list[str] = Field(min_length=1, description="full texts as the policy decoded them: prompt followed by "
                             "response")
    prompts: list[str] | None = Field(None, description="the prompt each query starts with")
    labels: list[Any] | None = Field(None, description="accepted and ignored")
    normalize: Normalize | None = Field(None, description="'zscore': rewards as z-scores (scores stay raw); "
                                        "OpenRLHF's --normalize_reward")
    mode: Mode | None = Field(None, description="'serve_rm': each query tokenized as OpenRLHF's serve_rm does (the "
                              "default for decoders' sequence scores); 'split': the response after prompts[i] scored "
                              "through the model's chat template (the default for encoders and process models)")


class GetRewardResponse(BaseModel):
    rewards: list[float] = Field(description="the reward per query (a z-score with normalize='zscore')")
    scores: list[float] = Field(description="the model's raw score per query")
    extra_logs: dict[str, list[float]] = Field(description="per query, for the trainer's logs (rm/truncated: 1 if cut)")
    truncate: Truncate = Field(description="the end over-long queries were cut at (left unless asked otherwise)")


async def get_reward(scorer: Scorer, body: GetRewardRequest, model: str | None = None,
                     truncate: Truncate | None = None, normalize: Normalize | None = None,
                     priority: Priority | None = None, mode: Mode | None = None) -> GetRewardResponse:
    """OpenRLHF remote reward model. In mode `serve_rm` (the default for decoders' sequence
    scores) each query is scored as OpenRLHF's own server scores it: padding and EOS stripped from
    both ends, the model's EOS appended, the text tokenized as it is. In mode `split` each
    query is split into the prompt it starts with and the response after it, and the
    response is scored as the answer to that prompt (without prompts, to an empty prompt),
    a process model's steps cut at blank lines. Bulk priority unless asked
    otherwise: trainers send one rollout per request, many at once, and the scheduler
    batches them across requests. Over-long queries are cut from the left (OpenRLHF's
    server truncates rather than failing), unless `truncate` says otherwise. Query-string
    options apply when the body has none, so they can ride on `--remote_rm_url`."""
    name = body.model or model
    reward_model = scorer.runner(name).model
    spec = reward_model.spec
    if body.prompts is not None and len(body.prompts) != len(body.query):
        raise APIError(422, "invalid_request",
                       f"{len(body.prompts)} prompts for {len(body.query)} queries; give one per query", "prompts")
    stats = reference_stats_for(spec) if (body.normalize or normalize) == "zscore" else None
    ends = RolloutEnds.of(reward_model.encoder.tokenizer)
    as_sent = (body.mode or mode or default_mode(reward_model)) == "serve_rm"
    inputs: list[ScoreInput] = []
    for i, query in enumerate(body.query):
        prompt = body.prompts[i] if body.prompts is not None else ""
        text = ends.strip(query)
        if as_sent:
            inputs.append(RenderedText(text + ends.eos, prompt or None))
            continue
        response = response_after(ends.without_bos(text, prompt), prompt)
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


def default_mode(model: RewardModel) -> Mode:
    return "split" if model.is_encoder or model.spec.kind == ModelKind.process else "serve_rm"


class RolloutEnds:
    """The reward model's EOS, padding and BOS texts, which a decoded rollout carries at its
    ends: serve_rm strips every padding and EOS text from both ends and appends one EOS
    (the token OpenRLHF's reward models are trained to be read at); with no padding token
    the EOS pads, as OpenRLHF's tokenizer set-up makes it."""

    def __init__(self, eos: str | None, pad: str | None, bos: str | None):
        self.eos = eos or ""
        self.bos = bos or ""
        texts = [re.escape(t) for t in dict.fromkeys((eos, pad or eos)) if t]
        run = f"(?:{'|'.join(texts)})+" if texts else None
        self._leading = re.compile(f"^{run}") if run else None
        self._trailing = re.compile(f"{run}$") if run else None

    @classmethod
    def of(cls, tokenizer) -> RolloutEnds:
        return cls(tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token)

    def strip(self, text: str) -> str:
        if self._leading is None:
            return text
        return self._trailing.sub("", self._leading.sub("", text))

    def without_bos(self, text: str, prompt: str) -> str:
        """`text` less a leading BOS text its prompt lacks: a policy served by vLLM decodes
        its BOS into the query (`<s>Human: ...`) while the prompt it was given has none."""
        if self.bos and text.startswith(self.bos) and not prompt.lstrip().startswith(self.bos):
            return text[len(self.bos):]
        return text


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
