"""Renders a benchmark run as Markdown: the machine, the set-up, one table per workload,
and the targets with their margins. The hand-written analysis at the end of an existing
report (below ANALYSIS_MARKER) is carried over, so re-running does not erase it."""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from loadtests.loadgen import Summary

ANALYSIS_MARKER = "<!-- hand-written below this line; the runner keeps it when it rewrites the file -->"
SYSTEMS = ("naive", "ray-serve", "rewardserve")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _command_output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unavailable"


def _num(x: float | None, digits: int = 0) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "–" if not a or not b or math.isnan(a) or math.isnan(b) else f"{a / b:.2f}x"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _errors(summary: Summary) -> str:
    parts = [f"{n} {kind}" for kind, n in summary.errors.items()]
    if summary.unfinished:
        parts.append(f"{summary.unfinished} unfinished")
    return ", ".join(parts) or "0"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _length_stats(lengths: list[int]) -> str:
    q = statistics.quantiles(lengths, n=100, method="inclusive")
    return (f"{len(lengths)} items, {sum(lengths):,} tokens; length min {min(lengths)}, p50 {q[49]:.0f}, "
            f"p90 {q[89]:.0f}, p99 {q[98]:.0f}, max {max(lengths)}, mean {statistics.mean(lengths):.0f}")


def _throughput_table(name: str, ceiling, runs: dict) -> str:
    """Rows for the raw ceiling and each system on a closed-loop workload."""
    tps = {s: runs[s][name].summary.tokens_per_s for s in runs}
    rows = [["raw ceiling (forward only)", _num(ceiling.tokens_per_s), _num(ceiling.items_per_s, 1), "–", "–", "–",
             _pct(ceiling.padding_ratio), "1.00x", _ratio(ceiling.tokens_per_s, tps.get("naive")),
             _ratio(ceiling.tokens_per_s, tps.get("ray-serve")), "–", "0"]]
    for system in SYSTEMS:
        if system not in runs:
            continue
        run = runs[system][name]
        s = run.summary
        rows.append([system, _num(s.tokens_per_s), _num(s.items_per_s, 1), _num(s.latency_ms(50)),
                     _num(s.latency_ms(95)), _num(s.latency_ms(99)), _pct(run.padding),
                     _ratio(s.tokens_per_s, ceiling.tokens_per_s), _ratio(s.tokens_per_s, tps.get("naive")),
                     _ratio(s.tokens_per_s, tps.get("ray-serve")), _pct(run.client_cpu), _errors(s)])
    return _table(["system", "tokens/s", "items/s", "p50 ms", "p95 ms", "p99 ms", "padding", "vs raw ceiling",
                   "vs naive", "vs Ray", "client CPU", "errors"], rows)


def _rerank_table(refs, runs: dict) -> str:
    rows = []
    for fraction, rate, n in refs.rates:
        key = f"rerank@{fraction}"
        p99 = {s: runs[s][key].summary.latency_ms(99) for s in runs}
        for system in SYSTEMS:
            if system not in runs:
                continue
            run = runs[system][key]
            s = run.summary
            rows.append([f"{fraction:.0%} ({rate:.2f} req/s, {n} req)", system, _num(s.items_per_s, 1),
                         _num(s.latency_ms(50), 1), _num(s.latency_ms(95), 1), _num(s.latency_ms(99), 1),
                         _num(s.latency_ms(50) - refs.single.forward_p50_ms, 1),
                         _ratio(p99[system], p99.get("naive")), _ratio(p99[system], p99.get("ray-serve")),
                         _pct(run.client_cpu), _errors(s)])
    return _table(["load (of single-forward capacity)", "system", "items/s", "p50 ms", "p95 ms", "p99 ms",
                   "p50 − single forward ms", "p99 ÷ naive's", "p99 ÷ Ray's", "client CPU", "errors"], rows)


def _mixed_table(refs, runs: dict) -> str:
    low = f"rerank@{refs.rates[0][0]}"
    rows = []
    for system in SYSTEMS:
        if system not in runs:
            continue
        run, alone = runs[system]["mixed"], runs[system][low].summary
        s, bulk = run.summary, run.bulk
        rows.append([system, _num(s.latency_ms(50), 1), _num(s.latency_ms(95), 1), _num(s.latency_ms(99), 1),
                     _num(alone.latency_ms(99), 1), _ratio(s.latency_ms(99), alone.latency_ms(99)),
                     _num(bulk.tokens_per_s), str(bulk.ok), _errors(s), _errors(bulk)])
    return _table(["system", "interactive p50 ms", "p95 ms", "p99 ms", "p99 without bulk ms", "p99 ratio",
                   "bulk tokens/s alongside", "bulk requests done", "interactive errors", "bulk errors"], rows)


