"""The transport-independent scoring core: every protocol (HTTP, gRPC, KServe v2, the
compatibility endpoints) turns its request into a `ScoreJob` and gets back a `Scored`, so
they all return the same numbers and the same errors (as `APIError`)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from pydantic import ValidationError

from models.heads import RewardOutput
from models.inputs import ScoreInput
from models.spec import RewardSpec
from service.config import Settings
from service.core.errors import APIError, ItemNamer, renamed, status_message, validation_error
from service.core.inputs import item_input
from service.core.normalize import reference_stats_for, zscore
from service.engine.admission import QueueFull
from service.engine.registry import ModelNotFound, ModelNotReady, ModelRegistry
from service.engine.runner import ItemError, ModelRunner
from service.protocol.catalog import ModelCard, ModelDetail, ModelList, ModelObject
from service.protocol.enums import CacheMode, ModelKind, Normalize, OnItemError, Priority, StepAggregate, Truncate
from service.protocol.scoring import FailedItem, ItemErrorDetail, ItemResult, ScoreRequest, ScoreResponse, Usage


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

    def runner(self, name: str | None, ready: bool = True) -> ModelRunner:
        """The runner of the model a request names (the default when None): 404 when no
        model has that name, 503 (with `ready`) while it is not ready to score."""
        try:
            return self.registry.get(name) if ready else self.registry.find(name)
        except (ModelNotFound, ModelNotReady) as err:
            raise APIError.from_lookup(err) from None

    def spec(self, name: str | None) -> RewardSpec:
        return self.runner(name).model.spec

    def model_cards(self) -> list[ModelCard]:
        return [model_card(runner) for runner in self.registry.runners.values()]

    def model_list(self) -> ModelList:
        objects = [self._model_object(runner, name)
                   for runner in self.registry.runners.values() for name in (runner.name, *runner.config.aliases)]
        return ModelList(data=objects, models=self.model_cards())

    def model_detail(self, name: str) -> ModelDetail:
        """The model a request may call `name` (404 when none): its OpenAI object and card."""
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
        its queued items."""
        limit = self.settings.server.max_items_per_request
        if len(job.inputs) > limit:
            raise APIError(422, "too_many_items", f"{len(job.inputs)} items; at most {limit} per request", "items")
        runner = self.runner(job.model)
        model = runner.model
        if job.aggregate is not None and model.spec.kind != ModelKind.process:
            raise APIError(422, "invalid_request", "aggregate applies to process models only", "aggregate")
        stats = reference_stats_for(model.spec, job.aggregate) if job.normalize == "zscore" else None
        priority = job.priority or Priority(self.settings.batching.default_priority)
        deadline = None if job.timeout_ms is None else time.monotonic() + job.timeout_ms / 1000
        try:
            results = await runner.score(job.inputs, job.truncate, priority, deadline, job.cache,
                                         item_errors=job.on_item_error == "item", keep=job.keep)
        except ItemError as err:
            raise APIError.from_item_error(err) from err
        except QueueFull as err:
            raise APIError.from_queue_full(err) from err
        errors = {i: APIError.from_item_error(r) for i, r in enumerate(results) if isinstance(r, ItemError)}
        outputs = [None if i in errors else _finished(out, job.aggregate, stats) for i, out in enumerate(results)]
        return Scored(runner.name, model.revision, model.spec.kind, outputs, normalized=stats is not None,
                      errors=errors)

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


def model_card(runner: ModelRunner) -> ModelCard:
    """What a runner knows of its model: its name and status, all of its ModelInfo once loaded."""
    fields = dict(runner.info.__dict__) if runner.info else {"name": runner.name}
    return ModelCard(status=runner.status, error=runner.error, **fields)


# ---- /v1/score, whichever transport carries it ------------------------------------------

_JOB_OPTIONS = [f.name for f in dataclasses.fields(ScoreJob) if f.name != "inputs"]


def parse_score_request(body: dict) -> ScoreRequest:
    """`body` (a /v1/score JSON body as Python values) validated as HTTP validates it; an
    invalid one raises the APIError HTTP would answer with."""
    try:
        return ScoreRequest.model_validate(body)
    except ValidationError as err:
        raise validation_error(err.errors()) from None


def score_job(body: ScoreRequest, deadline_ms: float | None = None) -> ScoreJob:
    """The job a request with this body makes (every option ScoreJob and the request share
    is carried over), its timeout cut to `deadline_ms` when that is sooner."""
    options = {name: getattr(body, name) for name in _JOB_OPTIONS if name in type(body).model_fields}
    if deadline_ms is not None and (options.get("timeout_ms") is None or deadline_ms < options["timeout_ms"]):
        options["timeout_ms"] = deadline_ms
    return ScoreJob(inputs=[item_input(item) for item in body.items], **options)


def score_response(scored: Scored) -> ScoreResponse:
    return ScoreResponse(
        model=scored.model, revision=scored.revision, kind=scored.kind, normalized=scored.normalized or None,
        results=[failed_item(i, scored.errors[i]) if out is None else item_result(i, out)
                 for i, out in enumerate(scored.outputs)],
        usage=Usage(total_tokens=scored.total_tokens),
    )


def item_result(index: int, out: RewardOutput) -> ItemResult:
    return ItemResult(index=index, score=out.score, dimensions=out.dimensions, gating_weights=out.gating_weights,
                      step_rewards=out.step_rewards, num_tokens=out.num_tokens, truncated=out.truncated,
                      cached=out.cached or None)


def failed_item(index: int, err: APIError) -> FailedItem:
    return FailedItem(index=index, error=ItemErrorDetail(http_status=err.status, code=err.code,
                                                         message=status_message(err), field=err.field))
