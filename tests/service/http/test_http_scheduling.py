"""Scheduling seen from HTTP, over a real socket: deadlines (504), the bounded queue (429
with Retry-After), a client that goes away (its queued items dropped), an item that makes
the model fail (500 for its request alone) and parity with the unbatched reference under
concurrent load. The served model's forward is wrapped in a gate so a test decides when
the model is busy; no test asserts a duration, and every wait is bounded."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict

import httpx
import pytest
from http_helpers import (
    assert_error,
    assert_result_matches,
    live_server,
    reference,
    sample_items,
    served_input,
    wait_until_loaded,
)
from sched_helpers import GatedForward, ids, intercept_forward, until

from models.spec import ModelKind
from service.app import create_app
from service.config import ModelConfig, Settings
from service.config.sections import QueueSettings
from service.engine.admission import ForwardCost
from service.engine.scheduler import Priority, dedup_key

NAMES = ["llama-scalar", "llama-gating", "qwen2-prm"]
TEST_LIMIT_S = 60


def run(coro):
    """Run one test's coroutine, bounded as a whole."""
    return asyncio.run(asyncio.wait_for(coro, TEST_LIMIT_S))


def _settings(model_dirs, names, **sections) -> Settings:
    """No result cache: these tests hold and count forwards, which a cache hit skips."""
    models = [ModelConfig(name=n, path=str(model_dirs[n])) for n in names]
    return Settings(models=models, cache={"max_bytes": 0}, **sections)


def _serve(app):
    with live_server(app) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            ready = wait_until_loaded(client)
        assert ready.status_code == 200, ready.text
        yield url


@pytest.fixture(scope="module")
def app(tiny_model_dirs):
    return create_app(_settings(tiny_model_dirs, NAMES,
                                batching={"max_batch_size": 8, "max_batch_tokens": 1024, "max_wait_ms": 2}))


@pytest.fixture(scope="module")
def base_url(app):
    yield from _serve(app)


@pytest.fixture(scope="module")
def small_queue_app(tiny_model_dirs):
    """llama-scalar alone, queueing at most 3 items."""
    return create_app(_settings(tiny_model_dirs, ["llama-scalar"], queue={"max_items": 3}, batching={"max_wait_ms": 0}))


@pytest.fixture(scope="module")
def small_queue_url(small_queue_app):
    yield from _serve(small_queue_app)


@pytest.fixture
def gate_model(monkeypatch):
    """gate_model(app, name, **options) -> the GatedForward now standing in front of that
    served model's real forward (held unless told otherwise). Every gate is opened at the
    end of the test, so no forward is left waiting."""
    gates: list[GatedForward] = []

    def install(app, name: str, **options) -> GatedForward:
        model = app.state.registry.runners[name].model
        gate = intercept_forward(monkeypatch, model, lambda forward: GatedForward(forward, **options))
        gates.append(gate)
        return gate

    yield install
    for gate in gates:
        gate.open()
    assert not any(gate.stuck for gate in gates), "a forward waited on the gate past its limit"


def scheduler_of(app, name: str):
    return app.state.registry.runners[name].scheduler


def tokens(*input_ids: int) -> dict:
    return {"input_ids": list(input_ids)}


def encoded_ids(load_tiny, name: str, item: dict) -> tuple[int, ...]:
    return ids(load_tiny(name).encode(served_input(item)))


async def hold(client: httpx.AsyncClient, gate: GatedForward, name: str, item: dict) -> asyncio.Task:
    """Occupy the model with a one-item request whose forward waits on the gate."""
    task = asyncio.create_task(client.post("/v1/score", json={"model": name, "items": [item]}))
    await gate.until_entered(1)
    return task


async def queued(scheduler, count: int) -> None:
    await until(lambda: scheduler.queued_items == count, f"{count} queued items (have {scheduler.queued_items})")


def assert_scored(response: httpx.Response, model, items: list[dict]) -> None:
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(len(items)))
    for result, item in zip(results, items, strict=True):
        assert_result_matches(result, reference(model, item))


PLUG = tokens(11, 12, 13, 14, 15)


# ---- deadlines -------------------------------------------------------------------------


