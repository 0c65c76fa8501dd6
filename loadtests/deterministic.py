"""The cost of `deterministic`: the same rl-bulk items scored by one live rewardserve, batched
(the option off) and each alone (on), in the same run; prints throughput of each and their ratio.

    python -m loadtests.deterministic [--items 512] [--in-flight 4]

Modes alternate over `--rounds` so the machine's drift falls on both alike; the best round of
each counts. Also counts the items whose batched score differs in its bits from its score alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import httpx

from loadtests import loadgen, model, servers, workloads
from loadtests.loadgen import Request

TIME_LIMIT_S = 900.0


def requests(items: list[dict], deterministic: bool) -> list[Request]:
    """`items` in requests of 32, bulk priority, cache bypassed (every item is computed)."""
    return [Request(json.dumps({"model": model.DEFAULT_MODEL, "items": items[i:i + 32], "priority": "bulk",
                                "cache": "bypass", "deterministic": deterministic}).encode(),
                    len(items[i:i + 32]), sum(len(item["input_ids"]) for item in items[i:i + 32]))
            for i in range(0, len(items), 32)]


async def measure(url: str, items: list[dict], in_flight: int, rounds: int) -> dict[bool, list[float]]:
    """Items per second of each mode, per round (a warm-up of both modes first)."""
    per_mode: dict[bool, list[float]] = {False: [], True: []}
    async with loadgen.Clients(url, in_flight + 2) as http:
        for deterministic in per_mode:
            await loadgen.closed_loop(http, requests(items[:64], deterministic), in_flight, TIME_LIMIT_S)
        for _ in range(rounds):
            for deterministic in per_mode:
                run = await loadgen.closed_loop(http, requests(items, deterministic), in_flight, TIME_LIMIT_S)
                assert run.ok == run.sent, run.errors
                per_mode[deterministic].append(run.items / run.wall_s)
    return per_mode


def differing_bits(url: str, items: list[dict]) -> int:
    """How many items' batched scores (one request of 32) differ from their scores alone."""
    scores = {}
    for deterministic in (False, True):
        body = json.loads(requests(items[:32], deterministic)[0].body)
        scores[deterministic] = [r["score"] for r in httpx.post(f"{url}/v1/score", json=body, timeout=60).json()
                                 ["results"]]
    return sum(a != b for a, b in zip(scores[False], scores[True]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=512)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    items = [item for request in workloads.rl_bulk(workloads.Corpus(), args.items, seed=0)
             for item in request["items"]][:args.items]
    with tempfile.TemporaryDirectory(prefix="deterministic-") as tmp:
        spec = servers.ours(model.DEFAULT_MODEL, f"builtin:{model.DEFAULT_MODEL}", Path(tmp))
        with servers.Server.fresh_log(spec, Path(tmp)) as server:
            per_mode = asyncio.run(measure(server.url, items, args.in_flight, args.rounds))
            differing = differing_bits(server.url, items)
    batched, alone = max(per_mode[False]), max(per_mode[True])
    tokens = sum(len(item["input_ids"]) for item in items)
    print(f"{len(items)} rl-bulk items ({tokens} tokens), requests of 32, {args.in_flight} in flight, "
          f"best of {args.rounds} rounds")
    print(f"batched: {batched:.1f} items/s; deterministic (alone): {alone:.1f} items/s; "
          f"ratio {alone / batched:.2f}x")
    print(f"items of one 32-item request whose batched score differs in its bits from alone: {differing}/32")


if __name__ == "__main__":
    main()
