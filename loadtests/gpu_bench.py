"""GPU benchmark of an 8B-shaped decoder reward model on RL-style token-id rollouts: the raw
forward ceiling, rewardserve end to end and the naive one-request-at-a-time server.

    python -m loadtests.gpu_bench [--out loadtests/RESULTS.gpu.md] [--budget-s 420] [--smoke]

Why: on the CPU benchmarks' 22M-parameter encoder a batch of one is already efficient;
batching pays on a GPU-sized model: a random-weight Llama-3-8B-shaped one here, built in
bfloat16 on the GPU and loaded by the user path (`RewardModel.load`, `rewardserve serve`).
Phases are bounded in count and time; a watchdog stops the run at `--budget-s`, and the
report is rewritten after every phase. `--smoke`: the same code on CPU, a tiny Llama.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import torch
import transformers
import yaml
from transformers import AutoModelForSequenceClassification, LlamaConfig

from loadtests import loadgen, raw, report, servers, workloads
from loadtests.model import to_input
from loadtests.run import Run, _timed
from models.loading import DTYPES
from models.reward_model import RewardModel
from service.config.sections import BatchingSettings, CanarySettings
from tests.tiny_models import _llama_tokenizer, _save

T0 = time.monotonic()
MODEL_NAME = "llama3-8b-random"
ID_LOW = 1000  # rollout token ids come from [ID_LOW, vocab): above the tokenizer's specials, never padding
MAX_BATCH_SIZE, MAX_BATCH_TOKENS = BatchingSettings().max_batch_size, BatchingSettings().max_batch_tokens
LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                 rms_norm_eps=1e-5)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=8192, max_position_embeddings=2048)
# dense bf16 tensor-core peaks (no sparsity), FLOP/s; the first name the device name contains wins
PEAK_BF16 = (("H200 NVL", 835e12), ("H200", 989e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989e12),
             ("A100", 312e12), ("L40S", 362e12))
SYSTEMS, WORKLOADS = ("rewardserve", "naive"), ("rl-single", "rl-bulk")


@dataclass(frozen=True)
class Plan:
    config: dict  # LlamaConfig fields
    device: str
    dtype: str
    lengths: tuple[int, int, int]  # min, median, max tokens: lognormal (sigma as loadtests.workloads), clipped
    items: int  # rollouts: the raw ceiling's, rl-single's (one per request) and rl-bulk's
    single_in_flight: int
    bulk_items: int  # rollouts per rl-bulk request
    bulk_in_flight: int
    warm_items: int  # warm-up: one bulk request of this many, then this many single requests
    check_items: int  # scored by every system and compared with the raw forward
    run_s: float  # bound on each timed run (and each warm-up)
    startup_s: float  # bound on each server's start-up, model load included
    server_s: float  # what a server phase is expected to take: budget kept for the next one


GPU = Plan(LLAMA3_8B, "cuda", "bfloat16", (64, 910, 2048), items=768, single_in_flight=256, bulk_items=256,
           bulk_in_flight=2, warm_items=64, check_items=8, run_s=60.0, startup_s=180.0, server_s=120.0)
SMOKE = Plan(TINY, "cpu", "float32", (32, 96, 256), items=48, single_in_flight=16, bulk_items=16,
             bulk_in_flight=2, warm_items=8, check_items=4, run_s=15.0, startup_s=60.0, server_s=20.0)


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {message}", flush=True)


class OutOfTime(BaseException):
    """The --budget-s watchdog fired (a BaseException: no phase takes it for its own failure)."""


@dataclass
class Budget:
    end: float  # time.monotonic() instant

    def left(self) -> float:
        return self.end - time.monotonic()

    def bound(self, want_s: float, keep_s: float = 0.0) -> float:  # less where it would eat into keep_s
        return max(1.0, min(want_s, self.left() - keep_s))


@dataclass
class Rollouts:
    items: list[dict]
    single: list[loadgen.Request]  # one rollout per request
    bulk: list[loadgen.Request]  # plan.bulk_items rollouts per request
    warm: list[loadgen.Request]  # one bulk request of plan.warm_items
    check: list[dict]  # spread over the lengths


def rollouts(plan: Plan, seed: int) -> Rollouts:
    """Seeded token-id rollouts in groups of workloads.GROUP sharing a prompt, as GRPO-style
    trainers send them; lognormal lengths as in loadtests.workloads, at decoder RMs' lengths
    (the GPU plan: mean ~1024 in [64, 2048])."""
    rng = random.Random(f"{seed}/gpu-rollouts")
    low, median, high = plan.lengths
    ids = range(ID_LOW, plan.config["vocab_size"])
    items: list[dict] = []
    while len(items) < plan.items:
        prompt = rng.choices(ids, k=rng.randint(low // 2, max(low // 2, high // 8)))
        for _ in range(workloads.GROUP):
            n = min(high, max(low, round(rng.lognormvariate(math.log(median), workloads.LENGTH_SIGMA))))
            kept = min(len(prompt), n // 2)
            items.append({"input_ids": prompt[:kept] + rng.choices(ids, k=n - kept)})
    items = items[:plan.items]

    def request(chunk: list[dict]) -> loadgen.Request:
        return loadgen.make_request(chunk, sum(len(i["input_ids"]) for i in chunk), MODEL_NAME, "bulk")

    step = max(1, len(items) // plan.check_items)
    check = sorted(items, key=lambda i: len(i["input_ids"]))[step - 1::step][:plan.check_items]
    bulk = [request(items[k:k + plan.bulk_items]) for k in range(0, len(items), plan.bulk_items)]
    return Rollouts(items, [request([i]) for i in items], bulk, [request(items[:plan.warm_items])], check)


@dataclass
class Results:
    plan: Plan
    gpu: str
    peak: float | None  # dense bf16 FLOP/s; None where the device is not in PEAK_BF16
    params: int = 0
    matmul_params: int = 0  # without the embedding table (a lookup, no FLOPs): what MFU counts
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    ceiling: raw.Ceiling | None = None
    reference: list[float] = field(default_factory=list)  # raw scores of the check items, each alone
    runs: dict[str, dict[str, Run]] = field(default_factory=dict)  # system -> workload -> Run
    checks: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # system -> (alone, together)
    served_as: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def mfu(self, tokens_per_s: float | None) -> str:
        ok = self.peak and tokens_per_s and self.matmul_params
        return f"{100 * 2 * self.matmul_params * tokens_per_s / self.peak:.1f}%" if ok else "–"


def release() -> None:
    gc.collect()
    torch.cuda.empty_cache()  # a no-op where CUDA was never initialised


def scratch_root() -> str | None:
    """/dev/shm where it has room for the 15 GB checkpoint and more (writing that to a disk can
    take a minute of the budget), else the default temporary directory."""
    return "/dev/shm" if Path("/dev/shm").is_dir() and shutil.disk_usage("/dev/shm").free > 40e9 else None


def build_model(plan: Plan, out: Path, res: Results) -> None:
    """transformers' own random init (normal(0, 0.02), norms 1) run in the target dtype on the
    target device; moved to CPU only to be saved, with the tiny Llama tokenizer (its ~400 ids
    fit any vocabulary) and a scalar reward spec, as tests/tiny_models.py saves test models."""
    tokenizer = _llama_tokenizer()
    config = LlamaConfig(**plan.config, num_labels=1, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    started = time.perf_counter()
    with torch.device(plan.device):
        model = AutoModelForSequenceClassification.from_config(config, dtype=DTYPES[plan.dtype])
    res.params = sum(p.numel() for p in model.parameters())
    res.matmul_params = res.params - model.get_input_embeddings().weight.numel()
    res.timings["build (random init on the device)"] = time.perf_counter() - started
    say(f"built {type(model).__name__}: {res.params:,} params on {plan.device}, {plan.dtype}")
    started = time.perf_counter()
    _save(out, model.to("cpu"), tokenizer, spec={"kind": "scalar"})
    del model
    release()
    size = sum(p.stat().st_size for p in out.glob("*.safetensors")) / 1e9
    res.timings[f"save ({size:.1f} GB of safetensors in {out.parent.parent})"] = time.perf_counter() - started
    say(f"saved {size:.1f} GB to {out}")


def raw_phase(plan: Plan, model_dir: Path, w: Rollouts, res: Results) -> None:
    """The ceiling over every rollout (length-sorted batches, the service's budgets), and
    the check items' scores, each forwarded alone; the model is freed before the servers."""
    started = time.perf_counter()
    rm = RewardModel.load(MODEL_NAME, model_dir, device=plan.device, dtype=plan.dtype)
    res.timings["raw: RewardModel.load (revision hashing included)"] = time.perf_counter() - started
    say(f"raw: loaded in {time.perf_counter() - started:.1f}s; forwarding {len(w.items)} rollouts")
    res.ceiling = raw.ceiling(rm, w.items, MAX_BATCH_SIZE, MAX_BATCH_TOKENS)
    res.reference = [rm.score([to_input(item)])[0].score for item in w.check]
    say(f"raw ceiling: {res.ceiling.tokens_per_s:,.0f} tok/s, MFU {res.mfu(res.ceiling.tokens_per_s)}")
    del rm
    release()


def server_specs(plan: Plan, model_dir: Path, workdir: Path) -> list[servers.ServerSpec]:
    """rewardserve with the benchmark settings (cache, gRPC off) plus device and dtype; naive alike."""
    ours = servers.ours(MODEL_NAME, str(model_dir), workdir)
    config = Path(ours.argv[ours.argv.index("--config") + 1])
    settings = yaml.safe_load(config.read_text())
    settings["models"][0].update(device=plan.device, dtype=plan.dtype)
    config.write_text(yaml.safe_dump(settings))
    naive = servers.naive(MODEL_NAME, model_dir)
    return [ours, replace(naive, argv=[*naive.argv, "--device", plan.device, "--dtype", plan.dtype])]


async def scores(http: loadgen.Clients, items: list[dict]) -> list[float]:
    reply = await http.post("/v1/score", content=loadgen.make_request(items, 0, MODEL_NAME, "interactive").body)
    reply.raise_for_status()
    return [result["score"] for result in reply.json()["results"]]


async def drive(server: servers.Server, plan: Plan, w: Rollouts, budget: Budget, keep_s: float):
    """Warm-up (the bulk request first, so rewardserve's admission has measured full batches
    before the burst of singles), the score check (one request per item, one at a time, then
    all in one request), then rl-single and rl-bulk; (check, {workload: Run})."""
    async with loadgen.Clients(server.url, plan.single_in_flight + 8) as http:
        await loadgen.closed_loop(http, w.warm, 1, budget.bound(plan.run_s, keep_s))
        await loadgen.closed_loop(http, w.single[:plan.warm_items], plan.warm_items, budget.bound(plan.run_s, keep_s))
        check = [(await scores(http, [item]))[0] for item in w.check], await scores(http, w.check)
        return check, {name: await _timed(server, f"{server.spec.system} {name}", loadgen.closed_loop(
            http, requests, in_flight, budget.bound(plan.run_s, keep_s))) for name, requests, in_flight in zip(
            WORKLOADS, (w.single, w.bulk), (plan.single_in_flight, plan.bulk_in_flight))}


def serve_phase(spec: servers.ServerSpec, plan: Plan, w: Rollouts, budget: Budget, keep_s: float,
                log_dir: Path, res: Results) -> None:
    log = log_dir / f"gpu-bench-{spec.system}.log"
    log.unlink(missing_ok=True)
    say(f"starting {spec.system} (log: {log})")
    started = time.monotonic()
    startup_s = budget.bound(plan.startup_s, keep_s)
    with servers.Server(spec, log, startup_timeout_s=startup_s) as server:
        res.timings[f"{spec.system}: start-up until ready (model load included)"] = time.monotonic() - started
        ours = spec.system == "rewardserve"  # which says where it put the model; naive is told
        card = httpx.get(f"{server.url}/v1/models/{MODEL_NAME}", timeout=10).json() if ours else vars(plan)
        res.served_as[spec.system] = f"{card.get('device')}, {card.get('dtype')}" + (" (as it reports)" * ours)
        say(f"{spec.system} ready in {time.monotonic() - started:.1f}s on {res.served_as[spec.system]}")
        res.checks[spec.system], res.runs[spec.system] = asyncio.run(drive(server, plan, w, budget, keep_s))


def phase(res: Results, name: str, fn, *args) -> bool:
    """One phase; an error in it is noted (its traceback printed) and the run goes on, so one
    failure does not cost the other measurements."""
    try:
        fn(*args)
        return True
    except Exception as err:  # noqa: BLE001 - reported in the file, not hidden
        traceback.print_exc()
        res.notes.append(f"{name} failed: {type(err).__name__}: {err}")
        say(f"{name} FAILED: {err}")
        return False


def worst(values: list[float], reference: list[float]) -> float:
    diffs = [abs(a - b) for a, b in zip(values, reference)]
    return math.nan if not diffs or any(math.isnan(d) for d in diffs) else max(diffs)


def results_table(res: Results) -> str:
    c, num, ratio = res.ceiling, report._num, report._ratio
    ceiling = c.tokens_per_s if c else None
    rows = [["raw ceiling (forward only)", "all rollouts", num(ceiling), num(c.items_per_s if c else None, 1), "–",
             "–", ratio(ceiling, ceiling), "–", res.mfu(ceiling), report._pct(c and c.padding_ratio), "0"]]
    for system in SYSTEMS:
        for name in WORKLOADS:
            run, naive = res.runs.get(system, {}).get(name), res.runs.get("naive", {}).get(name)
            if run is None:
                rows.append([system, name, *["not run"] * 8, "–"])
                continue
            s = run.summary
            rows.append([system, name, num(s.tokens_per_s), num(s.items_per_s, 1), num(s.latency_ms(50)),
                         num(s.latency_ms(99)), ratio(s.tokens_per_s, ceiling),
                         ratio(s.tokens_per_s, naive and naive.summary.tokens_per_s), res.mfu(s.tokens_per_s),
                         report._pct(run.padding), report._errors(s)])
    return report._table(["system", "workload", "tokens/s", "items/s", "p50 ms", "p99 ms", "vs raw ceiling",
                          "vs naive", "MFU", "padding", "errors"], rows)


def check_table(res: Results) -> str:
    tol = CanarySettings().tolerance if res.plan.dtype == "float32" else CanarySettings().tolerance_half
    rows = []
    for system in SYSTEMS:
        if system not in res.checks or not res.reference:
            rows.append([system, "–", "not run", "not run", f"{tol:g}", "–"])
            continue
        alone, together = (worst(values, res.reference) for values in res.checks[system])
        verdict = "ok" if alone <= tol and together <= tol else "MISMATCH"  # NaN: MISMATCH
        rows.append([system, str(len(res.reference)), f"{alone:.3g}", f"{together:.3g}", f"{tol:g}", verdict])
    return report._table(["system", "items", "max abs diff, one request each", "max abs diff, all in one request",
                          "tolerance", "verdict"], rows)


def render(res: Results, command: str, started: float, w: Rollouts, previous: str) -> str:
    plan, cfg = res.plan, res.plan.config
    commit = report._command_output(["git", "rev-parse", "--short", "HEAD"])
    if report._command_output(["git", "status", "--porcelain", "--untracked-files=no", "service", "models"]):
        commit += " with uncommitted changes in service/ or models/"
    peak = f"{res.peak / 1e12:,.0f} TFLOP/s dense bf16 peak" if res.peak else "unknown peak (no MFU)"
    nvidia = report._command_output(["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"])
    ref = [s for s in res.reference if not math.isnan(s)]
    low, median, high = plan.lengths
    parts = [
        "# GPU benchmark: an 8B-shaped Llama reward model, rewardserve against a naive server", "",
        (f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M %Z', time.localtime(started))} "
         f"(took {(time.time() - started) / 60:.1f} min), commit {commit}."),
        *(["", "**Smoke mode: a tiny model on CPU, tiny counts: the harness works, no more.**"] * (plan is SMOKE)),
        "", "## Machine", "",
        f"- GPU: {res.gpu}; {peak}; nvidia-smi driver, memory: {nvidia}",
        (f"- torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
         f"Python {platform.python_version()}; CPU: {report._cpu_model()}; load average: {report.loadavg()}"),
        "", "## Set-up", "",
        (f"- Model: LlamaForSequenceClassification (num_labels 1), hidden {cfg['hidden_size']}, "
         f"{cfg['num_hidden_layers']} layers, {cfg['num_attention_heads']} heads ({cfg['num_key_value_heads']} KV), "
         f"intermediate {cfg['intermediate_size']}, vocabulary {cfg['vocab_size']:,}; random weights; "
         f"{res.params:,} parameters, {res.matmul_params:,} in matmuls; {plan.device}, {plan.dtype}. "
         "Served as: ") + ("; ".join(f"{s}: {how}" for s, how in res.served_as.items()) or "–") + ".",
        ("- MFU = 2 x matmul parameters x tokens/s / peak: real tokens only, attention's own FLOPs not counted "
         "(a lower bound on the work done)."),
        (f"- Rollouts: token ids, seeded, in groups of {workloads.GROUP} sharing a prompt; lognormal lengths (median "
         f"{median}, sigma {workloads.LENGTH_SIGMA}) clipped to [{low}, {high}]; "
         f"{report._length_stats([len(i['input_ids']) for i in w.items])}."),
        ("- Raw ceiling: `RewardModel.forward` in-process on length-sorted batches from `plan_batches` with the "
         f"service's defaults ({MAX_BATCH_SIZE} items, {MAX_BATCH_TOKENS:,} padded tokens). rewardserve: "
         "`rewardserve serve`, default settings, result cache and gRPC off. naive: `loadtests/naive_server.py`, "
         f"one request at a time, in {MAX_BATCH_SIZE}-item chunks of request order."),
        (f"- rl-single: {len(w.single)} requests of one rollout, {plan.single_in_flight} in flight. rl-bulk: "
         f"{len(w.bulk)} requests of {plan.bulk_items} rollouts, {plan.bulk_in_flight} in flight. Closed-loop, "
         f"priority bulk, each run bounded to {plan.run_s:.0f}s, after a warm-up."),
        "- Phase times: " + ", ".join(f"{name} {s:.1f}s" for name, s in res.timings.items()) + ".",
        *[f"- **{note}**" for note in res.notes],
        "", "## Throughput", "", results_table(res),
        "", "## Scores: each system against the raw forward", "",
        (f"{len(res.reference)} rollouts across the length range; the reference is each forwarded alone in-process "
         f"(scores in [{min(ref, default=math.nan):.3f}, {max(ref, default=math.nan):.3f}]). Tolerance: "
         "rewardserve's canary tolerance for the dtype."), "", check_table(res), "",
    ]
    marker = report.ANALYSIS_MARKER
    analysis = previous.split(marker, 1)[1].lstrip("\n") if marker in previous else "## Analysis\n\n(none yet)\n"
    return "\n".join(parts) + "\n" + marker + "\n\n" + analysis


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="default: loadtests/RESULTS.gpu.md (RESULTS.gpu-smoke.md)")
    parser.add_argument("--smoke", action="store_true", help="tiny Llama on CPU, tiny counts (< 60 s)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="time limit of the whole run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-dir", type=Path, help="server logs (default: the report's directory)")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else GPU
    if plan.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device: run this on a GPU, or use --smoke")
    out = args.out or Path(__file__).resolve().parent / ("RESULTS.gpu-smoke.md" if args.smoke else "RESULTS.gpu.md")
    command = "python -m loadtests.gpu_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    started, budget = time.time(), Budget(time.monotonic() + args.budget_s)
    previous = out.read_text() if out.exists() else ""  # its hand-written analysis is kept
    def fire(*_):
        budget.end = time.monotonic()  # should a task swallow the exception, every later bound is 1 s
        raise OutOfTime(f"the {args.budget_s:.0f}s budget ran out")
    signal.signal(signal.SIGALRM, fire)
    signal.alarm(max(1, int(budget.left())))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)"
    res = Results(plan, gpu, next((peak for key, peak in PEAK_BF16 if key in gpu), None))
    w = rollouts(plan, args.seed)
    def write() -> str:  # after every phase, so a run killed from outside still leaves its report
        out.write_text(text := render(res, command, started, w, previous))
        return text
    say(f"{'smoke' if args.smoke else 'GPU'} plan on {res.gpu}, budget {args.budget_s:.0f}s: {len(w.items)} "
        f"rollouts, {sum(len(i['input_ids']) for i in w.items):,} tokens")
    with tempfile.TemporaryDirectory(prefix="gpu-bench-", dir=scratch_root()) as tmp:
        model_dir = Path(tmp) / "model"
        try:
            if phase(res, "model build", build_model, plan, model_dir, res):
                phase(res, "raw ceiling", raw_phase, plan, model_dir, w, res)
                for i, spec in enumerate(specs := server_specs(plan, model_dir, Path(tmp))):
                    write()
                    if budget.left() < plan.server_s / 2:
                        res.notes.append(f"{spec.system} skipped: {budget.left():.0f}s of the budget left")
                        continue
                    keep_s = plan.server_s * (len(specs) - 1 - i)  # bounds this one's runs, for the next
                    phase(res, spec.system, serve_phase, spec, plan, w, budget, keep_s, args.log_dir or out.parent, res)
        except OutOfTime as err:
            res.notes.append(f"stopped early: {err}")  # printed with the report below
        finally:
            signal.alarm(0)
    print(write(), flush=True)
    say(f"wrote {out}")


if __name__ == "__main__":
    main()
