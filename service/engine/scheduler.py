"""Dynamic batching for one model: the queue between the transport and the model runner.

Requests are split into items and queued by priority class. Whenever the model's forward
thread is free, the scheduler forms the next batch:

- class: `interactive` first; once the oldest `bulk` item has waited past
  `bulk_max_delay_ms`, bulk takes every other batch (neither class is ever starved);
- members: the oldest item of that class anchors the batch (FIFO progress); of the runs
  of queued items in length order that hold it and fit the padded-token budget (longest
  x count) and the item budget, the one that takes the least forward time per real token
  goes, at the model's measured cost (a cost per batch plus one per padded token: where
  batches cost little beyond their tokens, a shorter run that pads less wins);
- fill: a `bulk` batch that is not full waits at most `max_wait_ms` (from the anchor's
  arrival) for more items, so one-rollout-per-request trainers still fill batches when
  the model is idle. An `interactive` batch goes at once: a ranker's request arrives
  whole, and the next one rarely comes within milliseconds; under load, interactive
  work accumulates while the model is busy and batches anyway.

Expired items are answered with a timeout before they reach the model; cancelled ones are
dropped. The queue's bounds are its `admission` (service.engine.admission): past them,
`QueueFull` with a retry hint, and nothing already admitted is lost. Identical items in flight are
computed once. A failing batch is split in halves and retried so only the offending item
fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from enum import Enum

from models.heads import RewardOutput
from models.inputs import Encoded
from service.engine.admission import Admission, Ticket

log = logging.getLogger("rewardserve")


class Priority(str, Enum):
    interactive = "interactive"
    bulk = "bulk"


class ItemTimeout(Exception):
    """The item's deadline passed before the model got to it."""


class ItemFailed(Exception):
    """The model raised on this item alone (after its batch was split down to it)."""


@dataclass
class BatchRecord:
    """What one forward looked like, for metrics and tests."""

    size: int
    padded_tokens: int
    real_tokens: int
    priority: Priority
    forward_s: float = 0.0
    queue_wait_s: list[float] = field(default_factory=list)  # per item: queued until its batch formed

    @property
    def padding_ratio(self) -> float:
        return 1.0 - self.real_tokens / self.padded_tokens


@dataclass(eq=False)
class _Work:
    encoded: Encoded
    priority: Priority
    deadline: float | None
    enqueued: float
    future: asyncio.Future
    key: tuple
    waiters: int = 1
    queued: bool = field(default=True)
    timer: asyncio.TimerHandle | None = None

    @property
    def tokens(self) -> int:
        return self.encoded.num_tokens


def dedup_key(enc: Encoded) -> tuple:
    types = tuple(enc.token_type_ids) if enc.token_type_ids else None
    return (tuple(enc.input_ids), types, enc.prompt_length, enc.truncated, tuple(enc.marker_positions))