def _targets(refs, runs: dict) -> str:
    ours = runs.get("rewardserve")
    if ours is None:
        return "rewardserve did not run."
    tps = {s: runs[s]["rl-bulk"].summary.tokens_per_s for s in runs}
    rows = []

    def at_least(label: str, measured: float | None, target: float) -> None:
        if measured is None:
            rows.append([label, f">= {target:.2f}x", "–", "not measured"])
            return
        status = "met" if measured >= target else f"missed by {target - measured:.2f}x ({1 - measured / target:.0%} short)"
        rows.append([label, f">= {target:.2f}x", f"{measured:.2f}x", status])

    at_least("rl-bulk throughput vs raw ceiling", tps["rewardserve"] / refs.rl_bulk.tokens_per_s, 0.9)
    at_least("rl-bulk throughput vs naive", tps["rewardserve"] / tps["naive"] if "naive" in tps else None, 2.0)
    at_least("rl-bulk throughput vs Ray Serve",
             tps["rewardserve"] / tps["ray-serve"] if "ray-serve" in tps else None, 1.3)
    low = ours[f"rerank@{refs.rates[0][0]}"].summary
    for what, reference in (("forward", refs.single.forward_p50_ms), ("encode + forward", refs.single.encode_forward_p50_ms)):
        gap = low.latency_ms(50) - reference
        rows.append([f"rerank low load: p50 − single {what} p50", "<= 3 ms", f"{gap:.1f} ms",
                     "met" if gap <= 3 else f"missed by {gap - 3:.1f} ms"])
    ratio = ours["mixed"].summary.latency_ms(99) / low.latency_ms(99)
    if math.isnan(ratio):
        rows.append(["mixed: interactive p99 under bulk ÷ without", "<= 3.00x", "–",
                     "missed: no interactive request completed within the time limit"])
    else:
        rows.append(["mixed: interactive p99 under bulk ÷ without", "<= 3.00x", f"{ratio:.2f}x",
                     "met" if ratio <= 3 else f"missed by {ratio - 3:.2f}x ({ratio / 3:.1f}x the allowed p99)"])
    return _table(["target (rewardserve)", "target", "measured", "status"], rows)


