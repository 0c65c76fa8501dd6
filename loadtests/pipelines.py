"""What a reward pipeline costs and gains: ProcessBench's GSM8K solutions, one rollout per
`POST /v1/score` (OpenRLHF's client), many in flight, scored three ways by one server in
interleaved rounds: the process model alone (the baseline), a pipeline of the model, math-verify
and a boxed-answer format rule (the rules in the server's worker pool), and the model alone
with the rules run in the load generator after each answer, one rollout at a time, as veRL's
naive reward manager runs them (what a trainer does without a pipeline). Then the rule pool
alone: math-verify items/s through the pool against in-process, single-threaded.

    python -m loadtests.pipelines                 # 400 requests a system in 2 rounds, ~6 minutes
    python -m loadtests.pipelines --quick         # a smoke run, under 2 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from sympy.core.cache import clear_cache

from loadtests import loadgen, report, servers, workloads
from service.pipelines.rules import BUILTIN_RULES, RuleInput, math_verify
from service.pipelines.workers import RulePool

HERE = Path(__file__).resolve().parent
MODEL, PIPELINE = "minilm-prm", "gsm8k-reward"
SYSTEMS = ("model only", "pipeline", "trainer-side rules")
BOXED = r"\\boxed\{[^}]+\}"
STEPS_WEIGHT, UNBOXED_REWARD = 0.5, -1.0
RULE_WORKERS, RULE_TIMEOUT_S = 2, 10.0
PIPELINE_CONFIG = {"name": PIPELINE, "components": [
    {"name": "steps", "type": "model", "model": MODEL, "aggregate": "min", "weight": STEPS_WEIGHT},
    {"name": "correct", "type": "rule", "rule": "math_verify"},
    {"name": "boxed", "type": "rule", "rule": "format", "weight": 0, "params": {"must_match": [BOXED]}}],
    "gates": [{"component": "boxed", "below": 1, "reward": UNBOXED_REWARD}]}


WARM_UP_ITEM = {"prompt": "Tom has 3 boxes of 4 apples. How many apples?", "ground_truth": "12",
                "steps": ["3 boxes of 4 apples is 3 * 4 = 12 apples.", "The answer is \\boxed{12}."]}
WARM_UP = RuleInput("1", ground_truth="1")  # what the pool's workers warm up on


@dataclass(frozen=True)
class Plan:
    rounds: int
    requests: int  # over all rounds, each round its own share of the solutions
    in_flight: int
    rule_items: int  # for the rule pool alone
    rule_chunks: int
    time_limit_s: float  # per system and round


FULL = Plan(rounds=2, requests=400, in_flight=64, rule_items=400, rule_chunks=4, time_limit_s=150)
QUICK = Plan(rounds=1, requests=32, in_flight=16, rule_items=32, rule_chunks=2, time_limit_s=30)


def rule_input(item: dict) -> RuleInput:
    """The text the pipeline's rules read of a steps item: its steps joined by blank lines."""
    return RuleInput("\n\n".join(item["steps"]), item["prompt"], item["ground_truth"])


def trainer_rules(item: dict) -> tuple[float, float]:
    """(correct, boxed) as the pipeline's rules compute them, in this process."""
    text = rule_input(item)
    return math_verify(text), BUILTIN_RULES["format"](text, must_match=[BOXED])


def trainer_reward(steps: float, correct: float, boxed: float) -> float:
    """The pipeline's reward, as a trainer would combine it."""
    return UNBOXED_REWARD if boxed < 1 else correct + STEPS_WEIGHT * steps


@dataclass
class Measured:
    summary: loadgen.Summary
    client_cpu: float  # share of one core the load generator used (the trainer-side rules included)
    rewards: dict[int, float] = field(default_factory=dict)  # item index -> reward
    correct: dict[int, float] = field(default_factory=dict)  # item index -> math-verify's value


def requests_for(items: list[dict], system: str) -> list[loadgen.Request]:
    """One request per item; only the pipeline is given the ground truth. A solution past the
    model's 512 tokens (22 of the 400) loses its first tokens: its last steps and its answer
    are kept (the rules read the whole text)."""
    if system == "pipeline":
        return [loadgen.make_request([item], 0, PIPELINE, "bulk", truncate="left") for item in items]
    return [loadgen.make_request([{"prompt": i["prompt"], "steps": i["steps"]}], 0, MODEL, "bulk", truncate="left")
            for i in items]


