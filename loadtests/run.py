"""The benchmark runner: every workload against every system, one system at a time, then
`loadtests/RESULTS.md`.

    python -m loadtests.run            # full run, about 45 minutes on 2 cores
    python -m loadtests.run --quick    # tiny counts, < 3 minutes, for smoke testing

Order: the workload files are (re)generated from their seed; the model is loaded in this
process on torch, exported to ONNX into a temporary directory and loaded on onnxruntime
(both stay loaded, idle while the servers run); then, for each of the naive server, Ray
Serve (skipped, with a note, when its venv is missing), `rewardserve serve` and `rewardserve
serve` on onnxruntime: the references (raw ceilings on torch and onnxruntime, single
forwards) are measured in this process with no server running, then the system is started,
warmed up, run through every workload and stopped; last, the result-cache scenario
(loadtests.cache_scenario). The machine's speed drifts over a run, so each system is set
against the references measured right before it. Rerank rates are set once, as fractions of
the capacity implied by the first single-forward measurement, so every system gets the same
arrival schedule and the load levels mean the same on any machine.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from loadtests import cache_scenario, loadgen, model, raw, report, servers, workloads
from loadtests.loadgen import Request, Summary
from models.onnx_export import export_onnx
from models.reward_model import RewardModel

HERE = Path(__file__).resolve().parent
SYSTEMS = (*report.SYSTEMS, "cache")  # "cache": the result-cache scenario
MAX_BATCH_SIZE, MAX_BATCH_TOKENS = 32, 16384  # the service's defaults, used by every system


@dataclass(frozen=True)
class Plan:
    rl_bulk_requests: int
    rl_bulk_max_items: int  # items kept per rl-bulk request
    rl_bulk_concurrency: int
    rl_single_count: int
    rl_single_in_flight: int
    rerank_loads: tuple[tuple[float, int], ...]  # (fraction of single-forward capacity, requests); first is "low"
    mixed_bulk_concurrency: int
    time_limit_s: float  # per run
    duplicate_share: float = 0.3  # cache scenario: items of rl-bulk replaced by repeats
    cache_singles: int = 200  # cache scenario: single-item requests timed as hits and computed


FULL = Plan(rl_bulk_requests=7, rl_bulk_max_items=512, rl_bulk_concurrency=4,
            rl_single_count=1024, rl_single_in_flight=256,
            rerank_loads=((0.1, 40), (0.4, 60), (0.7, 80)), mixed_bulk_concurrency=2, time_limit_s=240)
QUICK = Plan(rl_bulk_requests=2, rl_bulk_max_items=32, rl_bulk_concurrency=2,
             rl_single_count=32, rl_single_in_flight=32,
             rerank_loads=((0.2, 4),), mixed_bulk_concurrency=1, time_limit_s=8, cache_singles=8)


@dataclass
class Workloads:
    """The request lists every system is sent, prepared once."""

    rl_bulk: list[Request]
    rl_bulk_items: list[dict]
    rl_bulk_repeats: list[Request]  # rl-bulk with plan.duplicate_share of its items repeated
    rl_bulk_repeat_items: list[dict]
    rl_single: list[Request]
    rl_single_items: list[dict]
    rerank: list[Request]
    rerank_items: list[list[dict]]
    rerank_gaps: list[float]
    files: dict[str, str]  # name -> sha256


def prepare(plan: Plan, model_name: str, seed: int) -> Workloads:
    paths = workloads.build(seed=seed)
    bulk = [dict(r, items=r["items"][: plan.rl_bulk_max_items]) for r in workloads.load("rl-bulk")][
        : plan.rl_bulk_requests
    ]
    items = [item for r in bulk for item in r["items"]]
    repeats = workloads.with_duplicates(bulk, plan.duplicate_share, seed)
    rerank = workloads.load("rerank-online")[:max(n for _, n in plan.rerank_loads)]
    singles = [item for r in workloads.load("rl-bulk") for item in r["items"]][:plan.rl_single_count]
    return Workloads(
        rl_bulk=[loadgen.make_request(r["items"], sum(workloads.item_tokens(r)), model_name, "bulk") for r in bulk],
        rl_bulk_items=items,
        rl_bulk_repeats=[loadgen.make_request(r["items"], sum(workloads.item_tokens(r)), model_name, "bulk")
                         for r in repeats],
        rl_bulk_repeat_items=[item for r in repeats for item in r["items"]],
        rl_single=[loadgen.make_request([item], len(item["input_ids"]), model_name, "bulk") for item in singles],
        rl_single_items=singles,
        rerank=[loadgen.make_request(r["items"], sum(r["num_tokens"]), model_name, "interactive") for r in rerank],
        rerank_items=[r["items"] for r in rerank],
        rerank_gaps=[r["gap"] for r in rerank],
        files={name: hashlib.sha256(path.read_bytes()).hexdigest()[:16] for name, path in paths.items()},
    )


Rates = list[tuple[float, float, int]]  # rerank loads: (fraction of single-forward capacity, requests/s, requests)


@dataclass
class References:
    """What one system is set against, measured in this process right before it ran."""

    rl_bulk: raw.Ceiling
    rl_bulk_onnx: raw.Ceiling  # the same batches on onnxruntime
    rl_single: raw.Ceiling
    single: raw.SingleForward  # over the low-load rerank requests
    measured_at: float  # time.time() when the measurement began

    def ceiling(self, workload: str, onnx: bool = False) -> raw.Ceiling:
        """The raw ceiling of `workload` ("rl-bulk" or "rl-single"); with `onnx`, the one on
        onnxruntime where it was measured (rl-bulk), torch's otherwise."""
        if workload == "rl-single":
            return self.rl_single
        return self.rl_bulk_onnx if onnx else self.rl_bulk


