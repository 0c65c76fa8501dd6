"""The transport-independent scoring core: every protocol (HTTP, gRPC, KServe v2, the
compatibility endpoints) turns its request into a `ScoreJob` and gets back a `Scored`, so
they all return the same numbers and the same errors (as `APIError`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from models.heads import RewardOutput
from models.inputs import ScoreInput, Truncate
from models.spec import ModelKind, StepAggregate
from service.cache import CacheMode
from service.config import Settings
from service.errors import APIError
from service.ranking import Normalize, reference_stats_for, zscore
from service.registry import ModelRegistry
from service.runner import ItemError
from service.scheduler import Priority, QueueFull


@dataclass(frozen=True)
class ScoreJob:
    inputs: list[ScoreInput]
    model: str | None = None
    truncate: Truncate | None = None
    aggregate: StepAggregate | None = None
    priority: Priority | None = None
    timeout_ms: float | None = None
    normalize: Normalize | None = None
    cache: CacheMode = CacheMode.use


@dataclass(frozen=True)
class Scored:
    model: str
    revision: str
    kind: ModelKind
    outputs: list[RewardOutput]
    normalized: bool = False

    @property
    def total_tokens(self) -> int:
        return sum(out.num_tokens for out in self.outputs)


class Scorer:
    def __init__(self, registry: ModelRegistry, settings: Settings):
        self.registry = registry
        self.settings = settings

    async def score(self, job: ScoreJob) -> Scored:
        """Every item of `job` scored by one model, in order; cancelling the caller drops
        its queued items."""
        limit = self.settings.max_items_per_request
        if len(job.inputs) > limit:
            raise APIError(422, "too_many_items", f"{len(job.inputs)} items; at most {limit} per request", "items")
        runner = self.registry.get(job.model)
        model = runner.model
        if job.aggregate is not None and model.spec.kind != ModelKind.process:
            raise APIError(422, "invalid_request", "aggregate applies to process models only", "aggregate")
        stats = reference_stats_for(model.spec, job.aggregate) if job.normalize == "zscore" else None
        priority = job.priority or Priority(self.settings.default_priority)
        deadline = None if job.timeout_ms is None else time.monotonic() + job.timeout_ms / 1000
        try:
            outputs = await runner.score(job.inputs, job.truncate, priority, deadline, job.cache)
        except ItemError as err:
            raise APIError.from_item_error(err) from err
        except QueueFull as err:
            raise APIError.from_queue_full(err) from err
        if job.aggregate is not None:
            outputs = [out.with_step_aggregate(job.aggregate) for out in outputs]
        if stats is not None:
            outputs = [zscore(out, stats) for out in outputs]
        return Scored(runner.name, model.revision, model.spec.kind, outputs, normalized=stats is not None)
