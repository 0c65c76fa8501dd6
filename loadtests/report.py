"""Renders a benchmark run as Markdown: the machine, the set-up, the references measured
before each system, one table per workload, and the targets with their margins. The
hand-written analysis at the end of an existing report (below ANALYSIS_MARKER) is carried
over, so re-running does not erase it."""

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
SYSTEMS = ("naive", "ray-serve", "rewardserve", "rewardserve-onnxruntime")
ONNX_SYSTEM = "rewardserve-onnxruntime"


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


def _over(a: float | None, b: float | None) -> float | None:
    """a ÷ b, or None where either is missing or NaN, or b is zero."""
    return None if a is None or not b or math.isnan(a) or math.isnan(b) else a / b


def _ratio(a: float | None, b: float | None) -> str:
    quotient = _over(a, b)
    return "–" if quotient is None else f"{quotient:.2f}x"


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


def _shown_system(refs: dict) -> str:
    """Whose references the raw-ceiling rows show: rewardserve's, as the targets use them,
    else those of the first system that ran."""
    return "rewardserve" if "rewardserve" in refs else next(iter(refs))


def _throughput_table(name: str, refs: dict, runs: dict) -> str:
    """Rows for the raw ceiling(s) measured before `_shown_system` and each system on a
    closed-loop workload; each system is set against the ceiling of its own engine, measured
    right before it."""
    tps = {s: runs[s][name].summary.tokens_per_s for s in runs}
    shown = _shown_system(refs)
    torch_ceiling = refs[shown].ceiling(name)
    ceilings = [(f"raw ceiling (forward only), before {shown}", torch_ceiling)]
    if name == "rl-bulk":
        ceilings.append((f"raw ceiling, onnxruntime, before {shown}", refs[shown].ceiling(name, onnx=True)))
    rows = [[label, _num(c.tokens_per_s), _num(c.items_per_s, 1), "–", "–", "–", _pct(c.padding_ratio),
             _ratio(c.tokens_per_s, torch_ceiling.tokens_per_s), _ratio(c.tokens_per_s, tps.get("naive")),
             _ratio(c.tokens_per_s, tps.get("ray-serve")), "–", "0"] for label, c in ceilings]
    for system in SYSTEMS:
        if system not in runs:
            continue
        run = runs[system][name]
        s = run.summary
        own = refs[system].ceiling(name, onnx=system == ONNX_SYSTEM)
        rows.append([system, _num(s.tokens_per_s), _num(s.items_per_s, 1), _num(s.latency_ms(50)),
                     _num(s.latency_ms(95)), _num(s.latency_ms(99)), _pct(run.padding),
                     _ratio(s.tokens_per_s, own.tokens_per_s), _ratio(s.tokens_per_s, tps.get("naive")),
                     _ratio(s.tokens_per_s, tps.get("ray-serve")), _pct(run.client_cpu), _errors(s)])
    return _table(["system", "tokens/s", "items/s", "p50 ms", "p95 ms", "p99 ms", "padding", "vs its raw ceiling",
                   "vs naive", "vs Ray", "client CPU", "errors"], rows)


def _references_table(refs: dict) -> str:
    """The references each system is set against, and how far they drifted over the run."""
    rows = [[system, time.strftime("%H:%M:%S", time.localtime(r.measured_at)), _num(r.rl_bulk.tokens_per_s),
             _num(r.rl_bulk_onnx.tokens_per_s), _num(r.rl_single.tokens_per_s), _num(r.single.forward_p50_ms, 1),
             _num(r.single.encode_forward_p50_ms, 1)] for system, r in refs.items()]
    table = _table(["measured before", "started at", "raw ceiling rl-bulk tokens/s", "rl-bulk onnxruntime tokens/s",
                    "rl-single tokens/s", "single forward p50 ms", "single encode + forward p50 ms"], rows)
    bulk = [r.rl_bulk.tokens_per_s for r in refs.values()]
    forward = [r.single.forward_p50_ms for r in refs.values()]
    return (table + f"\n\nHighest ÷ lowest over the run: raw ceiling rl-bulk {max(bulk) / min(bulk):.2f}x, "
            f"single forward p50 {max(forward) / min(forward):.2f}x.")