def test_deadline_passing_while_queued_is_504(app, base_url, gate_model, load_tiny):
    """With the model busy, a request with timeout_ms gets 504 deadline_exceeded at its
    deadline (the model still busy), its items leave the queue and never reach the model."""
    gate = gate_model(app, "llama-scalar")
    scheduler = scheduler_of(app, "llama-scalar")
    late = [tokens(21, 22, 23), {"prompt": "Hi there", "response": "Hello, how can I help?"}]

    async def main():
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            plug = await hold(client, gate, "llama-scalar", PLUG)
            response = await client.post("/v1/score", json={"model": "llama-scalar", "items": late, "timeout_ms": 100},
                                         timeout=10)
            assert not plug.done() and len(gate.entered) == 1  # answered while the model was still busy
            assert (scheduler.queued_items, scheduler.queued_tokens) == (0, 0)
            gate.open()
            return response, await plug

    response, plugged = run(main())
    assert_error(response, 504, "deadline_exceeded", "timeout_ms")
    assert_scored(plugged, load_tiny("llama-scalar"), [PLUG])
    assert not {encoded_ids(load_tiny, "llama-scalar", item) for item in late} & set(gate.forwarded_ids())


# ---- backpressure ----------------------------------------------------------------------


def test_full_queue_is_429_with_retry_after_and_admitted_requests_complete(
        small_queue_app, small_queue_url, gate_model, load_tiny):
    gate = gate_model(small_queue_app, "llama-scalar")
    scheduler = scheduler_of(small_queue_app, "llama-scalar")
    admitted = [[tokens(31, 32, 33), {"prompt": "Hi", "response": "Hello!"}], [tokens(41, 42)]]
    refused = [tokens(51, 52, 53, 54)]

    async def main():
        async with httpx.AsyncClient(base_url=small_queue_url, timeout=30) as client:
            plug = await hold(client, gate, "llama-scalar", PLUG)
            tasks = [asyncio.create_task(client.post("/v1/score", json={"items": items})) for items in admitted]
            await queued(scheduler, 3)
            full = await client.post("/v1/score", json={"items": refused})
            assert scheduler.queued_items == 3
            gate.open()
            done = await asyncio.gather(plug, *tasks)
            retried = await client.post("/v1/score", json={"items": refused})
            return full, done, retried

    full, (plugged, *responses), retried = run(main())
    error = assert_error(full, 429, "queue_full", None)
    assert "queue full" in error["message"]
    assert int(full.headers["Retry-After"]) >= 1
    model = load_tiny("llama-scalar")
    assert_scored(plugged, model, [PLUG])
    for response, items in zip(responses, admitted, strict=True):
        assert_scored(response, model, items)
    assert_scored(retried, model, refused)


def test_a_fresh_server_admits_a_burst_it_clears_within_the_default_bound(tiny_model_dirs):
    """Just started (warm-up done, no request served yet), under the default
    queue.max_wait_s: 150 concurrent 2-item requests are all admitted and scored. The time
    bound holds from the first request on the forward cost its warm-up measured."""
    app = create_app(_settings(tiny_model_dirs, ["llama-scalar"]))
    assert app.state.settings.queue == QueueSettings()
    rng = random.Random(7)
    requests = [[tokens(*(rng.randrange(10, 400) for _ in range(96))) for _ in range(2)] for _ in range(150)]

    async def main(url):
        admission = scheduler_of(app, "llama-scalar").admission
        assert admission.cost.separable and admission.estimated_wait_s(Priority.bulk) == 0  # seeded by the warm-up
        limits = httpx.Limits(max_connections=len(requests))
        async with httpx.AsyncClient(base_url=url, timeout=TEST_LIMIT_S, limits=limits) as client:
            return await asyncio.gather(*(client.post("/v1/score", json={"items": items, "priority": "bulk"})
                                          for items in requests))

    for url in _serve(app):
        responses = run(main(url))
    assert Counter(r.status_code for r in responses) == {200: len(requests)}
    assert all(len(r.json()["results"]) == 2 for r in responses)


@pytest.mark.parametrize("queued_before", [3, 1], ids=["queue_full", "room_for_less"])
def test_admission_refuses_before_tokenizing(queued_before, small_queue_app, small_queue_url, gate_model,
                                             monkeypatch):
    """A request the queue has no room for is 429 before any of its items is encoded (a big
    request's tokenization is the slow part of a refusal otherwise): with the queue at its
    bound, and with room left but less than the request needs."""
    gate = gate_model(small_queue_app, "llama-scalar")
    scheduler = scheduler_of(small_queue_app, "llama-scalar")
    runner = small_queue_app.state.registry.runners["llama-scalar"]
    encoded_items = []
    real_encode_all = runner.encode_all
    monkeypatch.setattr(runner, "encode_all", lambda inputs, *args: (encoded_items.append(len(inputs)),
                                                                       real_encode_all(inputs, *args))[1])

    async def main():
        async with httpx.AsyncClient(base_url=small_queue_url, timeout=30) as client:
            plug = await hold(client, gate, "llama-scalar", PLUG)
            filler_items = [tokens(31 + 2 * i, 32 + 2 * i) for i in range(queued_before)]
            filler = asyncio.create_task(client.post("/v1/score", json={"items": filler_items}))
            await queued(scheduler, queued_before)
            before = list(encoded_items)
            big = [{"prompt": "Hi", "response": f"answer {i}"} for i in range(500 if queued_before == 3 else 3)]
            full = await client.post("/v1/score", json={"items": big})
            after = list(encoded_items)
            gate.open()
            await asyncio.gather(plug, filler)
            return full, before, after

    full, before, after = run(main())
    assert_error(full, 429, "queue_full", None)
    assert after == before  # the refused request's items were never encoded