async def measure(http: loadgen.Clients, items: list[dict], system: str, plan: Plan) -> Measured:
    requests = requests_for(items, system)
    index = {id(request): i for i, request in enumerate(requests)}
    out = Measured(loadgen.Summary(), 0.0)

    def on_reply(request: loadgen.Request, results: list[dict]) -> None:
        i, result = index[id(request)], results[0]
        if system == "pipeline":
            out.rewards[i], out.correct[i] = result["score"], result["dimensions"]["correct"]
        elif system == "trainer-side rules":
            out.correct[i], boxed = trainer_rules(items[i])
            out.rewards[i] = trainer_reward(result["score"], out.correct[i], boxed)
        else:
            out.rewards[i] = result["score"]

    cpu = time.process_time()
    out.summary = await loadgen.closed_loop(http, requests, plan.in_flight, plan.time_limit_s, on_reply=on_reply)
    out.client_cpu = (time.process_time() - cpu) / max(out.summary.wall_s, 1e-9)
    s = out.summary
    print(f"  {system}: {s.ok}/{s.sent} ok in {s.wall_s:.1f}s: {s.items_per_s:.1f} rollouts/s, "
          f"p50 {s.latency_ms(50):.0f} ms, p99 {s.latency_ms(99):.0f} ms", flush=True)
    return out


async def run_rounds(url: str, items: list[dict], plan: Plan) -> list[dict[str, Measured]]:
    """Every system once a round on the round's share of the items, the order rotated each
    round so that none always goes first. Each item is scored once by each system, so no
    process's rules see a repeat (sympy's cache makes one several times faster)."""
    math_verify(WARM_UP)  # the trainer's parsers built before anything is timed
    size = len(items) // plan.rounds
    rounds = []
    async with loadgen.Clients(url, plan.in_flight + 8) as http:
        for system in SYSTEMS[:2]:  # warm-up, not measured
            await loadgen.closed_loop(http, requests_for([WARM_UP_ITEM] * 16, system), 8, 60)
        for r in range(plan.rounds):
            print(f"round {r + 1}", flush=True)
            order = SYSTEMS[r % len(SYSTEMS):] + SYSTEMS[:r % len(SYSTEMS)]
            share = items[r * size:(r + 1) * size]
            measured = {system: await measure(http, share, system, plan) for system in order}
            rounds.append({system: measured[system] for system in SYSTEMS})
    return rounds


@dataclass(frozen=True)
class RuleRates:
    in_process: float  # items/s
    pool: float
    same_values: bool


