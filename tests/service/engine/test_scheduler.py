"""The dynamic batching scheduler around a real tiny model: batch composition under the
token and item budgets, priority classes, deadlines, the bounded queue, cancellation,
failure isolation and in-flight dedup. The model is held busy with a gate around its real
forward so the tests decide what is queued when a batch forms; no test asserts a duration,
and every wait is bounded."""

from __future__ import annotations

import asyncio
import functools
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import pytest
import torch
from sched_helpers import GatedForward, ids, until

from models.inputs import Chat, Encoded, TextPair, TokenIds
from service.config import ModelConfig, Settings
from service.config.sections import BatchingSettings, QueueSettings
from service.engine.admission import Admission, ForwardCost, QueueFull
from service.engine.batching import BatchRecord
from service.engine.forward_thread import ItemFailed
from service.engine.runner import ModelRunner
from service.engine.scheduler import ItemTimeout, Priority, Scheduler

TEST_LIMIT_S = 60


def run(coro):
    """Run one test's coroutine, bounded as a whole."""
    return asyncio.run(asyncio.wait_for(coro, TEST_LIMIT_S))


@pytest.fixture(scope="module")
def model(load_tiny):
    return load_tiny("llama-scalar")


@pytest.fixture
def make_tokens(model):
    """n -> a distinct pre-tokenized item of n tokens (never the same ids twice)."""
    rng = random.Random(1234)
    seen: set[tuple[int, ...]] = set()

    def make(n: int) -> Encoded:
        while True:
            candidate = tuple(rng.randrange(10, 400) for _ in range(n))
            if candidate not in seen:
                seen.add(candidate)
                return model.encode(TokenIds(candidate))

    return make


@pytest.fixture
def check(model, assert_outputs_match):
    """check(results, encodings): each result is the unbatched reference of its item."""
    def check(results: list, encodings: list[Encoded]) -> None:
        assert not [r for r in results if isinstance(r, BaseException)], results
        assert_outputs_match(results, [model.forward([enc])[0] for enc in encodings])

    return check


