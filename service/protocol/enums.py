"""The closed vocabularies of the API. The model layer's reward specs use the same
`ModelKind` and `StepAggregate` (imported from here), so a kind means one thing everywhere."""

from __future__ import annotations

from enum import Enum
from typing import Literal


class ModelKind(str, Enum):
    scalar = "scalar"
    multi_objective = "multi_objective"
    process = "process"
    implicit = "implicit"  # a DPO-trained policy scored against its reference (models.implicit)
    pairwise = "pairwise"  # reads a prompt and two responses: how much the first beats the second (models.pairwise)
    pipeline = "pipeline"  # served pipelines only: no model has this kind


class StepAggregate(str, Enum):
    min = "min"
    product = "product"
    last = "last"
    mean = "mean"


class Priority(str, Enum):
    interactive = "interactive"
    bulk = "bulk"


class CacheMode(str, Enum):
    use = "use"          # read, and write on a miss
    refresh = "refresh"  # recompute and overwrite
    bypass = "bypass"    # neither read nor write


Truncate = Literal["left", "right"]
Normalize = Literal["none", "zscore"]
Aggregation = Literal["model", "weights", "pareto"]
OnItemError = Literal["request", "item"]
PairwiseMode = Literal["vs_reference", "group"]  # a pairwise model's one score per item (models.spec.PairwiseSpec)