def _rerank_table(refs: dict, rates: list, runs: dict) -> str:
    """Each system's latencies at each load, its p50 set against its own single forward."""
    rows = []
    for fraction, rate, n in rates:
        key = f"rerank@{fraction}"
        p99 = {s: runs[s][key].summary.latency_ms(99) for s in runs}
        for system in SYSTEMS:
            if system not in runs:
                continue
            run, single = runs[system][key], refs[system].single
            s = run.summary
            rows.append([f"{fraction:.0%} ({rate:.2f} req/s, {n} req)", system, _num(s.items_per_s, 1),
                         _num(s.latency_ms(50), 1), _num(s.latency_ms(95), 1), _num(s.latency_ms(99), 1),
                         _num(s.latency_ms(50) - single.forward_p50_ms, 1),
                         _ratio(s.latency_ms(50), single.encode_forward_p50_ms),
                         _ratio(p99[system], p99.get("naive")), _ratio(p99[system], p99.get("ray-serve")),
                         _pct(run.client_cpu), _errors(s)])
    return _table(["load (of single-forward capacity)", "system", "items/s", "p50 ms", "p95 ms", "p99 ms",
                   "p50 − single forward ms", "p50 ÷ single encode + forward", "p99 ÷ naive's", "p99 ÷ Ray's",
                   "client CPU", "errors"], rows)


def _mixed_table(rates: list, runs: dict) -> str:
    low = f"rerank@{rates[0][0]}"
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


def _backends_table(refs: dict, runs: dict) -> str:
    """torch against onnxruntime on the same batches: the raw forward (both measured before
    `_shown_system`) and rl-bulk end to end."""
    shown = _shown_system(refs)
    torch_tps, onnx_tps = refs[shown].rl_bulk.tokens_per_s, refs[shown].rl_bulk_onnx.tokens_per_s
    rows = [[f"raw forward (rl-bulk batches, no server), before {shown}", _num(torch_tps), _num(onnx_tps),
             _ratio(onnx_tps, torch_tps)]]
    if "rewardserve" in runs and ONNX_SYSTEM in runs:
        for name in ("rl-bulk", "rl-single"):
            torch_tps, onnx_tps = (runs[s][name].summary.tokens_per_s for s in ("rewardserve", ONNX_SYSTEM))
            rows.append([f"{name} end to end (rewardserve)", _num(torch_tps), _num(onnx_tps),
                         _ratio(onnx_tps, torch_tps)])
    return _table(["measure", "torch tokens/s", "onnxruntime tokens/s", "onnxruntime ÷ torch"], rows)


def _cache_tables(cache_runs: dict) -> str:
    if not cache_runs:
        return "Not run in this run."
    off = cache_runs["off"].bulk.tokens_per_s
    rows = []
    for mode, run in cache_runs.items():
        b = run.bulk
        rows.append([mode, _num(b.tokens_per_s), _num(b.items_per_s, 1), _pct(b.cached / b.items if b.items else None),
                     _num(b.latency_ms(50)), _num(b.latency_ms(99)), _ratio(b.tokens_per_s, off), _errors(b)])
    throughput = _table(["cache", "tokens/s (repeats included)", "items/s", "items served from cache", "p50 ms",
                         "p99 ms", "vs off", "errors"], rows)
    rows = []
    for mode, run in cache_runs.items():
        h, c = run.hits, run.computed
        rows.append([mode, _num(h.latency_ms(50), 2) if h else "–", _num(h.latency_ms(95), 2) if h else "–",
                     _num(h.latency_ms(99), 2) if h else "–", _pct(h.cached / h.items if h and h.items else None),
                     _num(c.latency_ms(50), 2), _num(c.latency_ms(99), 2),
                     _errors(h) if h else "–", _errors(c)])
    latency = _table(["cache", "hit p50 ms", "hit p95 ms", "hit p99 ms", "answered from cache", "computed p50 ms",
                      "computed p99 ms", "hit errors", "computed errors"], rows)
    return throughput + "\n\n" + latency


def _at_least(label: str, measured: float | None, target: float) -> list[str]:
    """A target row for a ratio that must reach `target`; None: not measured (what it is set
    against did not run)."""
    if measured is None:
        return [label, f">= {target:.2f}x", "–", "not measured"]
    status = "met" if measured >= target else f"missed by {target - measured:.2f}x ({1 - measured / target:.0%} short)"
    return [label, f">= {target:.2f}x", f"{measured:.2f}x", status]


def _at_most(label: str, measured: float | None, target: float) -> list[str]:
    """A target row for an interactive latency ratio that must stay within `target`; None:
    no interactive request completed."""
    if measured is None:
        return [label, f"<= {target:.2f}x", "–", "missed: no interactive request completed within the time limit"]
    status = ("met" if measured <= target
              else f"missed by {measured - target:.2f}x ({measured / target:.2f}x the allowed)")
    return [label, f"<= {target:.2f}x", f"{measured:.2f}x", status]


