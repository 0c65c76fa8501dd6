"""Admission to one model's queue, decided before a request is tokenized (which takes
seconds for a big one): `admit` holds the request's estimated room until the scheduler
queues its items, so a burst of requests cannot all pass while none of them is queued yet.

The queue is bounded in items and tokens (memory) and in time: the forward work ahead of
a new item at the token throughput recent batches measured. A request is always admitted
onto an empty queue (refusing one too big for the bounds there would refuse it forever).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass


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


class Admission:
    def __init__(self, max_items: int, max_tokens: int, max_wait_s: float | None, batch_tokens: int):
        self.max_items, self.max_tokens, self.max_wait_s = max_items, max_tokens, max_wait_s
        self._batch_tokens = batch_tokens
        self._queued: dict[Hashable, list[int]] = defaultdict(lambda: [0, 0])  # per class: [items, tokens]
        self._held: dict[Hashable, list[int]] = defaultdict(lambda: [0, 0])  # the same, of open tickets
        self._recent_forward_s = 0.05
        self.tokens_per_s: float | None = None  # real tokens per second of forward, once measured

    # ---- what the scheduler reports ------------------------------------------------

    def queued(self, priority: Hashable, tokens: int, sign: int = 1) -> None:
        """One item of `tokens` tokens joined (sign 1) or left (-1) the class's queue."""
        counts = self._queued[priority]
        counts[0] += sign
        counts[1] += sign * tokens

    def forwarded(self, tokens: int, seconds: float) -> None:
        """A batch of `tokens` real tokens took `seconds` of forward."""
        self._recent_forward_s = 0.8 * self._recent_forward_s + 0.2 * seconds
        rate = tokens / max(seconds, 1e-6)
        self.tokens_per_s = rate if self.tokens_per_s is None else 0.8 * self.tokens_per_s + 0.2 * rate

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
        batch is measured): its own class's queued and held tokens, and as much of the
        others', which take every other batch while both have work."""
        if self.tokens_per_s is None:
            return None
        own = self._queued[priority][1] + self._held[priority][1]
        total = sum(t for _, t in self._queued.values()) + sum(t for _, t in self._held.values())
        return (own + min(total - own, own)) / self.tokens_per_s

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
                            retry_after_s=self.retry_hint(ahead_tokens))
        wait = self.estimated_wait_s(priority)
        if self.max_wait_s is not None and wait is not None and wait > self.max_wait_s:
            raise QueueFull(f"queue full (about {wait:.1f}s of work ahead; max_queue_wait_s is {self.max_wait_s:g})",
                            retry_after_s=max(0.05, wait - self.max_wait_s))

    def retry_hint(self, ahead_tokens: int) -> float:
        batches_ahead = max(1, ahead_tokens // self._batch_tokens + 1)
        return round(max(0.05, batches_ahead * self._recent_forward_s), 3)

    def _hold(self, ticket: Ticket, sign: int) -> None:
        held = self._held[ticket.priority]
        held[0] += sign * ticket.items
        held[1] += sign * ticket.tokens