# ---- disconnects -----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["cancelled", "client_timeout"])
def test_disconnected_client_has_its_queued_items_dropped(how, app, base_url, gate_model, load_tiny):
    """A client that goes away while its items are queued (it cancels the request, or its
    own read timeout fires): the server drops its items from the queue and the model never
    sees them; a request queued beside it is still scored."""
    gate = gate_model(app, "llama-scalar")
    scheduler = scheduler_of(app, "llama-scalar")
    leaving = [tokens(61, 62, 63), tokens(64, 65), {"prompt": "Bye", "response": "See you later."}]
    staying = [tokens(71, 72, 73, 74)]

    async def main():
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client, \
                httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(30, read=2.0)) as impatient:
            plug = await hold(client, gate, "llama-scalar", PLUG)
            stays = asyncio.create_task(client.post("/v1/score", json={"items": staying}))
            await queued(scheduler, 1)
            goes = asyncio.create_task(impatient.post("/v1/score", json={"items": leaving}))
            await queued(scheduler, 4)
            if how == "cancelled":
                goes.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await goes
            else:
                with pytest.raises(httpx.ReadTimeout):
                    await goes
            await queued(scheduler, 1)
            assert scheduler.queued_tokens == len(staying[0]["input_ids"])
            gate.open()
            return await plug, await stays

    plugged, stayed = run(main())
    model = load_tiny("llama-scalar")
    assert_scored(plugged, model, [PLUG])
    assert_scored(stayed, model, staying)
    assert not {encoded_ids(load_tiny, "llama-scalar", item) for item in leaving} & set(gate.forwarded_ids())


# ---- failure isolation -----------------------------------------------------------------


def one_batch_for_all(monkeypatch, scheduler) -> None:
    """A forward cost whose fixed cost per batch dwarfs any padding, kept as it is: the
    scheduler then forms one batch of everything queued, whatever the items' lengths."""
    cost = ForwardCost()
    for tokens in (10, 1000):
        cost.add(tokens, 1.0 + 1e-6 * tokens)
    monkeypatch.setattr(cost, "add", lambda tokens, seconds: None)
    monkeypatch.setattr(scheduler.admission, "cost", cost)


def test_poisoned_item_fails_its_request_alone(app, base_url, gate_model, load_tiny, monkeypatch):
    """One item that makes the forward raise shares a batch with five good items from three
    requests: its request gets 500 inference_failed naming the item; the others get 200
    with their reference scores."""
    poison_id = 397
    gate = gate_model(app, "llama-scalar", poison=lambda enc: poison_id in enc.input_ids)
    scheduler = scheduler_of(app, "llama-scalar")
    one_batch_for_all(monkeypatch, scheduler)
    good = [[{"prompt": "What is 2 + 2?", "response": "4"}, tokens(81, 82, 83)],
            [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}]]
    poisoned = [tokens(91, 92), tokens(93, poison_id, 94), {"prompt": "Q", "response": "A fine answer."}]
    every = [item for items in good + [poisoned] for item in items]
    assert [poison_id in encoded_ids(load_tiny, "llama-scalar", item) for item in every] == [False] * 4 + [True, False]

    async def main():
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            plug = await hold(client, gate, "llama-scalar", PLUG)
            tasks = [
                asyncio.create_task(client.post("/v1/score", json={"items": items})) for items in good + [poisoned]
            ]
            await queued(scheduler, len(every))
            gate.open()
            return await asyncio.gather(plug, *tasks)

    plugged, *goods, bad = run(main())
    assert len(gate.entered[1]) == len(every)  # all in one batch
    model = load_tiny("llama-scalar")
    for response, items in zip(goods, good, strict=True):
        assert_scored(response, model, items)
    assert_scored(plugged, model, [PLUG])
    error = assert_error(bad, 500, "inference_failed", "items[1]")
    assert "RuntimeError" in error["message"]
    assert encoded_ids(load_tiny, "llama-scalar", poisoned[1]) not in gate.forwarded_ids()