@asynccontextmanager
async def serving(gate: GatedForward, **options):
    """A scheduler feeding `gate` on its own forward thread, with no fill wait and no queue
    time bound unless asked (so a lone plug item goes to the model at once, and a gate held
    long refuses nothing); records every batch. `options`: the scheduler's own keywords and
    the keys of the batching and queue sections."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-forward")
    records: list[BatchRecord] = []
    batching = {"max_wait_ms": 0} | {k: options.pop(k) for k in BatchingSettings.model_fields if k in options}
    queue = {"max_wait_s": None} | {k: options.pop(k) for k in QueueSettings.model_fields if k in options}
    scheduler = Scheduler(gate, executor, on_batch=records.append, batching=BatchingSettings(**batching),
                          queue=QueueSettings(**queue), **options)
    scheduler.records = records
    try:
        yield scheduler
    finally:
        gate.open()
        scheduler.close()
        await asyncio.to_thread(executor.shutdown, True)
        await asyncio.sleep(0)
        assert not gate.stuck, "a forward waited on the gate past its limit"


async def hold(scheduler: Scheduler, gate: GatedForward, plug: Encoded,
               priority: Priority = Priority.interactive) -> asyncio.Task:
    """Occupy the model: `plug` goes to the forward and blocks on the gate there."""
    task = asyncio.create_task(scheduler.submit([plug], priority))
    await gate.until_entered(1)
    assert scheduler.queued_items == 0
    return task


async def queued(scheduler: Scheduler, count: int) -> None:
    await until(lambda: scheduler.queued_items == count, f"{count} queued items (have {scheduler.queued_items})")


def fifo_padded(lengths: list[int], max_size: int, max_tokens: int) -> int:
    """Padded tokens if the same arrivals were cut into batches in order, under the same
    budgets, with no regard for length."""
    padded, batch = 0, []
    for n in lengths:
        if batch and (len(batch) >= max_size or max(batch + [n]) * (len(batch) + 1) > max_tokens):
            padded += max(batch) * len(batch)
            batch = []
        batch.append(n)
    return padded + max(batch) * len(batch)


# ---- batch composition ---------------------------------------------------------------


def test_batches_respect_budgets_and_group_lengths(model, make_tokens, check):
    """64 mixed-length items from 16 requests queued behind a busy model: every batch is
    within both budgets (an item over the token budget goes alone), every item is forwarded
    exactly once with its reference score, batches group items of similar length around
    the oldest one, and so pad less than cutting the same arrivals into batches in order."""
    max_size, max_tokens = 8, 240
    rng = random.Random(7)
    lengths = [rng.choice([rng.randrange(3, 20), rng.randrange(20, 60), rng.randrange(60, 120)]) for _ in range(62)]
    requests = [[make_tokens(n) for n in lengths[i:i + 4]] for i in range(0, 60, 4)]
    requests.append(
        [
            make_tokens(250),
            make_tokens(5),  # one item alone exceeds the token budget
            model.encode(TextPair("Hi", "Hello!")),
            model.encode(Chat((("user", "2+2?"), ("assistant", "4")))),
        ]
    )
    arrivals = [enc for request in requests for enc in request]

    async def main():
        gate = GatedForward(model.forward)
        async with serving(gate, max_batch_size=max_size, max_batch_tokens=max_tokens) as scheduler:
            plug = await hold(scheduler, gate, make_tokens(4))
            tasks = [asyncio.create_task(scheduler.submit(request)) for request in requests]
            await queued(scheduler, len(arrivals))
            assert scheduler.queued_tokens == sum(e.num_tokens for e in arrivals)
            gate.open()
            results = await asyncio.gather(*tasks)
            await plug
            return results, gate.forwarded[1:], scheduler.records[1:]

    results, batches, records = run(main())
    for request, result in zip(requests, results, strict=True):
        check(result, request)
    assert Counter(ids(e) for batch in batches for e in batch) == Counter(ids(e) for e in arrivals)
    assert [r.size for r in records] == [len(b) for b in batches]
    for batch, record in zip(batches, records):
        longest = max(e.num_tokens for e in batch)
        assert len(batch) <= max_size
        assert len(batch) == 1 or longest * len(batch) <= max_tokens, [e.num_tokens for e in batch]
        assert (record.padded_tokens, record.real_tokens) == (longest * len(batch), sum(e.num_tokens for e in batch))
    assert [len(b) for b in batches if max(e.num_tokens for e in b) > max_tokens] == [1]

    # each batch is the oldest queued item and a run of items next to it in length: nothing
    # left in the queue when it formed lies strictly inside its length range
    remaining = [ids(e) for e in arrivals]  # queue order: the submits ran in creation order
    length = {ids(e): e.num_tokens for e in arrivals}
    for batch in batches:
        members = {ids(e) for e in batch}
        assert remaining[0] in members
        low, high = min(e.num_tokens for e in batch), max(e.num_tokens for e in batch)
        assert not [length[k] for k in remaining if k not in members and low < length[k] < high], (low, high)
        remaining = [k for k in remaining if k not in members]
    assert not remaining

    real = sum(r.real_tokens for r in records)
    scheduled_ratio = 1 - real / sum(r.padded_tokens for r in records)
    fifo_ratio = 1 - real / fifo_padded([e.num_tokens for e in arrivals], max_size, max_tokens)
    assert scheduled_ratio < fifo_ratio, (scheduled_ratio, fifo_ratio)


def test_a_batch_is_the_run_around_the_anchor_that_pads_least(model, make_tokens, check):
    """The oldest item (10 tokens) with three 7-token items queued before three 13-token
    ones: the nearest lengths either side are equally near, but the run 10, 13, 13, 13
    pads 3 tokens where 7, 7, 7, 10 pads 9, so it goes first."""
    async def main():
        gate = GatedForward(model.forward)
        async with serving(gate, max_batch_size=4) as scheduler:
            plug = await hold(scheduler, gate, make_tokens(4))
            anchor, short, long = (
                make_tokens(10),
                [make_tokens(7) for _ in range(3)],
                [make_tokens(13) for _ in range(3)],
            )
            tasks = [asyncio.create_task(scheduler.submit([e], Priority.bulk)) for e in [anchor, *short, *long]]
            await queued(scheduler, 7)
            gate.open()
            results = await asyncio.gather(*tasks)
            await plug
            return [anchor, *short, *long], results, gate.forwarded[1:]

    items, results, batches = run(main())
    check([r[0] for r in results], items)
    assert [sorted(e.num_tokens for e in b) for b in batches] == [[10, 13, 13, 13], [7, 7, 7]]


@pytest.mark.parametrize("per_batch_s,expected", [
    (0.0001, [[10, 10, 10, 10], [40, 40, 40, 40]]),  # batches cost little beyond their tokens: no padding
    (10.0, [[10, 10, 10, 10, 40, 40, 40, 40]]),  # every batch costs much: one batch, padding and all
])
def test_batches_are_chosen_by_their_measured_cost(model, make_tokens, check, per_batch_s, expected):
    """Once batches of two sizes are measured, the run around the anchor taking the least
    forward time per real token goes, at the fitted cost per batch and per token."""
    async def main():
        gate = GatedForward(model.forward)
        async with serving(gate, max_batch_size=8) as scheduler:
            plug = await hold(scheduler, gate, make_tokens(4), Priority.bulk)
            for tokens in (50, 500, 50, 500):
                scheduler.admission.cost.add(tokens, per_batch_s + 1e-2 * tokens)
            items = [make_tokens(10) for _ in range(4)] + [make_tokens(40) for _ in range(4)]
            tasks = [asyncio.create_task(scheduler.submit([e], Priority.bulk)) for e in items]
            await queued(scheduler, 8)
            gate.open()
            results = await asyncio.gather(*tasks)
            await plug
            return items, results, gate.forwarded[1:]

    items, results, batches = run(main())
    check([r[0] for r in results], items)
    assert [sorted(e.num_tokens for e in b) for b in batches] == expected


def test_lone_item_goes_without_waiting_for_company_once_max_wait_passes(model, make_tokens, check):
    """An idle model with room in the batch still serves a lone item (the fill wait is
    bounded by max_wait_ms, not by the batch filling up)."""
    async def main():
        gate = GatedForward(model.forward, held=False)
        async with serving(gate, max_wait_ms=5, max_batch_size=32) as scheduler:
            item = make_tokens(6)
            result = await scheduler.submit([item])
            return item, result, gate.forwarded

    item, result, batches = run(main())
    check(result, [item])
    assert [[ids(e) for e in b] for b in batches] == [[ids(item)]]


@pytest.mark.parametrize("ranker_seen,wait_ms,expected", [
    (True, 250, [2, 2, 2, 2]),  # 2 items of 10 tokens take about 0.2 s at the measured cost
    (False, 250, [8]),  # no interactive request served: bulk batches fill
    (True, None, [8]),  # the cut turned off
])
def test_bulk_batches_are_cut_to_the_interactive_wait_while_rankers_are_served(
        model, make_tokens, check, ranker_seen, wait_ms, expected):
    """While interactive requests are being served, a bulk batch takes about
    interactive_bulk_wait_ms of forward at the measured cost (0.01 s a token here), so an
    interactive item arriving behind one waits about that long at most."""
    async def main():
        gate = GatedForward(model.forward)
        async with serving(gate, max_batch_size=8, interactive_bulk_wait_ms=wait_ms) as scheduler:
            plug = await hold(scheduler, gate, make_tokens(4), Priority.bulk)
            for tokens in (50, 500):
                scheduler.admission.cost.add(tokens, 1e-3 + 1e-2 * tokens)
            tasks = (
                [asyncio.create_task(scheduler.submit([make_tokens(3)], Priority.interactive))] if ranker_seen else []
            )
            items = [make_tokens(10) for _ in range(8)]
            tasks += [asyncio.create_task(scheduler.submit([e], Priority.bulk)) for e in items]
            await queued(scheduler, len(tasks))
            gate.open()
            results = await asyncio.gather(*tasks)
            await plug
            return items, results[len(tasks) - len(items):], scheduler.records[1:]

    items, results, records = run(main())
    check([r[0] for r in results], items)
    assert [r.size for r in records if r.priority == Priority.bulk] == expected


# ---- priorities ------------------------------------------------------------------------


def test_interactive_goes_before_queued_bulk(model, make_tokens, check):
    async def main():
        gate = GatedForward(model.forward)
        async with serving(gate, max_batch_size=3, bulk_max_delay_ms=60_000) as scheduler:
            plug = await hold(scheduler, gate, make_tokens(5), Priority.bulk)
            bulk = [[make_tokens(n) for n in (8, 9, 10)], [make_tokens(n) for n in (8, 11, 9)]]
            interactive = [[make_tokens(9), make_tokens(10)], [make_tokens(8)]]
            tasks = [asyncio.create_task(scheduler.submit(r, Priority.bulk)) for r in bulk]
            await queued(scheduler, 6)
            tasks += [asyncio.create_task(scheduler.submit(r, Priority.interactive)) for r in interactive]
            await queued(scheduler, 9)
            gate.open()
            results = await asyncio.gather(*tasks)
            await plug
            return bulk, interactive, results, gate.forwarded[1:], scheduler.records[1:]

    bulk, interactive, results, batches, records = run(main())
    for request, result in zip(bulk + interactive, results, strict=True):
        check(result, request)
    assert {ids(e) for e in batches[0]} == {ids(e) for r in interactive for e in r}
    assert records[0].priority == Priority.interactive
    assert {ids(e) for b in batches[1:] for e in b} == {ids(e) for r in bulk for e in r}
    assert all(r.priority == Priority.bulk for r in records[1:])


def test_interactive_is_not_starved_by_an_overdue_bulk_backlog(model, make_tokens, check):
    """A standing bulk backlog is always overdue (its oldest item has waited past
    bulk_max_delay_ms); interactive work that arrives still goes after one bulk batch at
    most, and overdue bulk keeps every other batch."""
    async def main():
        gate = GatedForward(model.forward)
        async with serving(gate, max_batch_size=2, bulk_max_delay_ms=0) as scheduler:
            plug = await hold(scheduler, gate, make_tokens(5), Priority.bulk)
            bulk = [make_tokens(n) for n in (6, 7, 8, 9, 10, 11, 12, 13)]
            bulk_task = asyncio.create_task(scheduler.submit(bulk, Priority.bulk))
            await queued(scheduler, 8)
            interactive = [[make_tokens(9), make_tokens(10)], [make_tokens(8), make_tokens(7)]]
            tasks = [asyncio.create_task(scheduler.submit(r, Priority.interactive)) for r in interactive]
            await queued(scheduler, 12)
            gate.open()
            results = await asyncio.gather(bulk_task, *tasks)
            await plug
            return bulk, interactive, results, scheduler.records[1:]

    bulk, interactive, results, records = run(main())
    for request, result in zip([bulk, *interactive], results, strict=True):
        check(result, request)
    # the plug was bulk, so interactive goes first, then the classes alternate while both wait
    assert [r.priority for r in records[:4]] == [Priority.interactive, Priority.bulk] * 2
    assert all(r.priority == Priority.bulk for r in records[4:])


def test_overdue_bulk_cuts_into_interactive_work_once_per_bulk_max_delay(model, make_tokens, check):
    """A bulk backlog overdue since it was queued gets a batch, and then waits
    bulk_max_delay_ms again from the end of that batch: an interactive request split into
    several batches meanwhile runs them back to back, not each behind a bulk batch."""
    async def main():
        gate = GatedForward(model.forward)
        async with serving(gate, max_batch_size=1, bulk_max_delay_ms=2_000) as scheduler:
            plug = await hold(scheduler, gate, make_tokens(5), Priority.bulk)
            bulk = [make_tokens(n) for n in (6, 7, 8)]
            bulk_task = asyncio.create_task(scheduler.submit(bulk, Priority.bulk))
            await queued(scheduler, 3)
            interactive = [make_tokens(n) for n in (9, 10, 11)]
            task = asyncio.create_task(scheduler.submit(interactive, Priority.interactive))
            await queued(scheduler, 6)
            gate.open()
            results = await asyncio.gather(bulk_task, task)
            await plug
            return bulk, interactive, results, scheduler.records[1:]

    bulk, interactive, results, records = run(main())
    for request, result in zip([bulk, interactive], results, strict=True):
        check(result, request)
    # the plug, a bulk batch, ended just before: every interactive batch goes first
    assert [r.priority for r in records] == [Priority.interactive] * 3 + [Priority.bulk] * 3


@pytest.mark.parametrize("bulk_delay_ms", [0, 20])
def test_bulk_is_not_starved_by_a_continuous_interactive_stream(bulk_delay_ms, model, make_tokens, check):
    """The model runs one batch at a time and, before each, the test tops the interactive
    queue up so it is never empty; the bulk item still gets its turn (within a bounded number
    of batches), taken while interactive items were waiting."""
    max_steps = 400

    async def main():
        gate = GatedForward(model.forward)
        async with serving(gate, max_batch_size=2, bulk_max_delay_ms=bulk_delay_ms) as scheduler:
            plug = await hold(scheduler, gate, make_tokens(5))
            target = make_tokens(7)
            bulk = asyncio.create_task(scheduler.submit([target], Priority.bulk))
            stream = [asyncio.create_task(scheduler.submit([make_tokens(7), make_tokens(7)], Priority.interactive))]
            await queued(scheduler, 3)
            waiting_interactive = None
            for step in range(2, max_steps):
                before = scheduler.queued_items
                stream.append(asyncio.create_task(scheduler.submit([make_tokens(6), make_tokens(8)],
                                                                   Priority.interactive)))
                await queued(scheduler, before + 2)
                gate.step()
                await gate.until_entered(step)
                if any(ids(e) == ids(target) for e in gate.entered[-1]):
                    waiting_interactive = scheduler.queued_items
                    break
            gate.open()
            result = await bulk
            await asyncio.gather(plug, *stream)
            return target, result, waiting_interactive

    target, result, waiting_interactive = run(main())
    assert waiting_interactive is not None, f"bulk item not served within {max_steps} batches"
    assert waiting_interactive >= 2  # it went ahead of interactive work that was waiting
    check(result, [target])


# ---- pipelining ------------------------------------------------------------------------


@asynccontextmanager
async def pipelined(gate: GatedForward, per_token_s: float, **options):
    """`serving`, with each batch prepared on a thread of its own (what was prepared is in
    scheduler.prepared) and a measured cost of `per_token_s` a token."""
    prepare_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-prepare")
    prepared: list[list[Encoded]] = []

    def prepare(batch: list[Encoded]):
        prepared.append(list(batch))
        return functools.partial(gate, batch)

    try:
        async with serving(gate, prepare=prepare, prepare_executor=prepare_thread, **options) as scheduler:
            for tokens in (50, 500):
                scheduler.admission.cost.add(tokens, 1e-4 + per_token_s * tokens)
            scheduler.prepared = prepared
            yield scheduler
    finally:
        await asyncio.to_thread(prepare_thread.shutdown, True)


def test_the_next_batch_is_prepared_while_the_forward_runs(model, make_tokens, check):
    """At a cost that says the running forward is about done, the next batch is formed and
    prepared while that forward is still held; it runs as prepared once the forward ends."""
    async def main():
        gate = GatedForward(model.forward)
        async with pipelined(gate, per_token_s=1e-6) as scheduler:
            plug = await hold(scheduler, gate, make_tokens(5), Priority.bulk)
            items = [make_tokens(n) for n in (6, 7)]
            task = asyncio.create_task(scheduler.submit(items, Priority.bulk))
            await until(lambda: len(scheduler.prepared) == 2, "the next batch prepared")
            assert len(gate.entered) == 1 and not gate.forwarded  # the plug is still held
            gate.open()
            result = await task
            await plug
            return items, result, scheduler.prepared, gate.forwarded

    items, result, prepared, forwarded = run(main())
    check(result, items)
    assert [[ids(e) for e in b] for b in prepared[1:]] == [[ids(e) for e in b] for b in forwarded[1:]]
    assert {ids(e) for e in prepared[1]} == {ids(e) for e in items}


def test_items_arriving_during_a_long_forward_join_the_next_batch(model, make_tokens, check):
    """At a cost that says the running forward has long to go, the next batch is not formed
    early: items queued one by one while it runs all join it."""
    async def main():
        gate = GatedForward(model.forward)
        async with pipelined(gate, per_token_s=100.0) as scheduler:
            plug = await hold(scheduler, gate, make_tokens(5), Priority.bulk)
            items = [make_tokens(6) for _ in range(4)]  # of one length, so no padding tells them apart
            tasks = []
            for count, enc in enumerate(items, 1):
                tasks.append(asyncio.create_task(scheduler.submit([enc], Priority.bulk)))
                await queued(scheduler, count)
            assert len(scheduler.prepared) == 1
            gate.open()
            results = await asyncio.gather(*tasks)
            await plug
            return items, results, gate.forwarded

    items, results, forwarded = run(main())
    check([r[0] for r in results], items)
    assert [{ids(e) for e in b} for b in forwarded[1:]] == [{ids(e) for e in items}]


def test_a_batch_that_fails_to_prepare_fails_only_its_offending_item(model, make_tokens, check):
    """Preparing raised (a bad item): the forward thread isolates it as it does a failing
    forward, and its batch-mates are scored."""
    bad = make_tokens(7)

    async def main():
        gate = GatedForward(model.forward, held=False, poison=lambda enc: ids(enc) == ids(bad))
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-prepare")

        def prepare(batch: list[Encoded]):
            if any(ids(e) == ids(bad) for e in batch):
                raise ValueError("cannot build this batch")
            return functools.partial(gate, batch)

        try:
            async with serving(gate, prepare=prepare, prepare_executor=executor, max_wait_ms=50) as scheduler:
                good = [make_tokens(n) for n in (6, 8)]
                return good, await scheduler.submit([good[0], bad, good[1]], Priority.bulk)
        finally:
            await asyncio.to_thread(executor.shutdown, True)

    good, results = run(main())
    assert isinstance(results[1], ItemFailed)
    check([results[0], results[2]], good)


# ---- deadlines -------------------------------------------------------------------------


def test_expired_items_time_out_while_queued_and_never_reach_the_model(model, make_tokens, check):
    """Items whose deadline passes while the model is busy are answered with ItemTimeout at
    their deadline (the model still held), leave the queue, and are never forwarded; other
    queued items are untouched and still scored."""
    async def main():
        gate = GatedForward(model.forward)
        async with serving(gate) as scheduler:
            plug = await hold(scheduler, gate, make_tokens(5))
            doomed = [make_tokens(6), make_tokens(9)]
            patient = [make_tokens(7)]
            generous = [make_tokens(8)]
            late = asyncio.create_task(scheduler.submit(doomed, timeout_s=0.05))
            others = [asyncio.create_task(scheduler.submit(patient)),
                      asyncio.create_task(scheduler.submit(generous, timeout_s=60))]
            await queued(scheduler, 4)
            timed_out = await asyncio.wait_for(late, timeout=10)  # answered with the model still busy
            assert len(gate.entered) == 1 and not plug.done()
            assert scheduler.queued_items == 2
            assert scheduler.queued_tokens == patient[0].num_tokens + generous[0].num_tokens
            gate.open()
            results = await asyncio.gather(*others)
            await plug
            return doomed, timed_out, patient + generous, [r[0] for r in results], gate.forwarded_ids()

    doomed, timed_out, kept, results, forwarded = run(main())
    assert [type(r) for r in timed_out] == [ItemTimeout, ItemTimeout]
    check(results, kept)
    assert not {ids(e) for e in doomed} & set(forwarded)


def test_a_later_duplicate_extends_the_deadline_of_shared_work(model, make_tokens, check):
    """Two waiters on one item: the earlier deadline passing does not drop it while the
    other waiter still has time, and both get the score."""
    async def main():
        gate = GatedForward(model.forward)
        async with serving(gate) as scheduler:
            plug = await hold(scheduler, gate, make_tokens(5))
            shared, marker = make_tokens(9), make_tokens(6)
            short = asyncio.create_task(scheduler.submit([shared], timeout_s=0.05))
            await queued(scheduler, 1)
            long = asyncio.create_task(scheduler.submit([shared], timeout_s=60))
            # queued after `short`'s item with the same timeout: once it has expired, so has
            # the short waiter's own deadline
            expired = await asyncio.wait_for(scheduler.submit([marker], timeout_s=0.05), timeout=10)
            assert isinstance(expired[0], ItemTimeout)
            assert (scheduler.queued_items, scheduler.queued_tokens) == (1, shared.num_tokens)
            gate.open()
            results = await asyncio.gather(short, long)
            await plug
            return shared, results, gate.forwarded_ids()

    shared, (first, second), forwarded = run(main())
    check(first, [shared])
    assert first == second
    assert forwarded.count(ids(shared)) == 1


# ---- backpressure ----------------------------------------------------------------------


@pytest.mark.parametrize("bound", ["items", "tokens"])
def test_full_queue_refuses_new_work_and_loses_nothing_admitted(bound, model, make_tokens, check):
    admitted = [[make_tokens(6), make_tokens(9)], [make_tokens(12), make_tokens(7)]]
    queued_tokens = sum(e.num_tokens for r in admitted for e in r)
    limits = {"max_items": 4} if bound == "items" else {"max_tokens": queued_tokens + 5}
    refused = [make_tokens(3)] if bound == "items" else [make_tokens(3), make_tokens(6)]

    async def main():
        gate = GatedForward(model.forward)
        async with serving(gate, **limits) as scheduler:
            plug = await hold(scheduler, gate, make_tokens(5))
            tasks = [asyncio.create_task(scheduler.submit(r)) for r in admitted]
            await queued(scheduler, 4)
            with pytest.raises(QueueFull) as full:
                await scheduler.submit(refused)
            assert full.value.retry_after_s > 0
            assert (scheduler.queued_items, scheduler.queued_tokens) == (4, queued_tokens)  # refusal took nothing
            # a duplicate of queued work adds nothing to the queue, so it is still admitted
            tasks.append(asyncio.create_task(scheduler.submit([admitted[0][1]])))
            await asyncio.sleep(0)
            assert scheduler.queued_items == 4
            gate.open()
            results = await asyncio.gather(*tasks)
            await plug
            retried = await scheduler.submit(refused)  # room again once the queue drained
            return results, retried

    results, retried = run(main())
    for request, result in zip(admitted + [[admitted[0][1]]], results, strict=True):
        check(result, request)
    check(retried, refused)


def test_a_request_too_big_for_the_bounds_is_admitted_onto_an_empty_queue(model, make_tokens, check):
    """Refusing it there would refuse it forever; behind other work it waits its turn (429)."""
    big = [make_tokens(4 + i) for i in range(6)]

    async def main():
        gate = GatedForward(model.forward, held=False)
        async with serving(gate, max_items=2, max_tokens=10) as scheduler:
            return await scheduler.submit(big), await scheduler.submit(
                big[:3], ticket=scheduler.admission.admit(3, 15, Priority.bulk)
            )

    first, second = run(main())
    check(first, big)
    check(second, big[:3])


def test_a_ticket_holds_room_while_its_request_is_tokenized(model, make_tokens, check):
    """`admit` decides before tokenizing: the room it holds counts against the bounds until
    `submit` takes it (admitting the request whatever its real size) or `release` frees it."""
    waiting, later = make_tokens(6), [make_tokens(7), make_tokens(8), make_tokens(9)]

    async def main():
        gate = GatedForward(model.forward)
        async with serving(gate, max_items=4) as scheduler:
            plug = await hold(scheduler, gate, make_tokens(5))
            first = asyncio.create_task(scheduler.submit([waiting]))
            await queued(scheduler, 1)
            ticket = scheduler.admission.admit(3, 12, Priority.bulk)
            with pytest.raises(QueueFull):
                scheduler.admission.admit(1, 1, Priority.bulk)  # 1 queued + 3 held: no room
            spare = scheduler.admission.admit(0, 0, Priority.bulk)
            scheduler.admission.release(spare)
            scheduler.admission.release(spare)  # a second release gives nothing back twice
            second = asyncio.create_task(scheduler.submit(later, Priority.bulk, ticket=ticket))
            await queued(scheduler, 4)
            assert not ticket.held
            scheduler.admission.release(ticket)  # already taken by submit: a no-op
            with pytest.raises(QueueFull):
                scheduler.admission.admit(1, 1, Priority.bulk)
            gate.open()
            results = await asyncio.gather(first, second)
            await plug
            scheduler.admission.release(scheduler.admission.admit(4, 40, Priority.bulk))  # everything given back
            return results

    (first, second) = run(main())
    check(first, [waiting])
    check(second, later)


def test_time_budget_bounds_the_work_ahead(model, make_tokens, check):
    """Past `queue.max_wait_s` of measured forward work ahead of it, new work is refused
    with the excess as its retry hint; interactive work, which goes ahead of a bulk backlog,
    is still admitted (only the running forward is ahead of it). Before the first batch is
    measured there is no estimate (and only the size bounds apply)."""
    backlog = [make_tokens(20 + i) for i in range(4)]
    late_bulk, urgent, running = make_tokens(3), make_tokens(4), make_tokens(5)

    async def main():
        gate = GatedForward(model.forward)
        async with serving(gate) as scheduler:
            assert scheduler.admission.estimated_wait_s(Priority.bulk) is None
            measured = asyncio.create_task(scheduler.submit([make_tokens(8)]))
            gate.step()
            await measured
            plug = await hold(scheduler, gate, running)
            tasks = [asyncio.create_task(scheduler.submit([enc], Priority.bulk)) for enc in backlog]
            await queued(scheduler, 4)
            ahead = scheduler.admission.estimated_wait_s(Priority.bulk)
            cost, running_s = scheduler.admission.cost, scheduler.admission.cost.seconds(running.num_tokens)
            backlog_s = cost.seconds(sum(e.num_tokens for e in backlog))
            assert backlog_s <= ahead <= backlog_s + running_s  # the running batch, less what it has run
            assert 0 <= scheduler.admission.estimated_wait_s(Priority.interactive) <= running_s
            scheduler.admission.max_wait_s = ahead / 2
            with pytest.raises(QueueFull) as full:
                await scheduler.submit([late_bulk], Priority.bulk)
            assert 0.05 <= full.value.retry_after_s <= max(0.05, ahead / 2)  # the excess, as the running batch goes on
            assert scheduler.queued_items == 4  # the refusal took nothing
            tasks.append(asyncio.create_task(scheduler.submit([urgent], Priority.interactive)))
            await queued(scheduler, 5)
            scheduler.admission.max_wait_s = ahead * 4
            tasks.append(asyncio.create_task(scheduler.submit([late_bulk], Priority.bulk)))
            await queued(scheduler, 6)
            gate.open()
            results = await asyncio.gather(*tasks)
            await plug
            return results

    results = run(main())
    for result, enc in zip(results, backlog + [urgent, late_bulk], strict=True):
        check(result, [enc])


def test_forward_cost_tells_the_cost_per_batch_from_the_cost_per_token():
    """Batches costing 20 ms each plus 0.1 ms a token: small batches' tokens/s would put
    64k tokens at 25 s; the fitted cost gives their time in full 16k-token batches."""
    cost = ForwardCost()
    for tokens in (100, 800, 100, 3200, 400):
        cost.add(tokens, 0.02 + 1e-4 * tokens)
    assert cost.seconds(65_536, batches=4) == pytest.approx(4 * 0.02 + 65_536 * 1e-4)
    same_size = ForwardCost()  # one batch size only: the average rate, overhead and all
    for _ in range(3):
        same_size.add(100, 0.03)
    assert same_size.seconds(1000) == pytest.approx(0.3)


PER_BATCH_S, PER_TOKEN_S = 0.02, 1e-4  # a machine whose forwards cost this, exactly


def test_estimated_wait_is_the_work_ahead_in_the_batches_it_takes():
    """Fed the forwards of a machine costing 20 ms a batch plus 0.1 ms a token, the estimate
    for 300 queued items of 160 tokens is their time in 10 batches of 32 items (the fewest
    both budgets allow: 16,384 tokens alone would make 3), then also of a request held while
    it is tokenized and of what is left of the running batch; past the bound, a refusal
    with the excess as its retry hint."""
    now = [100.0]
    admission = Admission(65_536, 10**8, 30.0, batch_items=32, batch_tokens=16_384, clock=lambda: now[0])
    for tokens in (234, 1872):
        admission.forwarded(tokens, PER_BATCH_S + PER_TOKEN_S * tokens)
    for _ in range(300):
        admission.queued(Priority.bulk, 160)
    assert admission.estimated_wait_s(Priority.bulk) == pytest.approx(10 * PER_BATCH_S + 48_000 * PER_TOKEN_S)

    admission.admit(20, 3200, Priority.bulk)  # 320 items: 10 batches still
    admission.formed(32, 5120)
    assert admission.forward_started(now[0], 5120) == pytest.approx(PER_BATCH_S + 5120 * PER_TOKEN_S)
    now[0] += 0.3  # of the running batch's 0.532 s
    left = PER_BATCH_S + 5120 * PER_TOKEN_S - 0.3
    assert admission.estimated_wait_s(Priority.bulk) == pytest.approx(left + 10 * PER_BATCH_S + 51_200 * PER_TOKEN_S)
    assert admission.estimated_wait_s(Priority.interactive) == pytest.approx(left)  # only the running batch is ahead
    admission.max_wait_s = 1.0
    with pytest.raises(QueueFull) as full:
        admission.admit(1, 160, Priority.bulk)
    assert full.value.retry_after_s == pytest.approx(left + 10 * PER_BATCH_S + 51_200 * PER_TOKEN_S - 1.0)
    now[0] += 1.0  # the running batch overran its estimate: nothing of it is counted any more
    assert admission.estimated_wait_s(Priority.interactive) == 0
    admission.formed(32, 5120, -1)
    assert admission.estimated_wait_s(Priority.bulk) == pytest.approx(10 * PER_BATCH_S + 51_200 * PER_TOKEN_S)


class _TimedModel:
    """A model on a fake clock: a forward costs PER_BATCH_S plus PER_TOKEN_S per padded token,
    and a second more the first time it meets a batch shape."""

    def __init__(self, model, clock: list[float]):
        self._model, self._clock, self.shapes = model, clock, []
        self.spec = model.spec

    def encode(self, item, truncate):
        return self._model.encode(item, truncate)

    def forward_unshared(self, batch: list[Encoded]) -> None:
        shape = (len(batch), max(e.num_tokens for e in batch))
        self._clock[0] += PER_BATCH_S + PER_TOKEN_S * shape[0] * shape[1] + (shape not in self.shapes)
        self.shapes.append(shape)

    def forward_clock(self) -> float:
        return self._clock[0]


def test_warm_up_seeds_the_forward_cost_with_the_models_own(model):
    """The warm-up forwards give the time bound the model's cost per batch and per token
    exactly: unpadded (padding would count as real tokens), and a shape's slow first
    forward left out."""
    clock = [0.0]
    config = ModelConfig(name="timed", path="unused")
    runner = ModelRunner(config, Settings(models=[config]))
    try:
        runner._measure_warm_forward(_TimedModel(model, clock))
        assert runner.scheduler.admission.cost.terms() == pytest.approx((PER_BATCH_S, PER_TOKEN_S))
    finally:
        runner.close()


def test_a_forward_is_costed_by_the_models_clock_on_the_forward_thread(model, make_tokens, check):
    """The time bound's cost of a forward is read by the cost clock on the forward thread
    (RewardModel.forward_clock), not by the event loop's wall clock."""
    ticks, readers = [0.0], set()

    def clock() -> float:
        readers.add(threading.current_thread().name)
        return ticks[0]

    def forward(batch: list[Encoded]):
        ticks[0] += 0.5  # what this forward costs by the clock, however long it takes
        return model.forward(batch)

    async def main():
        gate = GatedForward(forward)
        gate.open()
        async with serving(gate, cost_clock=clock) as scheduler:
            items = [make_tokens(9)]
            check(await scheduler.submit(items), items)
            assert scheduler.admission.cost.seconds(9) == pytest.approx(0.5)

    asyncio.run(main())
    assert readers == {"test-forward_0"}