def _targets(refs: dict, rates: list, runs: dict, cache_runs: dict) -> str:
    """rewardserve's targets, each ratio to a reference against the one measured right
    before rewardserve ran."""
    ours = runs.get("rewardserve")
    if ours is None:
        return "rewardserve did not run."
    own = refs["rewardserve"]
    bulk, single = ({s: runs[s][name].summary.tokens_per_s for s in runs} for name in ("rl-bulk", "rl-single"))
    low = ours[f"rerank@{rates[0][0]}"].summary
    rows = [
        _at_least("rl-bulk throughput vs its raw ceiling", _over(bulk["rewardserve"], own.rl_bulk.tokens_per_s), 0.9),
        _at_least("rl-bulk throughput vs naive", _over(bulk["rewardserve"], bulk.get("naive")), 2.0),
        _at_least("rl-bulk throughput vs Ray Serve", _over(bulk["rewardserve"], bulk.get("ray-serve")), 1.3),
        _at_least("rl-single throughput vs its raw ceiling",
                  _over(single["rewardserve"], own.rl_single.tokens_per_s), 0.85),
        _at_least("rl-single throughput vs naive", _over(single["rewardserve"], single.get("naive")), 1.0),
        _at_most("rerank low load: p50 ÷ single encode + forward p50",
                 _over(low.latency_ms(50), own.single.encode_forward_p50_ms), 1.03),
        _at_most("mixed: interactive p99 under bulk ÷ without",
                 _over(ours["mixed"].summary.latency_ms(99), low.latency_ms(99)), 3.0),
    ]
    if cache_runs:
        hit_p50 = cache_runs["lru"].hits.latency_ms(50)
        rows.append(["cache hit p50, single item over loopback HTTP (LRU)", "< 2 ms", f"{hit_p50:.2f} ms",
                     "met" if hit_p50 < 2 else f"missed by {hit_p50 - 2:.2f} ms"])
    measured_at = time.strftime("%H:%M:%S", time.localtime(own.measured_at))
    return (f"Against the references measured right before rewardserve ran ({measured_at}).\n\n"
            + _table(["target (rewardserve)", "target", "measured", "status"], rows))


def _interactive_setup(plan, w, refs: dict, rates: list | None) -> list[str]:
    """The set-up of rerank-online and mixed, whose rates the first system's references set;
    none where no system ran."""
    if not rates:
        return []
    sizes, tokens = [r.items for r in w.rerank], [r.tokens for r in w.rerank]
    low_fraction, low_rate, low_n = rates[0]
    return [
        (f"- **rerank-online**: open-loop Poisson arrivals of {min(sizes)}–{max(sizes)}-candidate text-pair "
        f"requests (mean {statistics.mean(tokens):.0f} tokens per request), priority interactive. Rates are "
        "fractions of the single-forward capacity, the requests per second that in-process encode + forward "
        f"allows one at a time: {low_rate / low_fraction:.2f} req/s, measured before {next(iter(refs))} (the "
        "first system) and kept for every system, so all get the same arrival schedule."),
        (f"- **mixed**: the low-load rerank traffic ({low_fraction:.0%}, {low_rate:.2f} req/s, {low_n} requests) while "
        f"rl-bulk requests arrive closed-loop, {plan.mixed_bulk_concurrency} in flight."),
    ]


def _system_sections(refs: dict, rates: list | None, results: dict) -> list[str]:
    """The references and the tables of the systems' workloads."""
    if not refs:
        return ["## Systems", "", "No system ran (only the result-cache scenario was chosen).", ""]
    return [
        "## References, measured before each system",
        "",
        ("Right before each system's server starts, the runner measures the references again in its own process, "
        "with no server running: the machine's speed drifts over a run, so each system's \"vs its raw ceiling\", "
        "\"p50 − single forward\" and \"p50 ÷ single encode + forward\" are against the references measured "
        "before it. The raw-ceiling rows of the rl-bulk and rl-single tables and the raw forward of the engines "
        f"table show those measured before {_shown_system(refs)}, which the targets use too. The mixed p99 ratio "
        "sets a system against itself and uses no reference."),
        "",
        _references_table(refs),
        "",
        "## rl-bulk",
        "",
        _throughput_table("rl-bulk", refs, results),
        "",
        "## rl-single",
        "",
        _throughput_table("rl-single", refs, results),
        "",
        "## rerank-online",
        "",
        _rerank_table(refs, rates, results),
        "",
        "## mixed",
        "",
        _mixed_table(rates, results),
        "",
        "## Engines: torch and onnxruntime",
        "",
        _backends_table(refs, results),
        "",
    ]


