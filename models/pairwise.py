"""A pairwise model's preference from its two readings of a pair. Each ordered pair (A, B) is
scored as an item of its own; the model's number for it (`ordered`) is what the convention
reads with A first, and the preference P(A > B) combines both orders, so that it does not
depend on which response was shown first:

    pairrm     ordered = logit(A, B), the head's mean over tasks of score(A) - score(B);
               P(A > B) = sigmoid(logit(A, B) - logit(B, A))    (llm-blender's both-order compare)
    ab_judge   ordered = P(first) = softmax(logit "A", logit "B")[0] at the answer's position;
               P(A > B) = (P(first | A, B) + 1 - P(first | B, A)) / 2    (RLHFlow's pairpm)

P(B > A) = 1 - P(A > B) in both."""

from __future__ import annotations

import math
from typing import Literal

Convention = Literal["pairrm", "ab_judge"]


def preference(convention: Convention, forward: float, backward: float) -> float:
    """P(A > B) from the ordered readings of (A, B) (`forward`) and of (B, A) (`backward`)."""
    if convention == "pairrm":
        return _sigmoid(forward - backward)
    return (forward + 1.0 - backward) / 2


def win_rate(preferences: list[float]) -> float:
    """An item's mean preference over the others it was compared with."""
    return math.fsum(preferences) / len(preferences)


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)