def test_a_forward_on_the_hosts_cores_is_costed_in_its_threads_cpu_time(model, make_tokens):
    """A CPU forward's cost is its thread's CPU time, which the thread's waiting does not
    add to (while a burst's intake holds the cores, a forward waits for them)."""
    started = model.forward_clock()
    time.sleep(0.3)
    waited = model.forward_clock() - started
    model.forward([make_tokens(200)] * 8)
    assert waited < 0.1 and model.forward_clock() - started > waited


# ---- cancellation ----------------------------------------------------------------------


def test_cancelled_submit_drops_its_queued_items(model, make_tokens, check):
    async def main():
        gate = GatedForward(model.forward)
        async with serving(gate) as scheduler:
            plug = await hold(scheduler, gate, make_tokens(5))
            gone = [make_tokens(6), make_tokens(11)]
            kept = [make_tokens(8)]
            leaving = asyncio.create_task(scheduler.submit(gone))
            staying = asyncio.create_task(scheduler.submit(kept))
            await queued(scheduler, 3)
            leaving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leaving
            assert (scheduler.queued_items, scheduler.queued_tokens) == (1, kept[0].num_tokens)
            gate.open()
            result = await staying
            await plug
            forwarded = gate.forwarded_ids()
            again = await scheduler.submit(gone)  # a cancelled item leaves nothing stale behind
            return gone, kept, result, forwarded, again

    gone, kept, result, forwarded, again = run(main())
    check(result, kept)
    assert not {ids(e) for e in gone} & set(forwarded)
    check(again, gone)