def render(*, quick: bool, command: str, started: float, elapsed_s: float, load: tuple[str, str], plan,
           w, refs: dict, rates: list | None, results: dict, threads: dict, skipped: dict, cache_runs: dict,
           ray_python: Path, previous: str) -> str:
    """The report; `refs` holds each system's references, `rates` the rerank rates all got
    (None where no system ran)."""
    ray_version = (_command_output([str(ray_python), "-c", "import ray; print(ray.__version__)"])
                   if ray_python.exists() else "not installed")
    commit = _command_output(["git", "rev-parse", "--short", "HEAD"])
    if _command_output(["git", "status", "--porcelain", "--untracked-files=no", "service", "models"]):
        commit += " with uncommitted changes in service/ or models/ (the servers ran the working tree)"
    bulk_lengths = [len(i["input_ids"]) for i in w.rl_bulk_items]
    single_lengths = [len(i["input_ids"]) for i in w.rl_single_items]
    thread_list = ", ".join(f"{s}: {t}" for s, t in threads.items() if t is not None)
    parts = [
        "# Benchmark: the dynamic batching engine against a naive server and Ray Serve; engines; result cache",
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
        (f"- torch {torch.__version__}, intra-op threads: runner (raw ceiling) {torch.get_num_threads()}, "
        f"{thread_list}, rewardserve: torch's default ({torch.get_num_threads()} here); "
        f"Python {platform.python_version()}; Ray {ray_version}"),
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
        ("- Systems run one at a time, each preceded by its references (below) and warmed up (every request shape "
        "once) before measuring. Latency is per request, measured by the client; tokens/s and items/s count "
        "completed requests over the run's wall time."),
        "- Workload files (seed-generated by `python -m loadtests.workloads`, sha256 prefixes): "
        + ", ".join(f"`{n}.jsonl` {h}" for n, h in w.files.items()) + ".",
        (f"- **rl-bulk**: {len(w.rl_bulk)} requests of "
        f"{min(r.items for r in w.rl_bulk)}–{max(r.items for r in w.rl_bulk)} token-id items in groups of 16 "
        f"sharing a prompt, {plan.rl_bulk_concurrency} requests in flight, priority bulk; "
        f"{_length_stats(bulk_lengths)}. Lengths are lognormal clipped to [32, 512]: 512 is the model's max_length, "
        "a deviation from the 1024-token rollouts of decoder RMs."),
        (f"- **rl-single**: the same rollouts one item per request (OpenRLHF shape), {plan.rl_single_in_flight} in "
        f"flight; {_length_stats(single_lengths)}."),
        *_interactive_setup(plan, w, refs, rates),
        ("- Padding ratio (padded tokens that are padding), counted from the batches each system formed: `/stats` on "
        "the baselines, the `rewardserve_batch_real_tokens_total` and `rewardserve_batch_padded_tokens_sum` metrics "
        "on rewardserve."),
        ("- **rewardserve-onnxruntime**: the same server and settings with `backend: {type: onnxruntime}`, on the "
        "model exported by `rewardserve export-onnx` at the start of the run; the onnxruntime raw ceiling runs the "
        "same batches through that ONNX file in-process."),
        (f"- **Result cache**: rl-bulk with {plan.duplicate_share:.0%} of its items replaced by exact repeats "
        "(`workloads.with_duplicates`: half from the item's own group, half from earlier requests), "
        f"{plan.rl_bulk_concurrency} requests in flight, against three fresh servers: cache off (in-flight dedup "
        "only), the in-process LRU (default 256 MiB), and Redis alone (`cache: {max_bytes: 0}`, a local redis-server, "
        f"default 50 ms socket timeout). Then {plan.cache_singles} of those items are sent one per request, one at "
        "a time: as cache hits (`cache: use`) and computed (`cache: bypass`)."),
    ]
    for system, why in skipped.items():
        parts.append(f"- **{system} skipped**: {why}.")
    parts += [
        "",
        *_system_sections(refs, rates, results),
        f"## Result cache: rl-bulk with {plan.duplicate_share:.0%} of items repeated",
        "",
        _cache_tables(cache_runs),
        "",
        "## Targets",
        "",
        _targets(refs, rates, results, cache_runs),
        "",
    ]
    return "\n".join(parts) + "\n" + with_analysis(previous)


def with_analysis(previous: str) -> str:
    """The marker and the hand-written analysis below it in `previous` (the file being
    rewritten), to end a freshly rendered report with."""
    analysis = (previous.split(ANALYSIS_MARKER, 1)[1].lstrip("\n") if ANALYSIS_MARKER in previous
                else "## Analysis\n\n(none yet)\n")
    return ANALYSIS_MARKER + "\n\n" + analysis
