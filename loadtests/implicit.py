"""What implicit (DPO) rewards cost: GRPO-shaped requests (n responses to one prompt, as token
ids) scored by one live rewardserve serving, on the same random-weight Llama backbone shape, a
pointwise scalar model (one forward) and an implicit model (policy and reference: two causal
LM forwards, each with its vocabulary-wide LM head), the latter twice: every item computed
whole, and its shared prompt run once per LM (models.shared_prefix). Two ratios: implicit
against scalar, both unshared, and shared-prefix implicit against unshared implicit.

    python -m loadtests.implicit            # the run in RESULTS.implicit.md, a few minutes
    python -m loadtests.implicit --quick    # a smoke run, under a minute

Models alternate over rounds, each round rotated, so the machine's drift falls on all alike;
the best round of each counts. The cache is off: every item is computed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from loadtests import loadgen, servers
from tests.tiny_models import _llama_tokenizer, _save

HERE = Path(__file__).resolve().parent
BETA = 0.1
ID_LOW = 16  # token ids come from [ID_LOW, vocab): above the tokenizer's specials
# (name, model directory, share_prefix): the implicit models read policy/, its reference ../reference
MODELS = (("scalar", "scalar", False), ("implicit", "policy", False), ("implicit-shared", "policy", True))
COMPARISONS = (("implicit", "scalar"), ("implicit-shared", "implicit"))  # (measured, baseline)


@dataclass(frozen=True)
class Plan:
    rounds: int
    groups: int  # requests a model and round: one prompt and its responses each
    responses: int  # n per prompt
    prompt_tokens: int
    response_tokens: int
    in_flight: int
    time_limit_s: float  # per model and round
    backbone: dict  # LlamaConfig fields


FULL = Plan(rounds=2, groups=12, responses=8, prompt_tokens=384, response_tokens=64, in_flight=2, time_limit_s=240,
            backbone=dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=4, max_position_embeddings=1024, vocab_size=32000))
QUICK = Plan(rounds=1, groups=3, responses=4, prompt_tokens=96, response_tokens=16, in_flight=2, time_limit_s=60,
             backbone=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=256))


def build_models(root: Path, backbone: dict) -> dict[str, Path]:
    """Policy, reference (another seed) and a scalar model of the same backbone, saved to disk;
    `backbone` may widen the vocabulary past the tokenizer's (an LM head of a real model's size;
    the items' ids stay in the tokenizer's range)."""
    tokenizer = _llama_tokenizer()
    config = LlamaConfig(**{"vocab_size": len(tokenizer)} | backbone, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, num_labels=1, initializer_range=0.2)
    built = {}
    for seed, (name, cls, spec) in enumerate((
        ("policy", LlamaForCausalLM, {"kind": "implicit", "implicit": {"reference": "../reference", "beta": BETA}}),
        ("reference", LlamaForCausalLM, None),
        ("scalar", LlamaForSequenceClassification, {"kind": "scalar"}),
    )):
        torch.manual_seed(seed)
        built[name] = _save(root / name, cls(config).eval(), tokenizer, spec)
    return built


def settings(dirs: dict[str, Path]) -> dict:
    models = [{"name": name, "path": str(dirs[directory]), "share_prefix": share, "packed": False, "cache": False}
              for name, directory, share in MODELS]
    return {"models": models, "server": {"grpc_port": 0}, "cache": {"max_bytes": 0}}


def groups(plan: Plan, vocab: int, seed: int) -> list[list[dict]]:
    """`plan.groups` prompts with `plan.responses` responses each, as token-id items."""
    rng = random.Random(seed)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(ID_LOW, vocab) for _ in range(n)]

    out = []
    for _ in range(plan.groups):
        prompt = tokens(plan.prompt_tokens)
        out.append([{"input_ids": prompt + tokens(plan.response_tokens), "prompt_length": plan.prompt_tokens}
                    for _ in range(plan.responses)])
    return out


def requests_for(model: str, items: list[list[dict]]) -> list[loadgen.Request]:
    return [loadgen.make_request(group, sum(len(i["input_ids"]) for i in group), model, "bulk", cache="bypass")
            for group in items]


async def measure(url: str, plan: Plan, vocab: int) -> dict[str, list[float]]:
    """Items per second of each model, per round (every model warmed up first)."""
    names = [name for name, _, _ in MODELS]
    per_model: dict[str, list[float]] = {name: [] for name in names}
    async with loadgen.Clients(url, plan.in_flight + 2) as http:
        for name in names:
            await loadgen.closed_loop(http, requests_for(name, groups(plan, vocab, -1)[:2]), 2, plan.time_limit_s)
        for r in range(plan.rounds):
            items = groups(plan, vocab, r)
            for name in names[r % len(names):] + names[:r % len(names)]:
                run = await loadgen.closed_loop(http, requests_for(name, items), plan.in_flight, plan.time_limit_s)
                assert run.ok == run.sent == plan.groups, run.errors
                per_model[name].append(run.items_per_s)
                print(f"  round {r + 1} {name}: {run.items_per_s:.1f} items/s", flush=True)
    return per_model


def shared_difference(url: str, plan: Plan, vocab: int) -> float:
    """The largest |shared - unshared| implicit score over one group: the paths agree."""
    body = json.loads(requests_for("implicit", groups(plan, vocab, 0)[:1])[0].body)
    scores = {name: [r["score"] for r in httpx.post(f"{url}/v1/score", json={**body, "model": name},
                                                    timeout=120).json()["results"]]
              for name in ("implicit", "implicit-shared")}
    return max(abs(a - b) for a, b in zip(scores["implicit"], scores["implicit-shared"]))


def report(plan: Plan, per_model: dict[str, list[float]], difference: float, took_s: float, command: str) -> str:
    best = {name: max(rates) for name, rates in per_model.items()}
    cfg = plan.backbone
    rows = [f"| {name} | {' / '.join(f'{r:.1f}' for r in per_model[name])} | {best[name]:.1f} |" for name in best]
    ratios = [f"| {measured} vs {baseline} | {best[measured] / best[baseline]:.2f}x |"
              for measured, baseline in COMPARISONS]
    return "\n".join([
        "# Implicit (DPO) rewards: their cost against a scalar model, and the shared prompt", "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} (took {took_s:.0f} s).", "",
        "## Machine", "",
        f"- CPU: {platform.processor() or platform.machine()}; {os.cpu_count()} cores; torch {torch.__version__}, "
        f"Python {platform.python_version()}; the load generator shares these cores", "",
        "## Set-up", "",
        f"- Backbone (random weights, fp32 on CPU, padded batches): Llama, hidden {cfg['hidden_size']}, "
        f"{cfg['num_hidden_layers']} layers, intermediate {cfg['intermediate_size']}, vocabulary "
        f"{cfg.get('vocab_size', 'of the tiny test tokenizer')}. `scalar`: LlamaForSequenceClassification "
        "(one forward, one score). `implicit`: a policy "
        f"LlamaForCausalLM and its reference (another seed), beta {BETA}: two forwards and their LM heads.",
        "- `implicit-shared`: the same model with share_prefix on: each group's prompt runs once per LM, its "
        "responses against the prompt's KV cache; `scalar` and `implicit` run every item whole (share_prefix off).",
        f"- Requests: {plan.groups} a model and round, each one prompt of {plan.prompt_tokens} token ids and "
        f"{plan.responses} responses of {plan.response_tokens} (GRPO's n), priority bulk, cache bypassed, "
        f"{plan.in_flight} in flight; {plan.rounds} rounds, models rotated each round, the best round counts.",
        f"- Largest |shared - unshared| implicit score on one group: {difference:.2e}.", "",
        "## Results (items/s)", "",
        "| model | per round | best |", "|---|---|---|", *rows, "",
        "| ratio | best items/s |", "|---|---|", *ratios, "",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny backbone and counts, under a minute")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.implicit.md")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="implicit-") as tmp:
        dirs = build_models(Path(tmp), plan.backbone)
        vocab = len(_llama_tokenizer())
        with servers.Server.fresh_log(servers.ours_with(settings(dirs), Path(tmp)), Path(tmp)) as server:
            per_model = asyncio.run(measure(server.url, plan, vocab))
            difference = shared_difference(server.url, plan, vocab)
    command = "python -m loadtests.implicit" + (" --quick" if args.quick else "")
    args.out.write_text(report(plan, per_model, difference, time.perf_counter() - started, command))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
