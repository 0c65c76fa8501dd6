"""The overload scenario: a burst of one-rollout requests (OpenRLHF's client sends one per
request, hundreds at once) far past what the model scores within the queue's time budget,
sent all at once to two servers in turn: the time bound off (the item and token bounds
alone) and `queue.max_wait_s` on. Per server: requests admitted and their latency (how long
the last one waited), 429s and how soon they came back, the Retry-After hints, and that
every admitted score equals the other server's for the same item.

How honest the time bound is: while the burst drains, the server's estimate of the work
ahead (`rewardserve_queue_wait_estimate_seconds`, what `queue.max_wait_s` bounds) is read
every 0.5 s; where the queue is longest (every request in), it is set against the time the
admitted work really took to be answered from then on. A third server, freshly started,
takes the cold check: 150 concurrent 2-item requests under the default bound, which must
all be admitted.

    python -m loadtests.overload                  # 1,200 requests, a 5 s bound, ~3 minutes
    python -m loadtests.overload --requests 200   # smaller
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loadtests import loadgen, model, servers, workloads

HERE = Path(__file__).resolve().parent
ESTIMATE, QUEUED = "rewardserve_queue_wait_estimate_seconds", "rewardserve_queue_tokens"
SCRAPE_EVERY_S = 0.5  # each scrape costs the server ~10 ms of the CPU its forwards run on
PRECISE_SCRAPE_S = 0.05  # a scrape answered this fast is timed well enough to judge the estimate by
COLD_REQUESTS, COLD_ITEMS = 150, 2


@dataclass(frozen=True)
class Scrape:
    when: float  # time.perf_counter() as it came back
    estimate_s: float
    queued_tokens: float


@dataclass
class Burst:
    latencies_s: dict[int, float] = field(default_factory=dict)  # admitted: request index -> latency
    scores: dict[int, float] = field(default_factory=dict)
    refusals_s: list[float] = field(default_factory=list)  # 429: how soon each came back
    retry_after_s: list[float] = field(default_factory=list)
    other: dict[str, int] = field(default_factory=dict)  # any other outcome, counted
    wall_s: float = 0.0
    server_refusal_s: float = math.nan  # the server's own mean time to answer a 429 (its metrics)
    scrapes: list[Scrape] = field(default_factory=list)  # the precise ones
    last_answer_s: float = 0.0  # when the last admitted request was answered

    def estimate_vs_actual(self) -> tuple[float, float]:
        """(the estimated work ahead where the queue was longest, the seconds from then until
        the last admitted request was answered): the work the server had taken on, as it
        judged it and as it took. NaN without a precise scrape."""
        top = max(self.scrapes, key=lambda s: s.queued_tokens, default=Scrape(math.nan, math.nan, 0))
        return top.estimate_s, self.last_answer_s - top.when


async def burst(url: str, clients: loadgen.Clients, bodies: list[bytes], model_name: str,
                time_limit_s: float) -> Burst:
    """Every request sent at once, on `clients`."""
    out = Burst()

    async def send(http, index: int, body: bytes) -> None:
        started = time.perf_counter()
        try:
            reply = await http.post("/v1/score", content=body)
        except Exception as err:  # noqa: BLE001 - counted, the scenario goes on
            out.other[type(err).__name__] = out.other.get(type(err).__name__, 0) + 1
            return
        elapsed = time.perf_counter() - started
        if reply.status_code == 200:
            out.latencies_s[index] = elapsed
            out.scores[index] = reply.json()["results"][0]["score"]
            out.last_answer_s = max(out.last_answer_s, time.perf_counter())
        elif reply.status_code == 429:
            out.refusals_s.append(elapsed)
            out.retry_after_s.append(float(reply.headers["retry-after"]))
        else:
            out.other[f"http {reply.status_code}"] = out.other.get(f"http {reply.status_code}", 0) + 1

    async with clients as http, httpx.AsyncClient(base_url=url, timeout=30) as scraper:
        started = time.perf_counter()
        tasks = [asyncio.create_task(send(http, i, body)) for i, body in enumerate(bodies)]
        scraping = asyncio.create_task(watch_estimate(scraper, model_name, tasks, out.scrapes))
        done, pending = await asyncio.wait(tasks, timeout=time_limit_s)
        for task in pending:
            task.cancel()
        await scraping
        out.other["unfinished"] = len(pending)
        out.wall_s = time.perf_counter() - started
    out.server_refusal_s = server_refusal_s(url)
    return out


async def watch_estimate(http: httpx.AsyncClient, model_name: str, tasks: list[asyncio.Task],
                         into: list[Scrape]) -> None:
    """Until every task is done, the bulk queue's estimated wait and length every
    SCRAPE_EVERY_S, kept where the scrape came back within PRECISE_SCRAPE_S (one queued
    behind the burst's requests was read at an unknown moment)."""
    while not all(task.done() for task in tasks):
        sent = time.perf_counter()
        text = (await http.get("/metrics")).text
        received = time.perf_counter()
        values = bulk_queue_samples(text, model_name)
        if received - sent <= PRECISE_SCRAPE_S and ESTIMATE in values:
            into.append(Scrape(received, values[ESTIMATE], values[QUEUED]))
        await asyncio.sleep(SCRAPE_EVERY_S)


def bulk_queue_samples(text: str, model_name: str) -> dict[str, float]:
    """The model's bulk-class ESTIMATE and QUEUED samples of a /metrics page, picked out by
    their lines: a full parse costs the load generator 40 ms of CPU per page, which the
    model's forward would feel."""
    labels = f'{{model="{model_name}",priority="bulk"}}'
    return {name: float(value) for name, value in
            re.findall(rf"^({ESTIMATE}|{QUEUED}){re.escape(labels)} (\S+)$", text, re.MULTILINE)}


def server_refusal_s(url: str) -> float:
    """Mean seconds the server took per 429 on /v1/score, from its request-duration histogram."""
    totals = {"_sum": 0.0, "_count": 0.0}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text):
        for sample in family.samples:
            suffix = sample.name.removeprefix("rewardserve_request_duration_seconds")
            if suffix in totals and sample.labels.get("status") == "429":
                totals[suffix] += sample.value
    return totals["_sum"] / totals["_count"] if totals["_count"] else math.nan