# ---- failure isolation -----------------------------------------------------------------


@pytest.mark.parametrize("error", [RuntimeError, torch.cuda.OutOfMemoryError], ids=["runtime", "oom"])
def test_poisoned_item_fails_alone(error, model, make_tokens, check):
    """One item that makes the forward raise, in a batch with five good ones from three
    requests: it alone gets ItemFailed; its batch-mates get their reference scores, each
    computed once."""
    poison_id = 3
    async def main():
        gate = GatedForward(model.forward, poison=lambda enc: poison_id in enc.input_ids, error=error)
        async with serving(gate, max_batch_size=8) as scheduler:
            plug = await hold(scheduler, gate, make_tokens(5))
            bad = model.encode(TokenIds((50, 60, poison_id, 70, 80)))
            requests = [[make_tokens(6), bad, make_tokens(9)], [make_tokens(7), make_tokens(4)], [make_tokens(8)]]
            assert sum(poison_id in e.input_ids for r in requests for e in r) == 1
            tasks = [asyncio.create_task(scheduler.submit(r)) for r in requests]
            await queued(scheduler, 6)
            gate.open()
            results = await asyncio.gather(*tasks)
            await plug
            return requests, results, gate.entered[1], gate.forwarded_ids()

    requests, results, first_batch, forwarded = run(main())
    assert len(first_batch) == 6  # they really shared one batch
    failed = results[0][1]
    assert isinstance(failed, ItemFailed) and error.__name__ in str(failed)
    good = [(r, e) for req, res in zip(requests, results) for r, e in zip(res, req) if e is not requests[0][1]]
    check([r for r, _ in good], [e for _, e in good])
    # past the plug, the model ran each good item exactly once and the poisoned one never
    assert Counter(forwarded[1:]) == Counter(ids(e) for _, e in good)
    assert ids(requests[0][1]) not in forwarded


