"""Admission to one model's queue, decided before a request is tokenized (which takes
seconds for a big one): `admit` holds the request's estimated room until the scheduler
queues its items, so a burst of requests cannot all pass while none of them is queued yet.

The queue is bounded in items and tokens (memory) and in time: the forward work ahead of
a new item, at the cost recent batches measured. A request is always admitted onto an
empty queue (refusing one too big for the bounds there would refuse it forever).

The work ahead is every token queued or held by a ticket, forwarded in the fewest batches
the budgets allow (max items and max tokens per batch), each costing the fitted cost per
batch plus the fitted cost per real token (`ForwardCost`), and the batches formed and not
yet finished (the one prepared, and the one running less what it has run). The fit starts
from the runner's warm-up forwards, unpadded as the scheduler's length-grouped batches
nearly are, and follows the batches really run; counting real tokens, it takes in their
padding. Forwards are timed by the model's clock (RewardModel.forward_clock: on the host's
cores, CPU time), so a burst's own intake, which takes cores from the forward only while it
arrives, does not pass for the model's speed. What it cannot see is the machine slowing
down or speeding up after it measured (another process on the same cores).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

# How fast the forward cost follows new batches: each weighs as much as the last ten together.
COST_DECAY = 0.9


class QueueFull(Exception):
    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class Ticket:
    """Queue room held for one request between `admit` and its queueing, while it is
    tokenized (its size in tokens is then an estimate)."""

    priority: Hashable
    items: int
    tokens: int
    held: bool = True


class ForwardCost:
    """A forward's time as a fixed cost per batch plus a cost per real token, fitted to
    recent batches by exponentially weighted least squares. A rate alone (tokens / s of
    recent batches) would take the small batches of a quiet model for its speed and refuse
    a burst it clears in time in full batches."""

    def __init__(self):
        self._sums = [0.0] * 5  # weighted: count, tokens, seconds, tokens^2, tokens x seconds

    def add(self, tokens: int, seconds: float) -> None:
        for i, value in enumerate((1.0, tokens, seconds, tokens * tokens, tokens * seconds)):
            self._sums[i] = COST_DECAY * self._sums[i] + value

    @property
    def measured(self) -> bool:
        return self._sums[0] > 0

    @property
    def separable(self) -> bool:
        """Whether batches of more than one size were measured, which the cost per batch
        needs to be told from the cost per token."""
        count, n, _, nn, _ = self._sums
        return count > 0 and self._variance() > 1e-9 * max(n / count, 1.0)**2

    def _variance(self) -> float:
        count, n, _, nn, _ = self._sums
        return nn / count - (n / count)**2

    def terms(self) -> tuple[float, float]:
        """(seconds per batch, seconds per real token) of the fit, once measured."""
        count, n, t, _, nt = self._sums
        mean_n, mean_t = n / count, t / count
        average = mean_t / max(mean_n, 1.0)  # seconds per token, overhead included
        slope = (nt / count - mean_n * mean_t) / self._variance() if self.separable else average
        # a full batch is never taken for more than 10x the measured batches' throughput
        per_token = max(min(max(slope, average / 10), average), 1e-12)
        return max(0.0, mean_t - per_token * mean_n), per_token

    def seconds(self, tokens: int, batches: int = 1) -> float:
        """The forward time of `tokens` real tokens in `batches` batches."""
        per_batch, per_token = self.terms()
        return per_token * tokens + per_batch * batches


class Admission:
    """`clock`: the one the scheduler times forwards by (`forward_started`)."""

    def __init__(self, max_items: int, max_tokens: int, max_wait_s: float | None, batch_items: int,
                 batch_tokens: int, clock: Callable[[], float] = time.perf_counter):
        self.max_items, self.max_tokens, self.max_wait_s = max_items, max_tokens, max_wait_s
        self._batch_items, self._batch_tokens = batch_items, batch_tokens
        self._clock = clock
        self._queued: dict[Hashable, list[int]] = defaultdict(lambda: [0, 0])  # per class: [items, tokens]
        self._held: dict[Hashable, list[int]] = defaultdict(lambda: [0, 0])  # the same, of open tickets
        self._forming = [0, 0]  # [items, tokens] of batches formed and not yet finished
        self._running_since = 0.0  # by the clock, when the last forward started
        self.cost = ForwardCost()

    # ---- what the scheduler reports ------------------------------------------------

    def queued(self, priority: Hashable, tokens: int, sign: int = 1) -> None:
        """One item of `tokens` tokens joined (sign 1) or left (-1) the class's queue."""
        counts = self._queued[priority]
        counts[0] += sign
        counts[1] += sign * tokens

    def formed(self, items: int, tokens: int, sign: int = 1) -> None:
        """A batch left the queue for the forward (sign 1), or its forward ended (-1)."""
        self._forming[0] += sign * items
        self._forming[1] += sign * tokens

    def forward_started(self, at: float, tokens: int) -> float:
        """A formed batch of `tokens` tokens started its forward at `at`, by the clock; the
        seconds it should take (inf before any batch is measured)."""
        self._running_since = at
        return self.cost.seconds(tokens) if self.cost.measured else math.inf

    def forwarded(self, tokens: int, seconds: float) -> None:
        """A batch of `tokens` real tokens took `seconds` of forward."""
        self.cost.add(tokens, seconds)

    # ---- what it answers -----------------------------------------------------------

    def depth(self, priority: Hashable) -> tuple[int, int]:
        """(items, tokens) queued in one class."""
        items, tokens = self._queued[priority]
        return items, tokens

    @property
    def queued_items(self) -> int:
        return sum(items for items, _ in self._queued.values())

    @property
    def queued_tokens(self) -> int:
        return sum(tokens for _, tokens in self._queued.values())

    def estimated_wait_s(self, priority: Hashable) -> float | None:
        """Seconds of forward work ahead of a new item of this class (None before the first
        batch is measured): the batches formed, its own class's queued and held work, and as
        much of the others', which share the forward with it while both have work."""
        if not self.cost.measured:
            return None
        own = [q + h for q, h in zip(self._queued[priority], self._held[priority])]
        total = [sum(n[i] for n in self._queued.values()) + sum(n[i] for n in self._held.values()) for i in (0, 1)]
        items, tokens = (own[i] + min(total[i] - own[i], own[i]) for i in (0, 1))
        return self._formed_s() + self._forward_s(items, tokens)

    def _formed_s(self) -> float:
        """What is left of the batches formed and not yet finished."""
        if not self._forming[0]:
            return 0.0
        return max(0.0, self._forward_s(*self._forming) - (self._clock() - self._running_since))

    def _forward_s(self, items: int, tokens: int) -> float:
        """`items` items of `tokens` tokens, in the fewest batches the budgets allow."""
        batches = max(math.ceil(items / self._batch_items), math.ceil(tokens / self._batch_tokens))
        return self.cost.seconds(tokens, batches)

    def admit(self, items: int, tokens: int, priority: Hashable) -> Ticket:
        """Room for a request of `items` items and about `tokens` tokens, held until it is
        queued or `release`d; QueueFull if it does not fit."""
        self.check(items, tokens, priority)
        ticket = Ticket(priority, items, tokens)
        self._hold(ticket, 1)
        return ticket

    def release(self, ticket: Ticket) -> None:
        """Give back a ticket's room (a no-op once given back)."""
        if ticket.held:
            ticket.held = False
            self._hold(ticket, -1)

    def check(self, items: int, tokens: int, priority: Hashable) -> None:
        """QueueFull unless `items` items of `tokens` tokens fit now."""
        ahead_items = self.queued_items + sum(n for n, _ in self._held.values())
        ahead_tokens = self.queued_tokens + sum(t for _, t in self._held.values())
        if ahead_items == 0:
            return
        if ahead_items + items > self.max_items or ahead_tokens + tokens > self.max_tokens:
            raise QueueFull(f"queue full ({ahead_items} items, {ahead_tokens} tokens queued or being tokenized)",
                            retry_after_s=self.retry_hint(ahead_items, ahead_tokens))
        wait = self.estimated_wait_s(priority)
        if self.max_wait_s is not None and wait is not None and wait > self.max_wait_s:
            raise QueueFull(f"queue full (about {wait:.1f}s of work ahead; queue.max_wait_s is {self.max_wait_s:g})",
                            retry_after_s=max(0.05, wait - self.max_wait_s))

    def retry_hint(self, ahead_items: int, ahead_tokens: int) -> float:
        """About when the work ahead is done (a guess before the first batch is measured)."""
        if not self.cost.measured:
            return round(max(0.05, 0.05 * (ahead_tokens // self._batch_tokens + 1)), 3)
        return round(max(0.05, self._formed_s() + self._forward_s(ahead_items, ahead_tokens)), 3)

    def _hold(self, ticket: Ticket, sign: int) -> None:
        held = self._held[ticket.priority]
        held[0] += sign * ticket.items
        held[1] += sign * ticket.tokens
