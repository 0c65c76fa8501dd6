"""The transport-independent scoring core: every protocol (HTTP, gRPC, KServe v2, the
compatibility endpoints) turns its request into a `ScoreJob` and gets back a `Scored`, so
they all return the same numbers and the same errors (as `APIError`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from models.heads import RewardOutput
from models.inputs import ScoreInput
from models.spec import RewardSpec
from service.config import Settings
from service.core.control import ModelControl
from service.core.errors import APIError, ItemNamer, renamed
from service.core.inputs import input_for
from service.core.normalize import reference_stats_for, zscore
from service.core.pairwise import PairJob, Preferences, candidate_pairs, item_outputs, preferences_read, score_plan
from service.core.shadow import Shadows
from service.engine.admission import QueueFull
from service.engine.registry import ModelNotFound, ModelNotReady, ModelRegistry
from service.engine.runner import ItemError, ModelRunner
from service.pipelines.pipeline import ModelCall, Pipeline, ScoreModel
from service.pipelines.registry import PipelineSet
from service.pipelines.rules import RuleInput
from service.pipelines.values import ComponentFailed
from service.protocol.catalog import ModelCard, ModelDetail, ModelList, ModelObject
from service.protocol.enums import (
    CacheMode,
    ModelKind,
    Normalize,
    OnItemError,
    PairwiseMode,
    Priority,
    StepAggregate,
    Truncate,
)


@dataclass(frozen=True)
class ScoreJob:
    inputs: list[ScoreInput]
    model: str | None = None
    truncate: Truncate | None = None
    keep: int | None = None  # the tokens `truncate` cuts to (vLLM's truncate_prompt_tokens); default max_length
    aggregate: StepAggregate | None = None
    priority: Priority | None = None
    timeout_ms: float | None = None
    normalize: Normalize | None = None
    cache: CacheMode = CacheMode.use
    on_item_error: OnItemError = "request"
    deterministic: bool | None = None  # items scored alone (bitwise batch-invariant); None: the model's setting
    pairwise_mode: PairwiseMode | None = None  # pairwise models: what an item's score is; None: the model's
    references: tuple[str | None, ...] | None = None  # pairwise models, vs_reference: each item's other response
    adapter: str | None = None  # the LoRA adapter that scores the items; None: the base model
    token_rewards: bool = False  # implicit models: each response token's reward too
    texts: tuple[RuleInput | None, ...] | None = None  # what a pipeline's rules read, per item


@dataclass(frozen=True)
class Scored:
    """A job's outputs in order. With on_item_error "item", an item that failed has None
    in `outputs` and its error in `errors`; otherwise every item has an output."""

    model: str
    revision: str
    kind: ModelKind
    outputs: list[RewardOutput | None]
    normalized: bool = False
    errors: dict[int, APIError] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return sum(out.num_tokens for out in self.outputs if out is not None)


class Scorer:
    def __init__(self, registry: ModelRegistry, settings: Settings):
        self.registry = registry
        self.settings = settings
        self.pipelines = PipelineSet(settings, registry)
        self.shadows = Shadows(registry, settings)
        self.control = ModelControl(registry, self.pipelines, settings)

    def pipeline(self, name: str | None) -> Pipeline | None:
        """The pipeline a request names (the default when None and the default is one), ready
        to score (503 while it is not); None when the name is a model's."""
        name = name or self.settings.default_model_name
        if name not in self.pipelines.configs:
            return None
        if (status := self.pipelines.status(name)) != "ready":
            error = self.pipelines.error(name)
            raise APIError(503, f"model_{status}", f"pipeline {name!r} is {status}" + (f": {error}" if error else ""),
                           "model")
        return self.pipelines.pipelines[name]

    def runner(self, name: str | None, ready: bool = True) -> ModelRunner:
        """The runner of the model a request names (the default when None): 404 when no
        model has that name, 503 (with `ready`) while it is not ready to score."""
        try:
            return self.registry.get(name) if ready else self.registry.find(name)
        except (ModelNotFound, ModelNotReady) as err:
            raise APIError.from_lookup(err) from None

    @property
    def ready(self) -> bool:
        """Whether every model and pipeline is ready to score."""
        return all(status == "ready" for status in self.statuses.values())

    @property
    def statuses(self) -> dict[str, str]:
        """Every served model's and pipeline's status."""
        return self.registry.statuses | {name: self.pipelines.status(name) for name in self.pipelines.configs}

    def spec(self, name: str | None) -> RewardSpec:
        return self.runner(name).model.spec

    def model_cards(self) -> list[ModelCard]:
        return ([model_card(runner) for runner in self.registry.runners.values()]
                + [self._pipeline_card(name) for name in self.pipelines.configs])

    def model_list(self) -> ModelList:
        objects = [self._model_object(runner, name)
                   for runner in self.registry.runners.values() for name in (runner.name, *runner.config.aliases)]
        objects += [self._pipeline_object(name) for name in self.pipelines.configs]
        return ModelList(data=objects, models=self.model_cards())

    def _pipeline_card(self, name: str) -> ModelCard:
        status = self.pipelines.status(name)
        return ModelCard(name=name, status=status, kind=ModelKind.pipeline, error=self.pipelines.error(name),
                         revision=self.pipelines.revision(name) if status == "ready" else None,
                         dimensions=[c.name for c in self.pipelines.configs[name].components])

    def _pipeline_object(self, name: str) -> ModelObject:
        return ModelObject(id=name, created=self.registry.created, root=f"pipeline:{name}")

    def model_detail(self, name: str) -> ModelDetail:
        """The model a request may call `name` (404 when none): its OpenAI object and card."""
        if name in self.pipelines.configs:
            return ModelDetail(**self._pipeline_object(name).__dict__, **self._pipeline_card(name).__dict__)
        try:
            runner = self.registry.find(name)
        except ModelNotFound:
            raise APIError(404, "model_not_found", f"no model named {name!r}", "name") from None
        return ModelDetail(**self._model_object(runner, name).__dict__, **model_card(runner).__dict__)

    def _model_object(self, runner: ModelRunner, name: str) -> ModelObject:
        return ModelObject(id=name, created=self.registry.created, root=runner.config.path,
                           parent=None if name == runner.name else runner.name,
                           max_model_len=runner.info.max_length if runner.info else None)

    async def score(self, job: ScoreJob) -> Scored:
        """Every item of `job` scored by one model, in order; cancelling the caller drops
        its queued items. A share of a model's items goes to its shadow candidate after
        (service.core.shadow), never delaying the answer."""
        limit = self.settings.server.max_items_per_request
        if len(job.inputs) > limit:
            raise APIError(422, "too_many_items", f"{len(job.inputs)} items; at most {limit} per request", "items")
        pipeline = self.pipeline(job.model)
        if pipeline is not None:
            refuse_token_rewards(job, ModelKind.pipeline)
            return await self._score_pipeline(pipeline, job)
        runner = self.runner(job.model)
        model = runner.model
        refuse_token_rewards(job, model.spec.kind)
        if job.aggregate is not None and model.spec.kind != ModelKind.process:
            raise APIError(422, "invalid_request", "aggregate applies to process models only", "aggregate")
        if model.spec.kind == ModelKind.pairwise:
            return await self._score_pairwise(runner, job)
        if job.pairwise_mode is not None or job.references:
            field = "pairwise_mode" if job.pairwise_mode else \
                f"items[{next(i for i, r in enumerate(job.references) if r is not None)}].reference"
            raise APIError(422, "invalid_request", f"{field} is for pairwise models; {runner.name!r} is "
                           f"{model.spec.kind.value}", field)
        stats = reference_stats_for(model.spec, job.aggregate) if job.normalize == "zscore" else None
        results = await self._run(runner, job)
        if job.adapter is None:  # an adapter's scores are not the model's own
            self.shadows.offer(runner.name, job.inputs, results)
        errors = {i: APIError.from_item_error(r) for i, r in enumerate(results) if isinstance(r, ItemError)}
        outputs = [None if i in errors else _finished(out, job.aggregate, stats) for i, out in enumerate(results)]
        return Scored(runner.name, model.revision, model.spec.kind, outputs, normalized=stats is not None,
                      errors=errors)

    async def _run(self, runner: ModelRunner, job: ScoreJob) -> list[RewardOutput | ItemError]:
        """`job`'s inputs through the runner, under its priority, deadline, cache and determinism."""
        priority = job.priority or Priority(self.settings.batching.default_priority)
        deadline = None if job.timeout_ms is None else time.monotonic() + job.timeout_ms / 1000
        alone = runner.config.deterministic if job.deterministic is None else job.deterministic
        check_adapter(runner, job.adapter)
        try:
            return await runner.score(job.inputs, job.truncate, priority, deadline, job.cache,
                                      item_errors=job.on_item_error == "item", keep=job.keep, alone=alone,
                                      adapter=job.adapter, token_rewards=job.token_rewards)
        except ItemError as err:
            raise APIError.from_item_error(err) from err
        except QueueFull as err:
            raise APIError.from_queue_full(err) from err

    async def _score_pairwise(self, runner: ModelRunner, job: ScoreJob) -> Scored:
        """One score per item of a pairwise model (service.core.pairwise): every ordered pair
        the items make read in one runner call."""
        refuse_per_request(normalize=job.normalize)
        if job.on_item_error != "request":
            raise APIError(422, "invalid_request", "a pairwise model's items are compared with each other: "
                           "on_item_error 'item' is not available", "on_item_error")
        spec = runner.model.spec.pairwise
        mode = job.pairwise_mode or spec.score_mode
        plan, reads = score_plan(job.inputs, job.references, mode)
        try:
            outputs = await self._run(runner, dataclasses.replace(job, inputs=plan.inputs, references=None))
        except APIError as err:
            raise renamed(err, plan.field, "items") from err
        return Scored(runner.name, runner.model.revision, ModelKind.pairwise,
                      item_outputs(spec.convention, mode, outputs, reads))

    async def preferences(self, job: PairJob, prompt: str | Sequence[tuple[str, str]], candidates: Sequence[str],
                          pairs: Sequence[tuple[int, int]]) -> Preferences:
        """P(candidates[i] > candidates[j]) for each (i, j) of `pairs` (in `Preferences`), by the model
        `job.model` names: `prompt` is the prompt text or the conversation before the
        responses ((role, content) turns). Both orders of every pair are read as items of one
        runner call, so they batch together (and a pair asked twice, or as (j, i), is read
        once). Errors name `candidates[i]`, `pairs[k]`, `prompt` or `messages...`; 422 on
        `model` for a model that is not pairwise."""
        runner = self.runner(job.model)
        spec = runner.model.spec
        if spec.kind != ModelKind.pairwise:
            raise APIError(422, "invalid_request", f"{runner.name!r} is a {spec.kind.value} model; comparing pairs "
                           "needs a pairwise model", "model")
        context = (("user", prompt),) if isinstance(prompt, str) else tuple(prompt)
        plan, reads = candidate_pairs(context, candidates, pairs)
        options = {name: getattr(job, name) for name in ("model", "truncate", "priority", "timeout_ms",
                                                          "deterministic", "cache", "adapter")}
        try:
            outputs = await self._run(runner, ScoreJob(inputs=plan.inputs, **options))
        except APIError as err:
            raise renamed(err, plan.field, "candidates") from err
        return preferences_read(spec.pairwise.convention, outputs, pairs, reads, len(candidates), runner.name,
                                runner.model.revision)

    async def _score_pipeline(self, pipeline: Pipeline, job: ScoreJob) -> Scored:
        """Every item's reward from `pipeline`, its model components scored as this job's
        items by each model."""
        refuse_per_request(aggregate=job.aggregate, normalize=job.normalize)
        if job.adapter is not None:
            raise APIError(422, "invalid_request", f"{pipeline.name!r} is a pipeline; adapter applies to a model",
                           "adapter")
        texts = job.texts or (None,) * len(job.inputs)
        return await self.run_pipeline(pipeline, texts, lambda call: self.score_call(job, call), job.on_item_error)

    async def score_call(self, job: ScoreJob, call: ModelCall) -> list[RewardOutput | Exception]:
        """`job`'s items scored as a pipeline's `call` asks, by the model it names: per item
        its output or its error (the component's error)."""
        spec = self.spec(call.model)
        scored = await self.score(dataclasses.replace(
            job, inputs=[input_for(spec, item) for item in job.inputs], model=call.model, aggregate=call.aggregate,
            normalize="zscore" if call.zscore else None, on_item_error="item", texts=None, references=None,
            pairwise_mode=None))
        return [scored.errors.get(i, out) for i, out in enumerate(scored.outputs)]

    async def run_pipeline(self, pipeline: Pipeline, texts: Sequence[RuleInput | None], score_model: ScoreModel,
                           on_item_error: OnItemError = "request") -> Scored:
        """Every item's reward from `pipeline`, `score_model` scoring its items for each model
        component (each transport builds the model inputs its own way); the texts its rules
        read are checked first (422 naming `items[i]`), and a failed component is the item's
        error as a model's would be."""
        if pipeline.reads_text:
            for i, text in enumerate(texts):
                if text is None:
                    raise APIError(422, "invalid_request", f"pipeline {pipeline.name!r} has rules, which read text: "
                                   "give the item as text, not token ids", f"items[{i}]")
                if (missing := pipeline.missing_input(text)) is not None:
                    raise APIError(422, "invalid_request", missing, f"items[{i}].ground_truth")
        results = await pipeline.run(texts, score_model)
        errors = {i: component_error(i, r) for i, r in enumerate(results) if isinstance(r, ComponentFailed)}
        if errors and on_item_error == "request":
            raise errors[min(errors)]
        return Scored(pipeline.name, self.pipelines.revision(pipeline.name), ModelKind.pipeline,
                      [None if i in errors else out for i, out in enumerate(results)], errors=errors)

    async def score_as(self, job: ScoreJob, name: ItemNamer, whole: str) -> Scored:
        """`score`, its errors naming the request's own fields (`name(i, rest)` for item i,
        `whole` for the list) instead of /v1/score's `items[i]`."""
        try:
            return await self.score(job)
        except APIError as err:
            raise renamed(err, name, whole) from err


