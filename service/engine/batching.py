"""Which queued items make the next batch of one class, given their lengths: a pure rule, so
it is tested on lengths alone (service.engine.scheduler applies it to its queue).

The oldest item anchors the batch (FIFO progress). Of the runs of items in length order
that hold it and fit the budgets (items, and padded tokens = longest x count), the one that
takes the least forward time per real token goes, at the model's measured cost: a cost per
batch plus one per padded token. Where batches cost little beyond their tokens (a CPU), a
shorter run that pads less wins; where each batch costs much (a GPU reading every weight),
full batches do. Until batches of two sizes are measured: the most items, then the least
padding. Given a time slice, runs are also cut to about that much forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.engine.admission import ForwardCost


@dataclass
class BatchRecord:
    """What one forward looked like, for metrics and tests."""

    size: int
    padded_tokens: int
    real_tokens: int
    priority: str  # a service.engine.scheduler.Priority
    forward_s: float = 0.0
    queue_wait_s: list[float] = field(default_factory=list)  # per item: queued until its batch formed

    @property
    def padding_ratio(self) -> float:
        return 1.0 - self.real_tokens / self.padded_tokens


@dataclass(frozen=True)
class Budgets:
    max_items: int
    max_tokens: int  # padded
    slice_s: float | None = None  # forward seconds, at the measured cost


def best_run(lengths: list[int], at: int, budgets: Budgets, cost: ForwardCost) -> tuple[int, int]:
    """(start, end) of the chosen run of `lengths` (sorted ascending), which holds index `at`."""
    per_batch, per_token = cost.terms() if cost.separable else (None, None)
    sliced = budgets.slice_s is not None and cost.measured

    def too_big(count: int, padded: int) -> bool:
        if count == 1:  # an item goes alone whatever it costs
            return False
        return padded > budgets.max_tokens or (sliced and cost.seconds(padded) > budgets.slice_s)

    best, best_key = (at, at + 1), None
    for start in range(max(0, at - budgets.max_items + 1), at + 1):
        real = sum(lengths[start:at])
        for end in range(at + 1, min(len(lengths), start + budgets.max_items) + 1):
            count, padded = end - start, lengths[end - 1] * (end - start)
            if too_big(count, padded):
                break
            real += lengths[end - 1]
            if per_batch is None:
                key = (-count, padded / real)
            else:  # in token-equivalents per real token, rounded so that equal costs tie on size
                key = (round((per_batch / per_token + padded) / real, 6), -count)
            if best_key is None or key < best_key:
                best, best_key = (start, end), key
    return best
