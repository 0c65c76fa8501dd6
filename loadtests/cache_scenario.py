"""The result-cache scenario: rl-bulk with a share of repeated items, scored by rewardserve
with the cache off, with the in-process LRU, and with Redis alone (what a replica that did
not see the first request finds); then the end-to-end latency of a single-item cache hit
next to the same request computed (`cache: "bypass"`).

Every mode starts a fresh server (and, for Redis, a fresh redis-server), so each begins
with an empty cache and only the workload's own repeats can hit. With the cache off the
scheduler's in-flight dedup still computes repeats that are queued at the same time once.
"""

from __future__ import annotations

import asyncio
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from loadtests import loadgen, servers
from loadtests.loadgen import Request, Summary
from loadtests.redis_process import RedisProcess

MODES = ("off", "lru", "redis")


@dataclass
class CacheRun:
    bulk: Summary  # the rl-bulk-with-repeats throughput run
    hits: Summary | None  # single-item requests whose result is cached, one at a time
    computed: Summary  # the same requests with cache "bypass", one at a time


@dataclass(frozen=True)
class CacheWorkload:
    bulk: list[Request]
    singles: list[dict]  # items of `bulk`, each sent alone for the latency runs
    model: str
    concurrency: int
    time_limit_s: float


def _singles(w: CacheWorkload, cache: str) -> list[Request]:
    return [loadgen.make_request([item], len(item["input_ids"]), w.model, "interactive", cache=cache)
            for item in w.singles]


async def measure(url: str, w: CacheWorkload, cached: bool) -> CacheRun:
    async with loadgen.Clients(url, w.concurrency + 2) as http:
        # warm-up of both request shapes, computed and not stored, so the cache starts empty
        await loadgen.closed_loop(http, _singles(w, "bypass")[:4], 1, w.time_limit_s)
        bulk = await loadgen.closed_loop(http, w.bulk, w.concurrency, w.time_limit_s)
        hits = await loadgen.closed_loop(http, _singles(w, "use"), 1, w.time_limit_s) if cached else None
        computed = await loadgen.closed_loop(http, _singles(w, "bypass"), 1, w.time_limit_s)
    return CacheRun(bulk, hits, computed)


def run(w: CacheWorkload, model_path: str, workdir: Path, log_dir: Path) -> dict[str, CacheRun]:
    """{mode: CacheRun} for every mode, one server at a time."""
    out = {}
    for mode in MODES:
        with RedisProcess() if mode == "redis" else nullcontext() as redis:
            spec = servers.ours(w.model, model_path, workdir, system=f"rewardserve-cache-{mode}", cache=mode,
                                redis_url=redis.url if redis else None)
            with servers.Server.fresh_log(spec, log_dir) as server:
                out[mode] = asyncio.run(measure(server.url, w, cached=mode != "off"))
        r = out[mode]
        hit = f", hit p50 {r.hits.latency_ms(50):.2f} ms" if r.hits else ""
        print(
            f"  cache {mode}: {r.bulk.ok}/{r.bulk.sent} ok, {r.bulk.tokens_per_s:,.0f} tok/s, "
            f"{r.bulk.cached}/{r.bulk.items} cached{hit}, computed p50 {r.computed.latency_ms(50):.2f} ms",
            flush=True,
        )
    return out