def render(*, quick: bool, command: str, started: float, elapsed_s: float, load: tuple[str, str], plan,
           w, refs, results: dict, threads: dict, skipped: dict, ray_python: Path,
           previous: str) -> str:
    ray_version = _command_output([str(ray_python), "-c", "import ray; print(ray.__version__)"]) if ray_python.exists() else "not installed"
    commit = _command_output(["git", "rev-parse", "--short", "HEAD"])
    if _command_output(["git", "status", "--porcelain", "--untracked-files=no", "service", "models"]):
        commit += " with uncommitted changes in service/ or models/ (the servers ran the working tree)"
    bulk_lengths = [len(i["input_ids"]) for i in w.rl_bulk_items]
    single_lengths = [len(i["input_ids"]) for i in w.rl_single_items]
    rerank_sizes = [r.items for r in w.rerank]
    rerank_tokens = [r.tokens for r in w.rerank]
    thread_list = ", ".join(f"{s}: {t}" for s, t in threads.items() if t is not None)
    low_fraction, low_rate, low_n = refs.rates[0]
    parts = [
        "# Benchmark: the dynamic batching engine against a naive server and Ray Serve",
        "",
        (f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M %Z', time.localtime(started))} "
        f"(took {elapsed_s / 60:.1f} min), commit {commit}."),
    ]
    if quick:
        parts += ["", "**Quick mode: counts are tiny; the numbers show the harness works, not how fast anything is.**"]
    parts += [
        "",
        "## Machine",
        "",
        f"- CPU: {_cpu_model()}; {len(os.sched_getaffinity(0))} usable cores (nproc)",
        (f"- torch {torch.__version__}, intra-op threads: runner (raw ceiling) {torch.get_num_threads()}, {thread_list}, "
        f"rewardserve: torch's default ({torch.get_num_threads()} here); Python {platform.python_version()}; Ray {ray_version}"),
        (f"- load average (1/5/15 min) before: {load[0]}, after: {load[1]}; the load generator shares these cores "
        "(its CPU use is in the `client CPU` columns, as a share of one core)"),
        "",
        "## Set-up",
        "",
        ("- Model: `minilm-harmless` (MiniLM-L6 BERT encoder, mean-pooled, trained reward head), fp32 on CPU. Every "
        "system runs the same `RewardModel.forward`; only the batching around it differs."),
        ("- Forward budget for everyone: at most 32 items and 16,384 padded tokens. Raw ceiling: all items encoded up "
        "front, length-sorted, cut by the service's `plan_batches`. Naive (`loadtests/naive_server.py`, OpenRLHF "
        "`serve_rm` style): one request at a time, 32-item chunks in request order. Ray Serve "
        "(`loadtests/ray_server.py`): one replica, `@serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)` "
        "per item, arrival order. rewardserve: `rewardserve serve` with its default settings (scheduler "
        "included), serving only this model, with the result cache and gRPC turned off (requests repeat "
        "across runs; HTTP is what is measured)."),
        ("- Systems run one at a time, each warmed up (every request shape once) before measuring. Latency is per "
        "request, measured by the client; tokens/s and items/s count completed requests over the run's wall time."),
        "- Workload files (seed-generated by `python -m loadtests.workloads`, sha256 prefixes): "
        + ", ".join(f"`{n}.jsonl` {h}" for n, h in w.files.items()) + ".",
        (f"- **rl-bulk**: {len(w.rl_bulk)} requests of {min(r.items for r in w.rl_bulk)}–{max(r.items for r in w.rl_bulk)} "
        f"token-id items in groups of 16 sharing a prompt, {plan.rl_bulk_concurrency} requests in flight, priority bulk; "
        f"{_length_stats(bulk_lengths)}. Lengths are lognormal clipped to [32, 512]: 512 is the model's max_length, "
        "a deviation from the 1024-token rollouts of decoder RMs."),
        (f"- **rl-single**: the same rollouts one item per request (OpenRLHF shape), {plan.rl_single_in_flight} in "
        f"flight; {_length_stats(single_lengths)}."),
        (f"- **rerank-online**: open-loop Poisson arrivals of {min(rerank_sizes)}–{max(rerank_sizes)}-candidate text-pair "
        f"requests (mean {statistics.mean(rerank_tokens):.0f} tokens per request), priority interactive. Rates are "
        f"fractions of the single-forward capacity ({1 / statistics.mean(refs.single.encode_forward_s):.2f} req/s). "
        f"Single forward of the low-load requests (each alone, in-process): p50 {refs.single.forward_p50_ms:.1f} ms "
        f"forward only, {refs.single.encode_forward_p50_ms:.1f} ms encode + forward."),
        (f"- **mixed**: the low-load rerank traffic ({low_fraction:.0%}, {low_rate:.2f} req/s, {low_n} requests) while "
        f"rl-bulk requests arrive closed-loop, {plan.mixed_bulk_concurrency} in flight."),
        ("- Padding ratio (padded tokens that are padding): the raw ceiling's and the baselines' are counted from their "
        "batches (`/stats` on the baseline servers). rewardserve does not expose its batches (no metrics endpoint, and "
        "the benchmark does not modify `service/`), so its column is blank."),
    ]
    for system, why in skipped.items():
        parts.append(f"- **{system} skipped**: {why}.")
    parts += [
        "",
        "## rl-bulk",
        "",
        _throughput_table("rl-bulk", refs.rl_bulk, results),
        "",
        "## rl-single",
        "",
        _throughput_table("rl-single", refs.rl_single, results),
        "",
        "## rerank-online",
        "",
        _rerank_table(refs, results),
        "",
        "## mixed",
        "",
        _mixed_table(refs, results),
        "",
        "## Targets",
        "",
        _targets(refs, results),
        "",
    ]
    analysis = previous.split(ANALYSIS_MARKER, 1)[1].lstrip("\n") if ANALYSIS_MARKER in previous else "## Analysis\n\n(none yet)\n"
    return "\n".join(parts) + "\n" + ANALYSIS_MARKER + "\n\n" + analysis
