"""What a pipeline makes of one item: every component's value and status, and the reward."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Literal

from models.heads import RewardOutput
from service.config.pipeline import Affine, Clip, EnsembleComponent, Sigmoid, Transform

Status = Literal["ok", "timeout", "error"]


@dataclass(frozen=True)
class ComponentValue:
    """One component's value for one item; `message` says why when it is not ok (its value
    is then the pipeline's default, or None when the item failed); `spread` is an
    ensemble's standard deviation across its models; `extras` a user function's other numbers;
    `cause` a model's own error."""

    value: float | None
    status: Status = "ok"
    message: str | None = None
    spread: float | None = None
    extras: dict[str, float] | None = None
    cause: Exception | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class PipelineOutput(RewardOutput):
    """A pipeline's answer for one item, read like a model's: `score` is the reward and
    `dimensions` the components' values, so every transport serves it unchanged."""

    components: dict[str, ComponentValue] = field(default_factory=dict)
    uncertainty: float | None = None


@dataclass(frozen=True)
class ComponentFailed(Exception):
    """An item that failed because a component did (on_component_error 'fail'); `cause` is
    the model's own error for a model component."""

    component: str
    status: Status
    message: str
    cause: Exception | None = None

    def __str__(self) -> str:
        return f"component {self.component!r}: {self.message}"


def transformed(value: float, transforms: list[Transform]) -> float:
    """`value` through the component's transforms in order (zscore was applied by the model)."""
    for t in transforms:
        if isinstance(t, Sigmoid):
            value = 1 / (1 + math.exp(-value)) if value >= 0 else math.exp(value) / (1 + math.exp(value))
        elif isinstance(t, Clip):
            value = min(value, t.high) if t.high is not None else value
            value = max(value, t.low) if t.low is not None else value
        elif isinstance(t, Affine):
            value = t.scale * value + t.shift
    return value


def ensemble_value(component: EnsembleComponent, scores: list[float]) -> ComponentValue:
    """The members' scores aggregated; their population standard deviation is the spread."""
    spread = statistics.pstdev(scores)
    if component.aggregate == "min":
        value = min(scores)
    elif component.aggregate == "median":
        value = statistics.median(scores)
    else:
        value = statistics.fmean(scores) - (component.k * spread if component.aggregate == "lcb" else 0.0)
    return ComponentValue(value, spread=spread)
