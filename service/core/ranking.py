"""Ranking semantics on scored outputs: pure functions of `RewardOutput`s (no transport),
shared by every protocol so they all compare, rerank and report steps alike.

- `compare`: Bradley–Terry pairwise probabilities, each response's probability of beating
  all the others (Plackett–Luce first choice), the overall winner and, for multi-objective
  models, the winner per dimension; ties are reported as ties.
- `rerank`: candidates ordered by an aggregate: the model's score, caller weights over the
  dimensions, or Pareto fronts over the dimensions.
- `first_below`: the first step whose reward falls below a threshold.

Invalid requests raise `APIError` (422, naming the field), as the scoring core does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from models.heads import RewardOutput
from service.core.errors import APIError
from service.protocol.enums import Aggregation


def sigmoid(x: float) -> float:
    """1 / (1 + e^-x), without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


# ---- compare -------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """The best of some values: `winner` is its index, or None when several share the top
    (within the tie margin); `tied` lists those indices (empty when there is one winner)."""

    winner: int | None
    tied: list[int]


def best(values: list[float], tie_margin: float = 0.0) -> Verdict:
    top = max(values)
    at_top = [i for i, v in enumerate(values) if top - v <= tie_margin]
    return Verdict(at_top[0], []) if len(at_top) == 1 else Verdict(None, at_top)


@dataclass(frozen=True)
class Comparison:
    scores: list[float]
    win_probability: list[float]    # P(i preferred to all others) = softmax(s)_i
    overall: Verdict
    dimensions: dict[str, Verdict] | None  # multi-objective models: the winner per dimension
    pairwise: list[list[float]] | None    # pairwise[i][j] = P(i preferred to j) = sigmoid(s_i - s_j)


def compare(outputs: list[RewardOutput], tie_margin: float = 0.0, with_pairwise: bool = True) -> Comparison:
    """Responses to one prompt compared under Bradley–Terry: P(i beats j) = sigmoid(s_i - s_j)
    (the diagonal is 0.5), and under Plackett–Luce the probability that i is chosen first
    among all, softmax over the scores (for two responses, sigmoid(s_a - s_b) again). The
    winner is the highest score; scores within `tie_margin` of the top tie. For
    multi-objective models each dimension gets its own winner the same way. The pairwise
    matrix, quadratic in the number of responses, only `with_pairwise`."""
    if len(outputs) < 2:
        raise ValueError("compare needs at least two outputs")
    scores = [out.score for out in outputs]
    dimensions = None
    if outputs[0].dimensions is not None:
        dimensions = {name: best([out.dimensions[name] for out in outputs], tie_margin)
                      for name in outputs[0].dimensions}
    pairwise = [[sigmoid(a - b) for b in scores] for a in scores] if with_pairwise else None
    return Comparison(scores, softmax(scores), best(scores, tie_margin), dimensions, pairwise)


# ---- rerank --------------------------------------------------------------------------


@dataclass(frozen=True)
class Ranked:
    index: int                  # position in the request
    value: float                # the aggregate it is ranked by (relevance_score)
    pareto_rank: int | None     # pareto aggregation: 0 = on the non-dominated front, 1 = next front, ...


@dataclass(frozen=True)
class Ranking:
    aggregation: Aggregation
    weights: dict[str, float] | None
    results: list[Ranked]               # best first, cut to top_n
    pareto_front: list[int] | None      # pareto aggregation: indices on the first front, ascending


def resolve_aggregation(dimensions: list[str] | None, aggregation: Aggregation | None,
                        weights: dict[str, float] | None) -> Aggregation:
    """The aggregation a rerank request asks for: as given, else 'weights' when weights
    are given, else 'model'. 422 for weights or pareto on a model without dimensions, an
    unknown dimension name, or 'weights' without weights."""
    chosen: Aggregation = aggregation or ("weights" if weights else "model")
    if weights is not None and chosen == "model":
        raise APIError(422, "invalid_request", "weights apply with aggregation 'weights' or 'pareto'", "weights")
    if weights is not None:
        if dimensions is None:
            raise APIError(422, "invalid_request", "weights apply to multi-objective models only", "weights")
        for name in weights:
            if name not in dimensions:
                raise APIError(
                    422,
                    "invalid_request",
                    f"unknown dimension {name!r}; the model's dimensions are {dimensions}",
                    f"weights.{name}",
                )
    if chosen == "weights" and not weights:
        raise APIError(422, "invalid_request", "aggregation 'weights' needs weights", "weights")
    if chosen == "pareto" and dimensions is None:
        raise APIError(422, "invalid_request", "pareto ranking needs a multi-objective model", "aggregation")
    return chosen


def weighted(out: RewardOutput, weights: dict[str, float]) -> float:
    """Sum of weight x dimension value; dimensions not named weigh 0."""
    return sum(w * out.dimensions[name] for name, w in weights.items())


def pareto_ranks(vectors: list[list[float]]) -> list[int]:
    """Non-dominated sorting (higher is better in every coordinate): rank 0 is the set of
    vectors no other vector dominates; rank k the set non-dominated once ranks < k are
    removed. a dominates b when a >= b everywhere and a > b somewhere; equal vectors do not
    dominate each other and share a rank."""
    v = np.asarray(vectors, dtype=np.float64)
    n = len(v)
    ge = (v[:, None, :] >= v[None, :, :]).all(-1)
    gt = (v[:, None, :] > v[None, :, :]).any(-1)
    dominates = ge & gt                       # dominates[i, j]: i dominates j
    dominated_by = dominates.sum(0)           # how many still-ranked vectors dominate j
    ranks = np.full(n, -1)
    rank = 0
    while (ranks < 0).any():
        front = np.flatnonzero((dominated_by == 0) & (ranks < 0))
        ranks[front] = rank
        dominated_by = dominated_by - dominates[front].sum(0)
        rank += 1
    return ranks.tolist()


def rerank(outputs: list[RewardOutput], top_n: int | None = None, aggregation: Aggregation | None = None,
           weights: dict[str, float] | None = None) -> Ranking:
    """Candidates for one prompt, best first.

    - 'model': by the model's score (for multi-objective models its own aggregate).
    - 'weights': by sum(weights[d] * dimension d), over the dimensions the caller names.
    - 'pareto': by Pareto front over all dimensions first (`pareto_ranks`), then within a
      front by the aggregate (the caller's weights when given, else the model's score).

    Equal aggregates keep request order. `top_n` (None or 0: all) cuts the list."""
    dimensions = list(outputs[0].dimensions) if outputs and outputs[0].dimensions is not None else None
    chosen = resolve_aggregation(dimensions, aggregation, weights)
    values = [weighted(out, weights) if weights else out.score for out in outputs]
    ranks: list[int | None] = [None] * len(outputs)
    front = None
    if chosen == "pareto":
        ranks = pareto_ranks([[out.dimensions[d] for d in dimensions] for out in outputs])
        front = [i for i, r in enumerate(ranks) if r == 0]
        order = sorted(range(len(outputs)), key=lambda i: (ranks[i], -values[i], i))
    else:
        order = sorted(range(len(outputs)), key=lambda i: (-values[i], i))
    if top_n:
        order = order[:top_n]
    return Ranking(chosen, weights, [Ranked(i, values[i], ranks[i]) for i in order], front)


# ---- steps ---------------------------------------------------------------------------


def first_below(step_rewards: list[float], threshold: float) -> int | None:
    """Index of the first step whose reward is strictly below `threshold`, or None."""
    return next((i for i, r in enumerate(step_rewards) if r < threshold), None)
