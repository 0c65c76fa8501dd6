"""The overload scenario: a burst of one-rollout requests (OpenRLHF's client sends one per
request, hundreds at once) far past what the model scores within the queue's time budget,
sent all at once to two servers in turn: the time bound off (the item and token bounds
alone) and `max_queue_wait_s` on. Per server: requests admitted and their latency (how long
the last one waited), 429s and how soon they came back, the Retry-After hints, and that
every admitted score equals the other server's for the same item.

    python -m loadtests.overload                  # 1,200 requests, a 5 s bound, ~2 minutes
    python -m loadtests.overload --requests 200   # smaller
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loadtests import loadgen, model, servers, workloads

HERE = Path(__file__).resolve().parent


@dataclass
class Burst:
    latencies_s: dict[int, float] = field(default_factory=dict)  # admitted: request index -> latency
    scores: dict[int, float] = field(default_factory=dict)
    refusals_s: list[float] = field(default_factory=list)  # 429: how soon each came back
    retry_after_s: list[float] = field(default_factory=list)
    other: dict[str, int] = field(default_factory=dict)  # any other outcome, counted
    wall_s: float = 0.0
    server_refusal_s: float = math.nan  # the server's own mean time to answer a 429 (its metrics)


async def burst(url: str, items: list[dict], model_name: str, time_limit_s: float) -> Burst:
    """Every item as its own request, all sent at once."""
    out = Burst()
    bodies = [json.dumps({"model": model_name, "items": [item], "priority": "bulk"}).encode() for item in items]

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
        elif reply.status_code == 429:
            out.refusals_s.append(elapsed)
            out.retry_after_s.append(float(reply.headers["retry-after"]))
        else:
            out.other[f"http {reply.status_code}"] = out.other.get(f"http {reply.status_code}", 0) + 1

    async with loadgen.Clients(url, len(bodies)) as http:
        started = time.perf_counter()
        tasks = [asyncio.create_task(send(http, i, body)) for i, body in enumerate(bodies)]
        done, pending = await asyncio.wait(tasks, timeout=time_limit_s)
        for task in pending:
            task.cancel()
        out.other["unfinished"] = len(pending)
        out.wall_s = time.perf_counter() - started
    out.server_refusal_s = server_refusal_s(url)
    return out


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
    return (f"| {name} | {sent} | {len(lat)} | {p(lat, 50):.2f} | {p(lat, 99):.2f} | {max(lat, default=0):.2f} | "
            f"{len(b.refusals_s)} | {b.server_refusal_s * 1000:.1f} | {p(b.refusals_s, 50) * 1000:.0f} | "
            f"{p(b.refusals_s, 99) * 1000:.0f} | "
            f"{p(b.retry_after_s, 50):.0f} | {sum(b.other.values())} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1200)
    parser.add_argument("--budget-s", type=float, default=5.0, help="max_queue_wait_s of the bounded server")
    parser.add_argument("--time-limit-s", type=float, default=240.0, help="per burst")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.overload.md")
    args = parser.parse_args()
    items = [item for request in workloads.rl_bulk(workloads.Corpus(), args.requests, seed=0)
             for item in request["items"]][:args.requests]
    tokens = sum(len(item["input_ids"]) for item in items)
    path = f"builtin:{model.DEFAULT_MODEL}"
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, wait in (("time bound off", None), (f"max_queue_wait_s {args.budget_s:g}", args.budget_s)):
            spec = servers.ours(model.DEFAULT_MODEL, path, Path(tmp), system=f"overload-{len(runs)}",
                                extra={"max_queue_wait_s": wait})
            with servers.Server.fresh_log(spec, Path(tmp)) as server:
                runs[name] = asyncio.run(burst(server.url, items, model.DEFAULT_MODEL, args.time_limit_s))
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
        "429 client p99 ms | Retry-After p50 s | other |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        row(names[0], off, len(items)),
        row(names[1], bounded, len(items)),
        "",
        f"Admitted by both: {len(same)} items; largest score difference {worst:.2e}. "
        f"Longest admitted wait, bounded / unbounded: {max(bounded.latencies_s.values()) / max(off.latencies_s.values()):.2f}x.",
        "",
        "Latencies are the load generator's, from the moment it starts each request: with every request opened at "
        "once they include its own time to open the connections; the server's own time per 429 is from its "
        "`rewardserve_request_duration_seconds` histogram.",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