class Scheduler:
    def __init__(
        self,
        forward: Callable[[list[Encoded]], list[RewardOutput]],
        executor: Executor,
        *,
        max_batch_size: int = 32,
        max_batch_tokens: int = 16384,
        max_wait_ms: float = 2.0,
        bulk_max_delay_ms: float = 500.0,
        max_queue_items: int = 65536,
        max_queue_tokens: int = 16_777_216,
        max_queue_wait_s: float | None = None,
        on_batch: Callable[[BatchRecord], None] | None = None,
    ):
        self._forward = forward
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000
        self.bulk_max_delay_s = bulk_max_delay_ms / 1000
        self.admission = Admission(max_queue_items, max_queue_tokens, max_queue_wait_s, max_batch_tokens)
        self._on_batch = on_batch
        self._queues: dict[Priority, list[_Work]] = {p: [] for p in Priority}
        self._in_flight: dict[tuple, _Work] = {}
        self._wakeup = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._last_class: Priority | None = None  # the class of the batch formed last

    # ---- queueing ----------------------------------------------------------------

    @property
    def queued_items(self) -> int:
        return self.admission.queued_items

    @property
    def queued_tokens(self) -> int:
        return self.admission.queued_tokens

    async def submit(self, encoded: list[Encoded], priority: Priority = Priority.bulk,
                     timeout_s: float | None = None, ticket: Ticket | None = None) -> list[RewardOutput | Exception]:
        """Queue every item and wait for all of them; per item, an output or the exception
        that stopped it (ItemTimeout, ItemFailed). With the request's `ticket` it was
        admitted already; without, it is admitted here (or QueueFull). Cancelling the
        caller drops its items."""
        self._ensure_running()
        now = time.monotonic()
        deadline = now + timeout_s if timeout_s is not None else None
        if ticket is not None:
            self.admission.release(ticket)
        else:
            fresh = {}
            for enc in encoded:
                key = dedup_key(enc)
                if key not in self._in_flight and key not in fresh:
                    fresh[key] = enc
            self.admission.check(len(fresh), sum(e.num_tokens for e in fresh.values()), priority)
        works: list[_Work] = []
        for enc in encoded:
            key = dedup_key(enc)
            work = self._in_flight.get(key)
            if work is None:
                work = _Work(enc, priority, deadline, now, asyncio.get_running_loop().create_future(), key, waiters=0)
                self._in_flight[key] = work
                self._queues[priority].append(work)
                self.admission.queued(priority, work.tokens)
                if timeout_s is not None:
                    work.timer = asyncio.get_running_loop().call_later(timeout_s, self._deadline_passed, work)
            else:
                self._merge(work, priority, deadline)
            work.waiters += 1
            works.append(work)
        self._wakeup.set()
        try:
            return await asyncio.gather(*(asyncio.shield(w.future) for w in works), return_exceptions=True)
        except asyncio.CancelledError:
            for work in works:
                self._release(work)
            raise

    def _merge(self, work: _Work, priority: Priority, deadline: float | None) -> None:
        """A duplicate joins queued work: the stricter class and the later deadline win, so
        no waiter gets a worse deal than it asked for."""
        if not work.queued:
            return
        if priority == Priority.interactive and work.priority == Priority.bulk:
            self._queues[Priority.bulk].remove(work)
            self._queues[Priority.interactive].append(work)
            self.admission.queued(Priority.bulk, work.tokens, -1)
            self.admission.queued(priority, work.tokens)
            work.priority = priority
        if work.deadline is not None:
            work.deadline = None if deadline is None else max(work.deadline, deadline)

    def _release(self, work: _Work) -> None:
        work.waiters -= 1
        if work.waiters == 0 and work.queued:
            self._dequeue(work)
            self._finish(work, asyncio.CancelledError())

    def _deadline_passed(self, work: _Work) -> None:
        """Timer: a still-queued item is answered at its deadline, even while the model is
        busy with another batch (not only when the next batch forms)."""
        work.timer = None
        if not work.queued or work.deadline is None:
            return
        remaining = work.deadline - time.monotonic()
        if remaining > 0:  # a later waiter extended the deadline
            work.timer = asyncio.get_running_loop().call_later(remaining, self._deadline_passed, work)
            return
        self._dequeue(work)
        self._finish(work, ItemTimeout("deadline passed while queued"))
        self._wakeup.set()

    def _dequeue(self, work: _Work) -> None:
        self._queues[work.priority].remove(work)
        work.queued = False
        if work.timer is not None:
            work.timer.cancel()
            work.timer = None
        self.admission.queued(work.priority, work.tokens, -1)

    def _finish(self, work: _Work, result: RewardOutput | BaseException) -> None:
        self._in_flight.pop(work.key, None)
        if work.future.done():
            return
        if isinstance(result, BaseException):
            if isinstance(result, asyncio.CancelledError):
                work.future.cancel()
            else:
                work.future.set_exception(result)
        else:
            work.future.set_result(result)

    # ---- batch formation ---------------------------------------------------------

    def _ensure_running(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="scheduler")

    def _expire(self, now: float) -> None:
        for queue in self._queues.values():
            for work in [w for w in queue if w.deadline is not None and w.deadline <= now]:
                self._dequeue(work)
                self._finish(work, ItemTimeout("deadline passed while queued"))

    def _pick_class(self, now: float) -> Priority | None:
        """Interactive first. Bulk work that has waited past bulk_max_delay_ms takes every
        other batch: bulk always progresses, and under a standing bulk backlog (whose oldest
        item is always overdue) interactive work still waits behind one bulk batch at most."""
        bulk, interactive = self._queues[Priority.bulk], self._queues[Priority.interactive]
        if not interactive:
            return Priority.bulk if bulk else None
        overdue = bool(bulk) and now - bulk[0].enqueued >= self.bulk_max_delay_s
        return Priority.bulk if overdue and self._last_class != Priority.bulk else Priority.interactive

    def _form(self, priority: Priority) -> tuple[list[_Work], bool]:
        """Of the runs of queued items in length order that hold the anchor and fit the
        budgets, the one of least forward time per real token at the measured cost (a cost
        per batch plus one per padded token; until batches of two sizes are measured: the
        most items, then the least padding); and whether the batch is full (nothing more
        could join, or items that could were left for a better batch)."""
        queue = self._queues[priority]
        anchor = queue[0]
        ordered = sorted(queue, key=lambda w: w.tokens)
        at = ordered.index(anchor)
        per_batch, per_token = self.admission.cost.terms() if self.admission.cost.separable else (None, None)
        best, best_key = [anchor], None
        for start in range(max(0, at - self.max_batch_size + 1), at + 1):
            real = sum(w.tokens for w in ordered[start:at])
            for end in range(at + 1, min(len(ordered), start + self.max_batch_size) + 1):
                count, padded = end - start, ordered[end - 1].tokens * (end - start)
                if padded > self.max_batch_tokens and count > 1:
                    break
                real += ordered[end - 1].tokens
                if per_batch is None:
                    key = (-count, padded / real)
                else:  # in token-equivalents per real token, rounded so that equal costs tie on size
                    key = (round((per_batch / per_token + padded) / real, 6), -count)
                if best_key is None or key < best_key:
                    best, best_key = ordered[start:end], key
        longest = best[-1].tokens
        full = (len(best) >= self.max_batch_size or longest * (len(best) + 1) > self.max_batch_tokens
                or len(best) < len(queue))
        return best, full

    async def _next_batch(self) -> list[_Work]:
        while True:
            now = time.monotonic()
            self._expire(now)
            priority = self._pick_class(now)
            if priority is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch, full = self._form(priority)
            wait = batch[0].enqueued + self.max_wait_s - now if priority == Priority.bulk else 0.0
            if full or wait <= 0:
                for work in batch:
                    self._dequeue(work)
                self._last_class = priority
                return batch
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=wait)
            except TimeoutError:
                pass

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            formed = time.monotonic()
            started = time.perf_counter()
            results = await loop.run_in_executor(self._executor, self._forward_isolating, [w.encoded for w in batch])
            forward_s = time.perf_counter() - started
            self.admission.forwarded(sum(w.tokens for w in batch), forward_s)
            for work, result in zip(batch, results):
                self._finish(work, result)
            if self._on_batch:
                longest = max(w.tokens for w in batch)
                self._on_batch(BatchRecord(len(batch), longest * len(batch), sum(w.tokens for w in batch),
                                           batch[0].priority, forward_s, [formed - w.enqueued for w in batch]))

    def _forward_isolating(self, batch: list[Encoded]) -> list[RewardOutput | Exception]:
        """Runs on the forward thread. A failing batch is halved until the failure is
        pinned on single items; the rest still get their scores."""
        try:
            return self._forward(batch)
        except Exception as err:  # noqa: BLE001 - any model failure is isolated, then reported per item
            if len(batch) == 1:
                log.warning("item failed in forward: %s: %s", type(err).__name__, err)
                return [ItemFailed(f"{type(err).__name__}: {err}")]
            _free_device_cache()
            middle = len(batch) // 2
            return self._forward_isolating(batch[:middle]) + self._forward_isolating(batch[middle:])

    def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        for queue in self._queues.values():
            for work in list(queue):
                self._dequeue(work)
                self._finish(work, asyncio.CancelledError())


def _free_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
