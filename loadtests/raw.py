"""The references a server is measured against, taken in-process with no server at all:

- the raw ceiling: `RewardModel.forward` alone over pre-encoded, length-sorted batches cut
  with the service's own budgets (items and padded tokens), so nothing but the forward and
  its unavoidable padding is timed;
- a single forward per rerank request: the least latency any server could answer it in.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from loadtests.model import padding, to_input
from models.reward_model import RewardModel
from service.engine.runner import plan_batches


@dataclass(frozen=True)
class Ceiling:
    items: int
    tokens: int
    padded_tokens: int
    forward_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.forward_s

    @property
    def items_per_s(self) -> float:
        return self.items / self.forward_s

    @property
    def padding_ratio(self) -> float:
        return 1 - self.tokens / self.padded_tokens


def ceiling(model: RewardModel, items: list[dict], max_batch_size: int, max_batch_tokens: int) -> Ceiling:
    """Forward-only throughput over `items`, batched as the service would batch them if
    it held them all at once."""
    encoded = [model.encode(to_input(item)) for item in items]
    lengths = [e.num_tokens for e in encoded]
    batches = [[encoded[i] for i in batch] for batch in plan_batches(lengths, max_batch_size, max_batch_tokens)]
    model.forward(batches[-1])  # the widest batch, so allocation is not timed
    started = time.perf_counter()
    for batch in batches:
        model.forward(batch)
    elapsed = time.perf_counter() - started
    real, padded = padding([[e.num_tokens for e in batch] for batch in batches])
    return Ceiling(len(encoded), real, padded, elapsed)


@dataclass(frozen=True)
class SingleForward:
    """Per-request times (seconds) of one forward of the whole request, and of encoding
    its text plus that forward (what a server must do at the very least)."""

    forward_s: list[float]
    encode_forward_s: list[float]

    @property
    def forward_p50_ms(self) -> float:
        return statistics.median(self.forward_s) * 1000

    @property
    def encode_forward_p50_ms(self) -> float:
        return statistics.median(self.encode_forward_s) * 1000


def single_forward(model: RewardModel, requests: list[list[dict]]) -> SingleForward:
    """Each request timed alone (after one untimed run of it), as one batch."""
    forward_s, encode_forward_s = [], []
    for items in requests:
        inputs = [to_input(item) for item in items]
        model.score(inputs)
        started = time.perf_counter()
        encoded = [model.encode(x) for x in inputs]
        encoded_at = time.perf_counter()
        model.forward(encoded)
        done = time.perf_counter()
        forward_s.append(done - encoded_at)
        encode_forward_s.append(done - started)
    return SingleForward(forward_s, encode_forward_s)