# ---- parity under load -----------------------------------------------------------------


def _load(load_tiny) -> list[tuple[str, dict]]:
    """24 requests over three model kinds: rotating slices of every item form and length,
    both priorities, some with a generous deadline."""
    requests = []
    for i in range(24):
        name = NAMES[i % len(NAMES)]
        items = sample_items(load_tiny(name))
        size = 1 + i % 4
        body = {"model": name, "items": [items[(i + k) % len(items)] for k in range(size)],
                "priority": "bulk" if i % 2 else "interactive"}
        if i % 3 == 0:
            body["timeout_ms"] = 60_000
        requests.append((name, body))
    return requests


def _plug(name: str, load_tiny) -> dict:
    if load_tiny(name).spec.kind == ModelKind.process:
        return {"prompt": "Plug.", "steps": ["Hold the model."]}
    return {"prompt": "Plug.", "response": "Hold the model."}


@pytest.mark.parametrize("start", ["held", "free"])
def test_concurrent_requests_equal_the_unbatched_reference(start, app, base_url, gate_model, load_tiny):
    """24 concurrent requests on three models. `held`: every model is kept busy until all
    of them are queued, so batches are formed across requests (and identical items are
    shared); `free`: they race the scheduler. Every number equals the item scored alone."""
    requests = _load(load_tiny)
    gates = {name: gate_model(app, name, held=start == "held") for name in NAMES}
    owners: dict[str, dict[tuple, set[int]]] = {name: defaultdict(set) for name in NAMES}
    for r, (name, body) in enumerate(requests):
        for item in body["items"]:
            owners[name][dedup_key(load_tiny(name).encode(served_input(item)))].add(r)

    async def main():
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            plugs = []
            if start == "held":
                plugs = [await hold(client, gates[name], name, _plug(name, load_tiny)) for name in NAMES]
            tasks = [asyncio.create_task(client.post("/v1/score", json=body)) for _, body in requests]
            if start == "held":
                for name in NAMES:
                    await queued(scheduler_of(app, name), len(owners[name]))
                for gate in gates.values():
                    gate.open()
            responses = await asyncio.gather(*tasks)
            for plug in plugs:
                assert (await plug).status_code == 200
            return responses

    responses = run(main())
    for (name, body), response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["model"] == name
        assert_scored(response, load_tiny(name), body["items"])
    for name, gate in gates.items():
        forwarded = [dedup_key(enc) for batch in gate.forwarded for enc in batch]
        assert set(owners[name]) <= set(forwarded)
        if start == "held":  # each distinct item computed once, in batches shared across requests
            assert Counter(k for k in forwarded if k in owners[name]) == Counter(owners[name].keys())
            spans = [set().union(*(owners[name].get(dedup_key(e), set()) for e in b)) for b in gate.forwarded[1:]]
            assert max(len(s) for s in spans) > 1


def test_pipelined_batches_equal_the_unbatched_reference(tiny_model_dirs, load_tiny, monkeypatch):
    """With `pipeline: true` (each batch's inputs built on their own thread while the forward
    before it runs, the default on GPUs) 24 concurrent requests on three models, and a group
    of responses to one long prompt (shared-prefix groups are prepared too): every number
    equals the item scored alone."""
    models = [ModelConfig(name=n, path=str(tiny_model_dirs[n]), pipeline=True) for n in NAMES]
    app = create_app(Settings(models=models, cache={"max_bytes": 0},
                              batching={"max_batch_size": 8, "max_batch_tokens": 1024}))
    prompt = " ".join(f"step {i} of the question," for i in range(12))
    group = {"model": NAMES[0], "items": [{"prompt": prompt, "response": f"Answer {k}."} for k in range(4)]}
    requests = _load(load_tiny) + [(NAMES[0], group)]
    prepared = Counter()

    async def main(url):
        for name in NAMES:
            model = app.state.registry.runners[name].model
            own = model.prepare
            monkeypatch.setattr(
                model, "prepare", lambda batch, own=own, name=name: prepared.update([name]) or own(batch)
            )
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/v1/score", json=body) for _, body in requests))

    for url in _serve(app):
        responses = run(main(url))
    for (name, body), response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        assert_scored(response, load_tiny(name), body["items"])
    assert set(prepared) == set(NAMES)
    assert app.state.registry.runners[NAMES[0]].model.prefix_sharing.groups >= 1