# ---- dedup -----------------------------------------------------------------------------


def test_identical_items_in_flight_are_forwarded_once(model, make_tokens, check):
    async def main():
        gate = GatedForward(model.forward)
        async with serving(gate) as scheduler:
            plug = await hold(scheduler, gate, make_tokens(5))
            shared = make_tokens(9)
            first = [shared, make_tokens(6)]
            second = [make_tokens(12), Encoded(list(shared.input_ids)), shared]  # also twice in one request
            tasks = [asyncio.create_task(scheduler.submit(first)),
                     asyncio.create_task(scheduler.submit(second, Priority.interactive))]
            await queued(scheduler, 3)
            gate.open()
            results = await asyncio.gather(*tasks)
            await plug
            return shared, first, second, results, gate.forwarded_ids()

    shared, first, second, (one, two), forwarded = run(main())
    check(one, first)
    check(two, second)
    assert one[0] == two[1] == two[2]
    assert forwarded.count(ids(shared)) == 1


def test_an_interactive_duplicate_promotes_queued_bulk_work(model, make_tokens, check):
    """Sharing a queued bulk item with an interactive request gives it the interactive
    class: it goes in the next batch, ahead of the bulk item queued beside it."""
    async def main():
        gate = GatedForward(model.forward)
        async with serving(gate, bulk_max_delay_ms=60_000) as scheduler:
            plug = await hold(scheduler, gate, make_tokens(5))
            shared, other = make_tokens(9), make_tokens(9)
            bulk = asyncio.create_task(scheduler.submit([other, shared], Priority.bulk))
            await queued(scheduler, 2)
            urgent = asyncio.create_task(scheduler.submit([shared], Priority.interactive))
            await asyncio.sleep(0)
            assert scheduler.queued_items == 2
            gate.open()
            results = await asyncio.gather(bulk, urgent)
            await plug
            return shared, other, results, gate.forwarded[1:], scheduler.records[1:]

    shared, other, (both, alone), batches, records = run(main())
    check(both, [other, shared])
    assert alone == both[1:]
    assert [[ids(e) for e in b] for b in batches] == [[ids(shared)], [ids(other)]]
    assert [r.priority for r in records] == [Priority.interactive, Priority.bulk]


