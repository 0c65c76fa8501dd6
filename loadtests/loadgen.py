"""The load generator: sends prepared `/v1/score` requests over loopback HTTP with asyncio
and httpx, closed-loop (a fixed number in flight, as RL trainers do) or open-loop (Poisson
arrivals, as online traffic does), and summarizes throughput and request latency.

Every run is bounded twice: by its request list (each request is sent at most once) and by
a wall-clock limit, after which requests still in flight are cancelled and counted as
unfinished. Open-loop latency is measured from the scheduled arrival, so a client that falls
behind does not hide queueing (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass(frozen=True)
class Request:
    """One prepared request: the JSON body, already encoded, and what it carries."""

    body: bytes
    items: int
    tokens: int


def make_request(items: list[dict], tokens: int, model: str, priority: str, timeout_ms: int | None = None,
                 cache: str | None = None, truncate: str | None = None) -> Request:
    body = {"model": model, "items": items, "priority": priority}
    for option, value in (("timeout_ms", timeout_ms), ("cache", cache), ("truncate", truncate)):
        if value is not None:
            body[option] = value
    return Request(json.dumps(body, separators=(",", ":")).encode(), len(items), tokens)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated q-th percentile (0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Summary:
    """What a run achieved: only completed (200, all results present) requests count
    towards items, tokens and latencies."""

    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    unfinished: int = 0
    items: int = 0
    cached: int = 0  # items answered from a result cache (rewardserve's `cached: true`)
    tokens: int = 0
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    @property
    def items_per_s(self) -> float:
        return self.items / self.wall_s if self.wall_s else 0.0

    def latency_ms(self, q: float) -> float:
        return percentile(self.latencies_s, q) * 1000

    def add_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


CONNECTIONS_PER_CLIENT = 16


class Clients:
    """Several httpx clients, each request sent on the next in turn. One httpx pool scans
    every connection it holds on each request and response: with hundreds in flight that
    cost the load generator 6.4 ms of CPU per request against rewardserve (py-spy: the pool's
    `is_idle` and `_assign_requests_to_connections`), cores the server is measured on."""

    def __init__(self, base_url: str, max_connections: int):
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._clients = [
            httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(None, connect=10.0), limits=limits,
                              headers={"content-type": "application/json"})
            for _ in range(math.ceil(max_connections / CONNECTIONS_PER_CLIENT))]
        self._turn = itertools.cycle(self._clients)

    async def __aenter__(self) -> Clients:
        for http in self._clients:
            await http.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        for http in self._clients:
            await http.__aexit__(*exc)

    async def post(self, path: str, **kwargs) -> httpx.Response:
        return await next(self._turn).post(path, **kwargs)


OnReply = Callable[[Request, list[dict]], None]


async def _send(http: Clients, request: Request, started: float, summary: Summary,
                on_reply: OnReply | None = None) -> None:
    """One request; `on_reply(request, results)`, given, is the client's own work on a
    complete answer (a trainer's rule on the score), in its latency."""
    summary.sent += 1
    try:
        reply = await http.post("/v1/score", content=request.body)
    except httpx.HTTPError as err:
        summary.add_error(type(err).__name__)
        return
    latency = time.perf_counter() - started
    if reply.status_code != 200:
        summary.add_error(f"http {reply.status_code}")
        return
    results = reply.json()["results"]
    if len(results) != request.items:
        summary.add_error("missing results")
        return
    if on_reply is not None:
        on_reply(request, results)
        latency = time.perf_counter() - started
    summary.ok += 1
    summary.items += request.items
    summary.cached += sum(1 for result in results if result.get("cached"))
    summary.tokens += request.tokens
    summary.latencies_s.append(latency)


async def _bounded(tasks: list[asyncio.Task], summary: Summary, deadline: float) -> None:
    """Wait for `tasks` until `deadline`; cancel and count what is left."""
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.perf_counter()))
        for task in pending:
            task.cancel()
        summary.unfinished += len(pending)
        if pending:
            await asyncio.wait(pending)


async def closed_loop(http: Clients, requests: list[Request], concurrency: int, time_limit_s: float,
                      stop: asyncio.Event | None = None, on_reply: OnReply | None = None) -> Summary:
    """Keep `concurrency` requests in flight until the list is sent (or `stop` is set, or
    time is up); each worker sends its next request when its last one returns (and
    `on_reply` is done with it)."""
    summary = Summary()
    queue = iter(requests)
    start = time.perf_counter()
    deadline = start + time_limit_s

    async def worker() -> None:
        for request in queue:
            if (stop is not None and stop.is_set()) or time.perf_counter() >= deadline:
                return
            await _send(http, request, time.perf_counter(), summary, on_reply)

    workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(requests)))]
    await _bounded(workers, summary, deadline)
    summary.wall_s = time.perf_counter() - start
    return summary


async def open_loop(http: Clients, requests: list[Request], arrivals_s: list[float],
                    time_limit_s: float) -> Summary:
    """Send request i at `arrivals_s[i]` seconds after the start, whatever is in flight;
    latency runs from that scheduled instant."""
    summary = Summary()
    start = time.perf_counter()
    deadline = start + time_limit_s
    tasks = []
    for request, at in zip(requests, arrivals_s):
        if start + at >= deadline:
            break
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        tasks.append(asyncio.create_task(_send(http, request, start + at, summary)))
    await _bounded(tasks, summary, deadline)
    summary.wall_s = time.perf_counter() - start
    return summary


def arrivals(gaps: list[float], rate_per_s: float) -> list[float]:
    """Arrival instants of a Poisson process at `rate_per_s`, from unit-rate gaps, the first
    at 0: a run starts with its first request, not with an idle wait that a short time limit
    (a slow machine's low rate, the quick plan's 8 s) could spend before anything is sent."""
    times, now = [], 0.0
    for gap in gaps:
        times.append(now)
        now += gap / rate_per_s
    return times