def row(name: str, b: Burst, sent: int) -> str:
    p = loadgen.percentile
    lat = list(b.latencies_s.values())
    estimate, actual = b.estimate_vs_actual()
    return (f"| {name} | {sent} | {len(lat)} | {p(lat, 50):.2f} | {p(lat, 99):.2f} | {max(lat, default=0):.2f} | "
            f"{len(b.refusals_s)} | {b.server_refusal_s * 1000:.1f} | {p(b.refusals_s, 50) * 1000:.0f} | "
            f"{p(b.refusals_s, 99) * 1000:.0f} | "
            f"{p(b.retry_after_s, 50):.0f} | {sum(b.other.values())} | "
            f"{estimate:.2f} | {actual:.2f} | {estimate / actual:.2f} |")


def run_fresh(name: str, items: list[dict], tmp: Path, wait: float | None | str, time_limit_s: float,
              per_request: int = 1) -> Burst:
    """The burst, `per_request` items a request, against a freshly started server; `wait`:
    its queue.max_wait_s, or "default" for the setting's default. The clients are built
    before the server starts: that takes seconds of CPU (1,200 connections' worth), which
    the server's first batches would otherwise measure as its own speed."""
    extra = {} if wait == "default" else {"queue": {"max_wait_s": wait}}
    spec = servers.ours(model.DEFAULT_MODEL, f"builtin:{model.DEFAULT_MODEL}", tmp, system=name, extra=extra)
    bodies = [json.dumps({"model": model.DEFAULT_MODEL, "items": items[i:i + per_request], "priority": "bulk"}).encode()
              for i in range(0, len(items), per_request)]
    server = servers.Server.fresh_log(spec, tmp)
    clients = loadgen.Clients(server.url, len(bodies))
    with server:
        return asyncio.run(burst(server.url, clients, bodies, model.DEFAULT_MODEL, time_limit_s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1200)
    parser.add_argument("--budget-s", type=float, default=5.0, help="queue.max_wait_s of the bounded server")
    parser.add_argument("--time-limit-s", type=float, default=240.0, help="per burst")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.overload.md")
    args = parser.parse_args()
    corpus = workloads.Corpus()
    items, cold_items = ([item for request in workloads.rl_bulk(corpus, n, seed=0) for item in request["items"]][:n]
                         for n in (args.requests, COLD_REQUESTS * COLD_ITEMS))
    tokens = sum(len(item["input_ids"]) for item in items)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, wait in (("time bound off", None), (f"queue.max_wait_s {args.budget_s:g}", args.budget_s)):
            runs[name] = run_fresh(f"overload-{len(runs)}", items, Path(tmp), wait, args.time_limit_s)
        cold = run_fresh("cold", cold_items, Path(tmp), "default", args.time_limit_s, COLD_ITEMS)
    (off, bounded), names = runs.values(), list(runs)
    same = [i for i in bounded.scores if i in off.scores]
    worst = max((abs(bounded.scores[i] - off.scores[i]) for i in same), default=0.0)
    lines = [
        "# Overload: a burst past the queue's time budget",
        "",
        f"`python -m loadtests.overload --requests {args.requests} --budget-s {args.budget_s:g}`: {len(items)} "
        f"one-rollout requests ({tokens} tokens, rl-bulk's items) sent at once to `{model.DEFAULT_MODEL}`.",
        "",
        "| server | sent | admitted | p50 s | p99 s | max s | 429 | 429 server mean ms | 429 client p50 ms | "
        "429 client p99 ms | Retry-After p50 s | other | estimate s | actual s | estimate / actual |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        row(names[0], off, len(items)),
        row(names[1], bounded, len(items)),
        row(f"cold, {COLD_REQUESTS} x {COLD_ITEMS} items, default bound", cold, COLD_REQUESTS),
        "",
        f"Admitted by both: {len(same)} items; largest score difference {worst:.2e}. "
        "Longest admitted wait, bounded / unbounded: "
        f"{max(bounded.latencies_s.values()) / max(off.latencies_s.values()):.2f}x.",
        "",
        "Latencies are the load generator's, from the moment it starts each request: with every request opened at "
        "once they include its own time to open the connections; the server's own time per 429 is from its "
        "`rewardserve_request_duration_seconds` histogram.",
        "",
        "Estimate: `rewardserve_queue_wait_estimate_seconds` (the work ahead of a new item, what `queue.max_wait_s` "
        f"bounds) where the queue was longest, of the scrapes every {SCRAPE_EVERY_S:g} s answered within "
        f"{PRECISE_SCRAPE_S * 1000:.0f} ms; actual: from that scrape until the last admitted request was answered. "
        "The estimate rests on the warm-up forwards and the batches run while the burst arrives, each timed "
        "by the model's clock (on CPU, the forward thread's CPU time, which the burst's intake does not stretch). "
        f"Cold: a freshly started server, {COLD_REQUESTS} concurrent {COLD_ITEMS}-item requests (the first "
        f"{len(cold_items)} items) under the default `queue.max_wait_s`; all must be admitted.",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