def test_joining_work_already_in_the_forward(model, make_tokens, check):
    """A request for an item that is in the running batch waits for that forward instead
    of queueing a second one."""
    async def main():
        gate = GatedForward(model.forward)
        async with serving(gate) as scheduler:
            item = make_tokens(9)
            running = await hold(scheduler, gate, item)
            joiner = asyncio.create_task(scheduler.submit([item]))
            await asyncio.sleep(0)
            assert scheduler.queued_items == 0
            gate.open()
            return item, await running, await joiner, gate.forwarded_ids()

    item, first, second, forwarded = run(main())
    check(first, [item])
    assert first == second
    assert forwarded == [ids(item)]


def test_cancelling_one_waiter_keeps_the_shared_item_for_the_other(model, make_tokens, check):
    async def main():
        gate = GatedForward(model.forward)
        async with serving(gate) as scheduler:
            plug = await hold(scheduler, gate, make_tokens(5))
            shared = make_tokens(9)
            leaving = asyncio.create_task(scheduler.submit([shared]))
            staying = asyncio.create_task(scheduler.submit([shared], Priority.bulk))
            await queued(scheduler, 1)
            await asyncio.sleep(0)
            leaving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leaving
            assert (scheduler.queued_items, scheduler.queued_tokens) == (1, shared.num_tokens)
            gate.open()
            result = await asyncio.wait_for(staying, timeout=30)
            await plug
            return shared, result, gate.forwarded_ids()

    shared, result, forwarded = run(main())
    check(result, [shared])
    assert forwarded.count(ids(shared)) == 1


def test_cancelling_every_waiter_drops_the_shared_item(model, make_tokens):
    async def main():
        gate = GatedForward(model.forward)
        async with serving(gate) as scheduler:
            plug = await hold(scheduler, gate, make_tokens(5))
            shared = make_tokens(9)
            waiters = [asyncio.create_task(scheduler.submit([shared])) for _ in range(2)]
            await queued(scheduler, 1)
            await asyncio.sleep(0)
            for task in waiters:
                task.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
            assert (scheduler.queued_items, scheduler.queued_tokens) == (0, 0)
            gate.open()
            await plug
            return shared, gate.forwarded_ids()

    shared, forwarded = run(main())
    assert ids(shared) not in forwarded
