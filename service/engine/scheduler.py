"""Dynamic batching for one model: the queue between the transport and the model runner.

Requests are split into items and queued by priority class. Whenever the model's forward
thread is free, the scheduler forms the next batch:

- class: `interactive` first; bulk work that has waited `bulk_max_delay_ms` (since it was
  queued, or since the last bulk batch ended) takes the next batch, so neither class is
  ever starved and a standing bulk backlog cuts into interactive work at most once per
  `bulk_max_delay_ms`;
- members: the oldest item of that class anchors a run of queued items in length order,
  chosen by its forward time per real token (service.engine.batching). While interactive
  requests are being served (one within `INTERACTIVE_RECENT_S`), a bulk batch is cut to about
  `interactive_bulk_wait_ms` of forward: the most an interactive item arriving just after
  it started waits behind it (forwards are not preemptible);
- alone: an item submitted `alone` (a deterministic request's) is a batch of its own, never
  joined by another, so its score is the same bits whatever else is queued (on this CPU, even
  batch-mates of its own length change the last bits);
- adapter: a batch's items are scored by one LoRA adapter (or all by the base model), the
  anchor's (models.adapters);
- fill: a `bulk` batch that is not full waits at most `max_wait_ms` (from the anchor's
  arrival) for more items, so one-rollout-per-request trainers still fill batches when
  the model is idle. An `interactive` batch goes at once: a ranker's request arrives
  whole, and the next one rarely comes within milliseconds; under load, interactive
  work accumulates while the model is busy and batches anyway.

Batches are pipelined: the next is formed and prepared (its inputs built, on a thread of its
own) just before the running forward should end, overlapping it while late arrivals still join.

Expired items are answered with a timeout before they reach the model; cancelled ones are
dropped. The queue's bounds are its `admission` (service.engine.admission): past them,
`QueueFull` with a retry hint, and nothing already admitted is lost. Identical items in flight are
computed once. A failing batch is split in halves and retried so only the offending item
fails.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from models.heads import RewardOutput
from models.inputs import Encoded
from service.config.sections import BatchingSettings, QueueSettings
from service.engine.admission import Admission, Ticket
from service.engine.batching import BatchRecord, Budgets, best_run
from service.engine.forward_thread import IsolatingForward, Prepared, attempt
from service.protocol.enums import Priority

# How recent an interactive request keeps bulk batches cut to `interactive_bulk_wait_ms`: a
# ranker's traffic comes seconds apart, and between two requests the bulk batch that starts
# is the one the next request waits behind.
INTERACTIVE_RECENT_S = 60.0
PREPARE_DECAY = 0.9  # how fast the measured preparation time follows new batches


class ItemTimeout(Exception):
    """The item's deadline passed before the model got to it."""


@dataclass(eq=False)
class _Work:
    encoded: Encoded
    priority: Priority
    deadline: float | None
    enqueued: float
    future: asyncio.Future
    key: tuple
    waiters: int = 1
    queued: bool = True
    alone: bool = False  # forwarded in a batch of its own
    timer: asyncio.TimerHandle | None = None

    @property
    def tokens(self) -> int:
        return self.encoded.num_tokens


def dedup_key(enc: Encoded) -> tuple:
    types = tuple(enc.token_type_ids) if enc.token_type_ids else None
    return (tuple(enc.input_ids), types, enc.prompt_length, enc.truncated, tuple(enc.marker_positions), enc.adapter)