async def _rule_rates(inputs: list[RuleInput], chunks: int) -> RuleRates:
    size = -(-len(inputs) // chunks)
    in_process_s = pool_s = 0.0
    alone, pooled = [], []
    pool = RulePool(RULE_WORKERS)
    await pool.start()
    try:
        for start in range(0, len(inputs), size):
            chunk = inputs[start:start + size]
            began = time.perf_counter()
            alone += [math_verify(text) for text in chunk]
            middle = time.perf_counter()
            outcomes = await asyncio.gather(*(pool.rule("math_verify", {}, text, RULE_TIMEOUT_S) for text in chunk))
            in_process_s, pool_s = in_process_s + middle - began, pool_s + time.perf_counter() - middle
            pooled += [o.value if o.status == "ok" else o.message for o in outcomes]
    finally:
        await pool.close()
    return RuleRates(len(inputs) / in_process_s, len(inputs) / pool_s, alone == pooled)


def rule_rates(items: list[dict], chunks: int) -> RuleRates:
    """math-verify over `items` in this process, one after another, and all at once through
    the pool (its workers up and warm before the clock), with no server running, in `chunks`
    taking turns so that the machine's drift (other load) falls on both. Each process sees
    each item once: sympy's cache makes a repeat several times faster."""
    math_verify(WARM_UP)
    rates = asyncio.run(_rule_rates([rule_input(item) for item in items], chunks))
    clear_cache()  # the trainer-side rules, later in this process, see the items afresh
    print(f"  math-verify: {rates.in_process:.1f} items/s in-process, {rates.pool:.1f} items/s through the pool",
          flush=True)
    return rates


def agreement(rounds: list[dict[str, Measured]]) -> str:
    """How the pipeline's rewards and math-verify values compare with the trainer-side ones
    (the same rules and combination), over every round's items answered by both."""
    pairs = [(r["pipeline"], r["trainer-side rules"]) for r in rounds]
    shared = [(p, t, i) for p, t in pairs for i in p.rewards.keys() & t.rewards.keys()]
    same = sum(p.correct[i] == t.correct[i] for p, t, i in shared)
    worst = max((abs(p.rewards[i] - t.rewards[i]) for p, t, i in shared), default=float("nan"))
    return (f"math-verify in the pipeline and in the load generator agree on {same} of {len(shared)} rollouts; "
            f"largest reward difference, pipeline vs trainer-side: {worst:.1e} (the model's score, batched "
            "differently).")


def render(command: str, started: float, load: tuple[str, str], plan: Plan, rounds: list[dict[str, Measured]],
           rules: RuleRates, items: int, previous: str) -> str:
    rows = []
    for n, r in enumerate(rounds, 1):
        base = r["model only"].summary
        for system in SYSTEMS:
            s = r[system].summary
            rows.append([str(n), system, report._num(s.items_per_s, 1), report._num(s.latency_ms(50)),
                         report._num(s.latency_ms(99)), report._ratio(s.items_per_s, base.items_per_s),
                         report._ratio(s.latency_ms(50), base.latency_ms(50)),
                         report._ratio(s.latency_ms(99), base.latency_ms(99)), report._pct(r[system].client_cpu),
                         report._errors(s)])

    def median(system: str, value) -> str:
        return f"{statistics.median(value(r[system].summary) / value(r['model only'].summary) for r in rounds):.2f}x"

    medians = [[system, median(system, lambda s: s.items_per_s), median(system, lambda s: s.latency_ms(50)),
                median(system, lambda s: s.latency_ms(99))] for system in SYSTEMS]
    pool_rows = [["in-process, single-threaded", report._num(rules.in_process, 1), "1.00x"],
                 [f"rule pool, {RULE_WORKERS} workers", report._num(rules.pool, 1),
                  report._ratio(rules.pool, rules.in_process)]]
    return "\n\n".join([
        "# Benchmark: reward pipelines, what they cost and gain",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))} "
        f"(took {(time.time() - started) / 60:.1f} min), "
        f"commit {report._command_output(['git', 'rev-parse', '--short', 'HEAD'])}; "
        f"{report._cpu_model()}, torch {torch.__version__}; load average (1/5/15 min) before: {load[0]}, "
        f"after: {load[1]}.",
        f"{plan.requests} of ProcessBench's {items} GSM8K solutions (steps items, the gold answer from GSM8K's test "
        f"split), each its own `POST /v1/score`, {plan.in_flight} in flight, priority bulk, result cache and "
        f"`queue.max_wait_s` off, one `rewardserve serve` for every system (`rules.workers: {RULE_WORKERS}`); "
        f"{plan.rounds} interleaved round(s) of {plan.requests // plan.rounds} solutions each, every system scoring "
        "the round's solutions, in an order rotated each round. Solutions past minilm-prm's 512 tokens are cut "
        "from the left (`truncate: left`) for the model. Systems: **model only**: `minilm-prm` (its weakest step); "
        f"**pipeline**: `{PIPELINE}`: minilm-prm's weakest step × {STEPS_WEIGHT} + math-verify + a boxed-answer "
        f"`format` rule gating the reward to {UNBOXED_REWARD} (rules in the server's worker pool); **trainer-side "
        "rules**: model only, then math-verify and the format check in the load generator's event loop right "
        "after each answer, one rollout at a time as veRL's naive reward manager loops over its batch (the same "
        "rule functions the pool runs). Latency: from sending the request until the reward is known (for "
        "trainer-side rules, once the load generator has computed them). Client CPU: the load generator's "
        "share of one core.",
        report._table(["round", "system", "rollouts/s", "p50 ms", "p99 ms", "rollouts/s vs model only",
                       "p50 vs model only", "p99 vs model only", "client CPU", "errors"], rows),
        "Medians over the rounds, each against the model-only run of its round:",
        report._table(["system", "rollouts/s", "p50", "p99"], medians),
        agreement(rounds),
        "## The rule pool alone",
        f"math-verify over {plan.rule_items} of the solutions with no server running: one after another in this "
        f"process, and all at once through the pool (`{RULE_WORKERS}` warm workers, each call under "
        f"a {RULE_TIMEOUT_S:g} s limit), in {plan.rule_chunks} chunks taking turns. Each process sees each item "
        "once (sympy's cache makes a repeat several times faster). "
        f"Same values both ways: {'yes' if rules.same_values else 'NO'}.",
        report._table(["math-verify", "items/s", "vs in-process"], pool_rows),
    ]) + "\n\n" + report.with_analysis(previous)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round of 32 requests")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.pipelines.md")
    args = parser.parse_args(argv)
    command = "python -m loadtests.pipelines " + " ".join(argv if argv is not None else sys.argv[1:])
    plan = QUICK if args.quick else FULL
    started, load_before = time.time(), report.loadavg()
    corpus = workloads.processbench_gsm8k()
    items = corpus[:plan.requests]
    rules = rule_rates(corpus[:plan.rule_items], plan.rule_chunks)
    with tempfile.TemporaryDirectory(prefix="pipelines-") as tmp:
        extra = {"pipelines": [PIPELINE_CONFIG], "rules": {"workers": RULE_WORKERS},
                 "queue": {"max_wait_s": None}}  # throughput is measured, not admission
        spec = servers.ours(MODEL, f"builtin:{MODEL}", Path(tmp), system="rewardserve-pipelines", extra=extra)
        with servers.Server.fresh_log(spec, HERE) as server:
            rounds = asyncio.run(run_rounds(server.url, items, plan))
    previous = args.out.read_text() if args.out.exists() else ""
    args.out.write_text(render(command.strip(), started, (load_before, report.loadavg()), plan, rounds, rules,
                               len(corpus), previous))
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