def _finished(out: RewardOutput, aggregate: StepAggregate | None, stats) -> RewardOutput:
    """An output with the request's own step aggregate and normalization applied."""
    if aggregate is not None:
        out = out.with_step_aggregate(aggregate)
    return zscore(out, stats) if stats is not None else out


def check_adapter(runner: ModelRunner, adapter: str | None) -> None:
    """404 for an adapter the model does not have, 422 for none where its base scores
    nothing without one (its head comes from the adapters only); both list its adapters."""
    adapters = sorted(runner.info.adapters or {})
    if adapter is not None and adapter not in adapters:
        raise APIError(404, "adapter_not_found", f"model {runner.name!r} has no adapter {adapter!r}; "
                       f"its adapters: {adapters}", "adapter")
    if adapter is None and not runner.model.base_scores:
        raise APIError(422, "adapter_required", f"model {runner.name!r} has no head of its own, only its adapters' "
                       f"(modules_to_save): name one of {adapters}", "adapter")


def refuse_token_rewards(job: ScoreJob, kind: ModelKind) -> None:
    """422 for token rewards where there are none: they are an implicit model's terms of its
    raw score, which a z-score is not."""
    if not job.token_rewards:
        return
    if kind != ModelKind.implicit:
        raise APIError(422, "invalid_request", f"token_rewards applies to implicit models only, not to a {kind.value} "
                       "model", "token_rewards")
    if job.normalize == "zscore":
        raise APIError(422, "invalid_request", "token_rewards are the terms of the raw score: ask them without "
                       "normalize", "token_rewards")


def refuse_per_request(**options) -> None:
    """422 for a request option a pipeline's configuration sets per component instead."""
    for option, value in options.items():
        if value not in (None, "none"):
            raise APIError(422, "invalid_request", f"{option} is set per component in a pipeline's configuration, "
                           "not per request", option)


def component_error(index: int, failed: ComponentFailed) -> APIError:
    """An item's error when its pipeline component failed: a model's own error (its status,
    its field), a rule's timeout (504) or failure (500)."""
    cause = failed.cause
    if isinstance(cause, APIError):
        return APIError(cause.status, cause.code, f"component {failed.component!r}: {cause.message}", cause.field)
    if failed.status == "timeout":
        return APIError(504, "component_timeout", f"items[{index}]: {failed}", f"items[{index}]")
    return APIError(500, "component_failed", f"items[{index}]: {failed}", f"items[{index}]")


def model_card(runner: ModelRunner) -> ModelCard:
    """What a runner knows of its model: its name and status, all of its ModelInfo once loaded."""
    fields = dict(runner.info.__dict__) if runner.info else {"name": runner.name}
    return ModelCard(status=runner.status, error=runner.error, **fields)


# ---- /v1/score, whichever transport carries it ------------------------------------------
