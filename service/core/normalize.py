"""Normalization against a model's reference statistics (`reward_spec.yaml`'s
`reference_stats`, written by `rewardserve calibrate`): z-scores of the score and of each
dimension, and computing those statistics from a reference set."""

from __future__ import annotations

import statistics
from dataclasses import replace

from models.heads import RewardOutput
from models.spec import Moments, ReferenceStats, RewardSpec
from service.core.errors import APIError
from service.protocol.enums import ModelKind, StepAggregate


def reference_stats_for(spec: RewardSpec, aggregate: StepAggregate | None = None) -> ReferenceStats:
    """The statistics a z-score of this model uses. 422 on `normalize` when the model has
    none, or (process models) when `aggregate` is not the one they were computed with."""
    stats = spec.reference_stats
    if stats is None:
        raise APIError(422, "invalid_request", "this model has no reference_stats to normalize against; "
                       "compute them with `rewardserve calibrate`", "normalize")
    if spec.kind == ModelKind.process:
        effective = default_aggregate(spec, aggregate)
        if effective != stats.aggregate:
            raise APIError(422, "invalid_request", f"the model's reference_stats are for aggregate "
                           f"'{stats.aggregate.value}', not '{effective.value}'", "normalize")
    return stats


def zscore(out: RewardOutput, stats: ReferenceStats) -> RewardOutput:
    """`out` with score and dimensions as z-scores, (value - mean) / std. Step rewards and
    gating weights are left as they are (probabilities and mixing weights, not rewards)."""
    dims = out.dimensions
    if dims is not None:
        dims = {name: (v - stats.dimensions[name].mean) / stats.dimensions[name].std for name, v in dims.items()}
    return replace(out, score=(out.score - stats.score.mean) / stats.score.std, dimensions=dims)


FLOAT_NOISE = 1e-6  # relative spread of float32 scores that is rounding, not signal


def compute_reference_stats(scores: list[float], dimensions: dict[str, list[float]] | None = None,
                            aggregate: StepAggregate | None = None, source: str = "") -> ReferenceStats:
    """Mean and population standard deviation of a reference set's scores (and of each
    dimension's values), so that z-scoring that same set gives mean 0 and std 1.
    ValueError for fewer than two scores or a constant one."""
    if len(scores) < 2:
        raise ValueError(f"need at least 2 scored items, got {len(scores)}")
    def moments(name: str, values: list[float]) -> Moments:
        mean, std = statistics.fmean(values), statistics.pstdev(values)
        if not std > FLOAT_NOISE * max(1.0, abs(mean)):  # batched kernels may round identical rows apart
            raise ValueError(f"{name} is the same for every item: its standard deviation is 0 (up to float rounding)")
        return Moments(mean=mean, std=std)
    dims = {name: moments(f"dimension {name!r}", values) for name, values in (dimensions or {}).items()}
    return ReferenceStats(score=moments("the score", scores), dimensions=dims, aggregate=aggregate,
                          count=len(scores), source=source)


def default_aggregate(spec: RewardSpec, aggregate: StepAggregate | None) -> StepAggregate:
    """The aggregate a process request gets: its own, else the model's."""
    if spec.kind != ModelKind.process:
        raise ValueError("only process models aggregate steps")
    return StepAggregate(aggregate) if aggregate is not None else spec.process.aggregate