def measure_references(plan: Plan, w: Workloads, rm: RewardModel, rm_onnx: RewardModel) -> References:
    """The references, on the torch model `rm` and the same model on onnxruntime."""
    measured_at = time.time()
    ceiling_onnx = raw.ceiling(rm_onnx, w.rl_bulk_items, MAX_BATCH_SIZE, MAX_BATCH_TOKENS)
    ceiling_bulk = raw.ceiling(rm, w.rl_bulk_items, MAX_BATCH_SIZE, MAX_BATCH_TOKENS)
    ceiling_single = raw.ceiling(rm, w.rl_single_items, MAX_BATCH_SIZE, MAX_BATCH_TOKENS)
    single = raw.single_forward(rm, w.rerank_items[:plan.rerank_loads[0][1]])
    return References(ceiling_bulk, ceiling_onnx, ceiling_single, single, measured_at)


def rerank_rates(plan: Plan, single: raw.SingleForward) -> Rates:
    """The rerank arrival rates: the plan's fractions of the capacity `single` implies
    (requests answered one at a time)."""
    capacity = len(single.encode_forward_s) / sum(single.encode_forward_s)  # requests/s
    return [(fraction, fraction * capacity, n) for fraction, n in plan.rerank_loads]


@dataclass
class Run:
    summary: Summary
    padding: float | None
    client_cpu: float  # share of one core the load generator itself used
    bulk: Summary | None = None  # mixed only: the bulk traffic sent alongside


async def _timed(server: servers.Server, label: str, coro) -> Run:
    """Run `coro` (a Summary, or (interactive, bulk) Summaries) with the server's padding
    counter reset first and the load generator's own CPU time measured."""
    server.reset_stats()
    cpu = time.process_time()
    summary = await coro
    summary, bulk = summary if isinstance(summary, tuple) else (summary, None)
    run = Run(summary, server.padding_ratio(), (time.process_time() - cpu) / max(summary.wall_s, 1e-9), bulk)
    print(f"  {label}: {summary.ok}/{summary.sent} ok in {summary.wall_s:.1f}s: {summary.tokens_per_s:,.0f} tok/s, "
          f"p50 {summary.latency_ms(50):.0f} ms, p99 {summary.latency_ms(99):.0f} ms", flush=True)
    return run


async def run_system(server: servers.Server, plan: Plan, w: Workloads, rates: Rates) -> dict[str, Run]:
    """Every workload against one running system; {workload key: Run}."""
    limit = plan.time_limit_s
    async with loadgen.Clients(server.url, plan.rl_single_in_flight + 8) as http:
        # warm-up: every request shape once, not measured
        await loadgen.closed_loop(http, w.rl_bulk[:1] + w.rerank[:2] + w.rl_single[:8], 4, min(limit, 60))
        out = {
            "rl-bulk": await _timed(server, "rl-bulk",
                                    loadgen.closed_loop(http, w.rl_bulk, plan.rl_bulk_concurrency, limit)),
            "rl-single": await _timed(server, "rl-single",
                                      loadgen.closed_loop(http, w.rl_single, plan.rl_single_in_flight, limit)),
        }
        for fraction, rate, n in rates:
            key = f"rerank@{fraction}"
            arrivals = loadgen.arrivals(w.rerank_gaps[:n], rate)
            out[key] = await _timed(server, key, loadgen.open_loop(http, w.rerank[:n], arrivals, limit))
        out["mixed"] = await _timed(server, "mixed", _mixed(http, plan, w, rates))
        return out


async def _mixed(http, plan: Plan, w: Workloads, rates: Rates) -> tuple[Summary, Summary]:
    """Low-rate rerank (the same requests and arrivals as rerank-online's low load) while
    rl-bulk requests keep coming closed-loop; (interactive, bulk) summaries."""
    _, rate, n = rates[0]
    stop = asyncio.Event()
    cycles = 10  # bulk requests repeat until the rerank traffic is done (bounded)
    bulk = asyncio.create_task(loadgen.closed_loop(http, w.rl_bulk * cycles, plan.mixed_bulk_concurrency,
                                                   plan.time_limit_s, stop))
    arrivals = loadgen.arrivals(w.rerank_gaps[:n], rate)
    interactive = await loadgen.open_loop(http, w.rerank[:n], arrivals, plan.time_limit_s)
    stop.set()
    return interactive, await bulk


