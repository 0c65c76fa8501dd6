"""The clients' keyword options, typed: each is the request field of the same name
(service.protocol), so type checkers and editors know what a call takes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypedDict

from service.protocol.enums import (
    Aggregation,
    CacheMode,
    Normalize,
    OnItemError,
    PairwiseMode,
    Priority,
    StepAggregate,
    Truncate,
)


class ItemScoring(TypedDict, total=False):
    """How /v1/score scores items (what a trainer's reward function passes on)."""

    truncate: Truncate | None
    aggregate: StepAggregate | str | None
    priority: Priority | str | None
    timeout_ms: float | None
    normalize: Normalize
    cache: CacheMode | str
    on_item_error: OnItemError
    deterministic: bool | None
    adapter: str | None
    token_rewards: bool
    pairwise_mode: PairwiseMode | str | None


class ScoreOptions(ItemScoring, total=False):
    model: str | None


class RankingOptions(TypedDict, total=False):
    model: str | None
    truncate: Truncate | None
    aggregate: StepAggregate | str | None
    normalize: Normalize
    priority: Priority | str | None
    timeout_ms: float | None
    adapter: str | None


class CompareOptions(RankingOptions, total=False):
    messages: Sequence[Mapping[str, str]] | None
    tie_margin: float
    pairwise: bool | None


class RerankOptions(RankingOptions, total=False):
    messages: Sequence[Mapping[str, str]] | None
    top_n: int | None
    return_documents: bool
    aggregation: Aggregation | None
    weights: Mapping[str, float] | None
    truncate_prompt_tokens: int | None
    schedule: str | None
    rounds: int | None


class StepsOptions(RankingOptions, total=False):
    threshold: float | None