class Scheduler:
    """`forward` runs a batch on `executor` (the model's one forward thread). `prepare`, run on
    `prepare_executor`, builds a batch's inputs ahead of its forward and returns it ready to
    run (a Prepared); without it, batches are built as they run. `prepare_alone` builds the
    forward of an item submitted `alone` (default: as any batch is). `batching` and `queue` are
    the settings' sections (their defaults are the settings' defaults)."""

    def __init__(
        self,
        forward: Callable[[list[Encoded]], list[RewardOutput]],
        executor: Executor,
        *,
        prepare: Callable[[list[Encoded]], Prepared] | None = None,
        prepare_executor: Executor | None = None,
        batching: BatchingSettings = BatchingSettings(),
        queue: QueueSettings = QueueSettings(),
        cost_clock: Callable[[], float] = time.perf_counter,
        on_batch: Callable[[BatchRecord], None] | None = None,
        prepare_alone: Callable[[list[Encoded]], Prepared] | None = None,
    ):
        self._forward = forward
        self._run_forward = IsolatingForward(forward, cost_clock)
        self._executor = executor
        self._prepare = prepare
        self._prepare_executor = prepare_executor
        self._prepare_alone = prepare_alone
        self.max_batch_size = batching.max_batch_size
        self.max_batch_tokens = batching.max_batch_tokens
        self.max_wait_s = batching.max_wait_ms / 1000
        self.bulk_max_delay_s = batching.bulk_max_delay_ms / 1000
        bulk_wait_ms = batching.interactive_bulk_wait_ms
        self.interactive_bulk_wait_s = None if bulk_wait_ms is None else bulk_wait_ms / 1000
        self.admission = Admission(queue.max_items, queue.max_tokens, queue.max_wait_s, batching.max_batch_size,
                                   batching.max_batch_tokens)
        self._on_batch = on_batch
        self._queues: dict[Priority, list[_Work]] = {p: [] for p in Priority}
        self._in_flight: dict[tuple, _Work] = {}
        self._wakeup = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._last_class: Priority | None = None  # the class of the batch formed last
        self._last_bulk_end = float("-inf")  # when the last bulk forward finished
        self._last_interactive = float("-inf")  # when the last interactive request came
        self._prepare_s = 0.0  # recent batches' preparation time
        self._preparing: list[_Work] = []  # the batch formed next, until its forward starts

    # ---- queueing ----------------------------------------------------------------

    @property
    def queued_items(self) -> int:
        return self.admission.queued_items

    @property
    def queued_tokens(self) -> int:
        return self.admission.queued_tokens

    async def submit(self, encoded: list[Encoded], priority: Priority = Priority.bulk,
                     timeout_s: float | None = None, ticket: Ticket | None = None,
                     alone: bool = False) -> list[RewardOutput | Exception]:
        """Queue every item and wait for all of them; per item, an output or the exception
        that stopped it (ItemTimeout, forward_thread.ItemFailed). With the request's `ticket` it was
        admitted already; without, it is admitted here (or QueueFull). With `alone`, each item
        is forwarded in a batch of its own, and shares its computation only with identical
        items also submitted alone. Cancelling the caller drops its items."""
        self._ensure_running()
        now = time.monotonic()
        deadline = now + timeout_s if timeout_s is not None else None
        if priority == Priority.interactive:
            self._last_interactive = now
        if ticket is not None:
            self.admission.release(ticket)
        else:
            fresh = {}
            for enc in encoded:
                key = (dedup_key(enc), alone)
                if key not in self._in_flight and key not in fresh:
                    fresh[key] = enc
            self.admission.check(len(fresh), sum(e.num_tokens for e in fresh.values()), priority)
        works: list[_Work] = []
        for enc in encoded:
            key = (dedup_key(enc), alone)
            work = self._in_flight.get(key)
            if work is None:
                work = _Work(enc, priority, deadline, now, asyncio.get_running_loop().create_future(), key, waiters=0,
                             alone=alone)
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
        """Interactive first. Bulk work that has waited bulk_max_delay_ms, since it was queued
        or since the last bulk batch ended, takes the next batch, and never two in a row
        while interactive work waits: bulk always progresses, and a standing bulk backlog
        (whose oldest item is always overdue) cuts into a stream of interactive batches once
        per bulk_max_delay_ms, not after every one of them."""
        bulk, interactive = self._queues[Priority.bulk], self._queues[Priority.interactive]
        if not interactive:
            return Priority.bulk if bulk else None
        overdue = bool(bulk) and now - max(bulk[0].enqueued, self._last_bulk_end) >= self.bulk_max_delay_s
        return Priority.bulk if overdue and self._last_class != Priority.bulk else Priority.interactive

    def _slice_s(self, priority: Priority, now: float) -> float | None:
        """The forward time a bulk batch is cut to while interactive requests are being
        served (None: uncut)."""
        recent = now - self._last_interactive < INTERACTIVE_RECENT_S
        return self.interactive_bulk_wait_s if priority == Priority.bulk and recent else None

    def _form(self, priority: Priority, slice_s: float | None = None) -> tuple[list[_Work], bool]:
        """The class's next batch (service.engine.batching), and whether it is full: nothing
        more could join, or items that could were left for a better batch. An anchor that goes
        alone is its own full batch; otherwise items that go alone, and those of another LoRA
        adapter than the anchor's, are left out."""
        queue = self._queues[priority]
        if queue[0].alone:
            return [queue[0]], True
        adapter = queue[0].encoded.adapter
        ordered = sorted((w for w in queue if not w.alone and w.encoded.adapter == adapter), key=lambda w: w.tokens)
        start, end = best_run([w.tokens for w in ordered], ordered.index(queue[0]),
                              Budgets(self.max_batch_size, self.max_batch_tokens, slice_s), self.admission.cost)
        best = ordered[start:end]
        full = (len(best) >= self.max_batch_size or best[-1].tokens * (len(best) + 1) > self.max_batch_tokens
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
            batch, full = self._form(priority, self._slice_s(priority, now))
            wait = batch[0].enqueued + self.max_wait_s - now if priority == Priority.bulk else 0.0
            if full or wait <= 0:
                for work in batch:
                    self._dequeue(work)
                self.admission.formed(len(batch), sum(w.tokens for w in batch))
                self._last_class = priority
                return batch
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=wait)
            except TimeoutError:
                pass

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        running: asyncio.Future | None = None  # the forward in flight
        expected_end = 0.0  # when it should finish, at the measured cost
        while True:
            if running is not None:
                await self._until_next_is_due(running, expected_end)
            self._preparing = batch = await self._next_batch()
            formed = time.monotonic()
            prepared = await self._prepared(loop, [w.encoded for w in batch], batch[0].alone)
            if running is not None:
                await asyncio.wait([running])
            self._preparing = []
            started = time.perf_counter()
            running = loop.run_in_executor(self._executor, self._run_forward, [w.encoded for w in batch], prepared)
            running.add_done_callback(functools.partial(self._forwarded, batch, formed, started))
            expected_end = time.monotonic() + self.admission.forward_started(started, sum(w.tokens for w in batch))

    async def _until_next_is_due(self, running: asyncio.Future, expected_end: float) -> None:
        """Wait while the running forward is not about to end: the next batch is formed then,
        with time to prepare it before the forward is done, so late arrivals still join it
        (with nothing to prepare, when the forward is done)."""
        wait = expected_end - (2 * self._prepare_s + 0.001) - time.monotonic() if self._prepare else float("inf")
        if wait > 0 and not running.done():
            await asyncio.wait([running], timeout=None if wait == float("inf") else wait)

    async def _prepared(self, loop: asyncio.AbstractEventLoop, batch: list[Encoded],
                        alone: bool = False) -> Prepared | Exception:
        """The batch ready to run (or what preparing it raised, for the forward thread to
        isolate), built on the preparation thread while the running forward goes on."""
        prepare = self._prepare_alone if alone and self._prepare_alone is not None else self._prepare
        if prepare is None:
            return functools.partial(self._forward, batch)
        started = time.perf_counter()
        prepared = await loop.run_in_executor(self._prepare_executor, attempt, prepare, batch)
        self._prepare_s = PREPARE_DECAY * self._prepare_s + (1 - PREPARE_DECAY) * (time.perf_counter() - started)
        return prepared

    def _forwarded(self, batch: list[_Work], formed: float, started: float, done: asyncio.Future) -> None:
        """A forward finished: its items answered, its cost measured and recorded."""
        forward_s = time.perf_counter() - started
        tokens = sum(w.tokens for w in batch)
        self.admission.formed(len(batch), tokens, -1)
        if done.cancelled():
            return
        error = done.exception()
        results, cost_s = done.result() if error is None else ([error] * len(batch), forward_s)
        self.admission.forwarded(tokens, cost_s)
        if batch[0].priority == Priority.bulk:
            self._last_bulk_end = time.monotonic()
        for work, result in zip(batch, results):
            self._finish(work, result)
        if self._on_batch:
            self._on_batch(BatchRecord(len(batch), max(w.tokens for w in batch) * len(batch), tokens,
                                       batch[0].priority, forward_s, [formed - w.enqueued for w in batch]))

    def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        for queue in self._queues.values():
            for work in list(queue):
                self._dequeue(work)
                self._finish(work, asyncio.CancelledError())
        for work in self._preparing:
            self._finish(work, asyncio.CancelledError())