def system_specs(args: argparse.Namespace, model_path: str, workdir: Path, onnx_file: Path,
                 chosen: set[str]) -> tuple[list[servers.ServerSpec], dict[str, str]]:
    """The chosen systems in the order they run, and {system: why it does not run}."""
    specs = [servers.naive(args.model_name, args.model_dir)]
    skipped = {}
    if args.ray_python.exists():
        specs.append(servers.ray(args.model_name, args.model_dir, args.ray_python))
    else:
        skipped["ray-serve"] = f"no Ray venv at {args.ray_python} (make bench creates it)"
    specs.append(servers.ours(args.model_name, model_path, workdir))
    specs.append(servers.ours(args.model_name, model_path, workdir, system="rewardserve-onnxruntime",
                              onnx_file=onnx_file))
    skipped.update({system: "not chosen (--systems)" for system in SYSTEMS if system not in chosen})
    return [spec for spec in specs if spec.system in chosen], skipped


@dataclass
class Measured:
    """Per system: the references measured right before it, its runs and its torch threads;
    and the rerank rates every system got."""

    refs: dict[str, References] = field(default_factory=dict)
    results: dict[str, dict[str, Run]] = field(default_factory=dict)
    threads: dict[str, int | None] = field(default_factory=dict)
    rates: Rates | None = None  # from the first system's references


def run_systems(specs: list[servers.ServerSpec], plan: Plan, w: Workloads, rm: RewardModel,
                rm_onnx: RewardModel) -> Measured:
    """Each system in turn, its references measured in this process just before its server
    starts, so nothing else runs while they are taken."""
    m = Measured()
    for spec in specs:
        refs = m.refs[spec.system] = measure_references(plan, w, rm, rm_onnx)
        m.rates = m.rates or rerank_rates(plan, refs.single)
        print(f"references before {spec.system}: raw ceiling rl-bulk {refs.rl_bulk.tokens_per_s:.0f} tok/s "
              f"(onnxruntime {refs.rl_bulk_onnx.tokens_per_s:.0f}), rl-single {refs.rl_single.tokens_per_s:.0f}; "
              f"single forward p50 {refs.single.forward_p50_ms:.1f} ms", flush=True)
        with servers.Server.fresh_log(spec, HERE) as server:
            m.threads[spec.system] = server.health().get("torch_threads")
            m.results[spec.system] = asyncio.run(run_system(server, plan, w, m.rates))
        print(f"{spec.system} done", flush=True)
    return m


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts (< 3 minutes), for smoke tests")
    parser.add_argument(
        "--out", type=Path, help="report path (default: loadtests/RESULTS.md, or RESULTS.quick.md with --quick)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-name", default=model.DEFAULT_MODEL)
    parser.add_argument("--model-dir", type=Path, help="model directory (default: the embedded minilm-harmless)")
    parser.add_argument("--ray-python", type=Path, default=servers.RAY_PYTHON, help="python of the Ray Serve venv")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    chosen = set(args.systems.split(","))
    if not chosen <= set(SYSTEMS):
        parser.error(f"--systems: unknown {sorted(chosen - set(SYSTEMS))}")
    out = args.out or HERE / ("RESULTS.quick.md" if args.quick else "RESULTS.md")
    command = "python -m loadtests.run " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.time()
    load_before = report.loadavg()

    w = prepare(plan, args.model_name, args.seed)
    print(f"workloads ready: {w.files}", flush=True)
    model_path = str(args.model_dir) if args.model_dir else f"builtin:{args.model_name}"
    with tempfile.TemporaryDirectory(prefix="loadtests-") as tmp:
        rm = model.load(args.model_dir, args.model_name)
        onnx_file = export_onnx(rm, Path(tmp) / "reward.onnx")  # what `rewardserve export-onnx` writes
        rm_onnx = model.load(args.model_dir, args.model_name, onnx_file=onnx_file)
        specs, skipped = system_specs(args, model_path, Path(tmp), onnx_file, chosen)
        m = run_systems(specs, plan, w, rm, rm_onnx)
        cache_workload = cache_scenario.CacheWorkload(
            w.rl_bulk_repeats, w.rl_bulk_repeat_items[:plan.cache_singles], args.model_name,
            plan.rl_bulk_concurrency, plan.time_limit_s)
        cache_runs = cache_scenario.run(cache_workload, model_path, Path(tmp), HERE) if "cache" in chosen else {}

    text = report.render(
        quick=args.quick, command=command, started=started, elapsed_s=time.time() - started,
        load=(load_before, report.loadavg()), plan=plan, w=w, refs=m.refs, rates=m.rates, results=m.results,
        threads=m.threads, skipped=skipped, cache_runs=cache_runs, ray_python=args.ray_python,
        previous=out.read_text() if out.exists() else "",
    )
    out.write_text(text)
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
