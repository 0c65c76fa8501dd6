"""Smoke tests of the benchmark harness (loadtests/): the workload files are a pure function
of their seed, and the load generator, run with tiny counts against a live server of a tiny
model (the service, and the naive baseline), produces counts and percentiles. No timing is
asserted: this machine's speed is not under test."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from loadtests import cache_scenario, loadgen, naive_server, servers, workloads
from service.config import Settings
from service.app import create_app
from tests.http_helpers import live_server, wait_until_loaded

SIZES = workloads.Sizes(rl_items=48, rerank_requests=4)
TINY_MAX = 128  # the tiny BERT's max_length
TIME_LIMIT_S = 20.0
SEP = 102  # [SEP] in the MiniLM WordPiece vocabulary


@pytest.fixture(scope="module")
def corpus() -> workloads.Corpus:
    return workloads.Corpus()


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory) -> dict[str, list[dict]]:
    out = tmp_path_factory.mktemp("workloads")
    workloads.build(out, seed=0, sizes=SIZES, corpus=corpus)
    return {name: workloads.load(name, out) for name in ("rl-bulk", "rerank-online")}


def test_workload_files_are_a_function_of_the_seed(corpus, tmp_path):
    first = workloads.build(tmp_path / "a", seed=0, sizes=SIZES, corpus=corpus)
    again = workloads.build(tmp_path / "b", seed=0, sizes=SIZES, corpus=corpus)
    other = workloads.build(tmp_path / "c", seed=1, sizes=SIZES, corpus=corpus)
    for name in first:
        assert first[name].read_bytes() == again[name].read_bytes(), name
        assert first[name].read_bytes() != other[name].read_bytes(), name


def test_workload_shapes(built):
    bulk = built["rl-bulk"]
    assert sum(len(r["items"]) for r in bulk) == SIZES.rl_items
    for request in bulk:
        assert len(request["items"]) % workloads.GROUP == 0 and len(request["items"]) <= 512
        for item in request["items"]:
            assert workloads.MIN_LEN <= len(item["input_ids"]) <= workloads.MAX_LEN
        for start in range(0, len(request["items"]), workloads.GROUP):  # a group shares its prompt
            group = request["items"][start:start + workloads.GROUP]
            prompts = {tuple(i["input_ids"][: i["input_ids"].index(SEP)]) for i in group}
            assert len(prompts) == 1
    rerank = built["rerank-online"]
    assert len(rerank) == SIZES.rerank_requests
    for request in rerank:
        assert 8 <= len(request["items"]) <= 32 and request["gap"] > 0
        assert len(request["num_tokens"]) == len(request["items"])


def test_percentile_interpolates():
    assert loadgen.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert loadgen.percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert math.isnan(loadgen.percentile([], 50))


def _requests(built: dict, model: str) -> tuple[list, list, list, list[float]]:
    """Tiny rl-bulk, rl-single and rerank request lists, cut to what the tiny model accepts."""
    items = [i for r in built["rl-bulk"] for i in r["items"] if len(i["input_ids"]) <= TINY_MAX]
    bulk = [loadgen.make_request(items[k:k + 8], sum(len(i["input_ids"]) for i in items[k:k + 8]), model, "bulk")
            for k in range(0, 24, 8)]
    single = [loadgen.make_request([i], len(i["input_ids"]), model, "bulk") for i in items[:16]]
    rerank = []
    for r in built["rerank-online"]:
        kept = [(item, n) for item, n in zip(r["items"], r["num_tokens"]) if n <= TINY_MAX]
        rerank.append(loadgen.make_request([i for i, _ in kept], sum(n for _, n in kept), model, "interactive"))
    gaps = [r["gap"] for r in built["rerank-online"]]
    return bulk, single, rerank, gaps


def _check(summary: loadgen.Summary, requests: list[loadgen.Request]) -> None:
    assert summary.sent == summary.ok == len(requests), summary.errors
    assert summary.unfinished == 0
    assert summary.items == sum(r.items for r in requests)
    assert summary.tokens == sum(r.tokens for r in requests)
    assert summary.wall_s > 0 and summary.tokens_per_s > 0 and summary.items_per_s > 0
    p50, p95, p99 = (summary.latency_ms(q) for q in (50, 95, 99))
    assert 0 < p50 <= p95 <= p99


async def _drive(url: str, bulk, single, rerank, gaps) -> list[tuple[loadgen.Summary, list]]:
    async with loadgen.Clients(url, 32) as http:
        return [
            (await loadgen.closed_loop(http, bulk, 2, TIME_LIMIT_S), bulk),
            (await loadgen.closed_loop(http, single, 16, TIME_LIMIT_S), single),
            (await loadgen.open_loop(http, rerank, loadgen.arrivals(gaps, 20.0), TIME_LIMIT_S), rerank),
        ]


@pytest.mark.parametrize("system", ["rewardserve", "naive"])
def test_load_generator_against_a_live_server(system, built, tiny_model_dirs):
    model_dir = tiny_model_dirs["bert-scalar"]
    if system == "rewardserve":
        app = create_app(Settings(**servers.ours_settings("bert", str(model_dir))))
    else:
        app = naive_server.create_app(model_dir, "bert", batch_size=8)
    with live_server(app) as url:
        if system == "rewardserve":
            wait_until_loaded(httpx.Client(base_url=url, timeout=10))
        for summary, requests in asyncio.run(_drive(url, *_requests(built, "bert"))):
            _check(summary, requests)
        if system == "naive":
            stats = httpx.get(url + "/stats", timeout=10).json()
            assert stats["padded_tokens"] >= stats["real_tokens"] > 0


def test_duplicates_view_repeats_exact_items(built):
    bulk = built["rl-bulk"]
    repeated = workloads.with_duplicates(bulk, 0.3, seed=0)
    assert repeated == workloads.with_duplicates(bulk, 0.3, seed=0)
    assert [len(r["items"]) for r in repeated] == [len(r["items"]) for r in bulk]
    originals = {tuple(i["input_ids"]) for r in bulk for i in r["items"]}
    items = [tuple(i["input_ids"]) for r in repeated for i in r["items"]]
    assert set(items) <= originals
    assert 0.15 < 1 - len(set(items)) / len(items) < 0.45  # about the asked share, repeats of repeats aside
    assert workloads.with_duplicates(bulk, 0.0, seed=0) == bulk


def test_cache_scenario_serves_repeats_from_cache(built, tiny_model_dirs):
    """The cache scenario's measurement against a live server with the LRU: repeats of the
    bulk run and the later single-item hits come back `cached`, bypassed requests do not."""
    model_dir = tiny_model_dirs["bert-scalar"]
    items = [i for r in built["rl-bulk"] for i in r["items"] if len(i["input_ids"]) <= TINY_MAX][:24]
    repeats = workloads.with_duplicates([{"items": items[k:k + 8]} for k in range(0, 24, 8)], 0.5, seed=0)
    bulk = [loadgen.make_request(r["items"], sum(len(i["input_ids"]) for i in r["items"]), "bert", "bulk")
            for r in repeats]
    singles = repeats[0]["items"][:4]
    w = cache_scenario.CacheWorkload(bulk, singles, "bert", 2, TIME_LIMIT_S)
    app = create_app(Settings(**servers.ours_settings("bert", str(model_dir), cache="lru")))
    with live_server(app) as url:
        wait_until_loaded(httpx.Client(base_url=url, timeout=10))
        run = asyncio.run(cache_scenario.measure(url, w, cached=True))
    _check(run.bulk, bulk)
    assert 0 < run.bulk.cached < run.bulk.items
    assert run.hits.cached == run.hits.items == len(singles)
    assert run.computed.ok == len(singles) and run.computed.cached == 0


def _rows(markdown: str, header_start: str) -> dict[str, list[str]]:
    """Rows of the Markdown table whose header begins with `header_start`, keyed by their
    first cells ('system workload' for the throughput table, 'system' for the score check)."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[" ".join(cells[:2]) if header_start.startswith("| system | workload") else cells[0]] = cells
    return rows


def test_gpu_bench_smoke_reports_every_system_and_matching_scores(tmp_path):
    """`loadtests.gpu_bench --smoke` runs the GPU benchmark's own code path on CPU with a tiny
    Llama: every system gets a throughput row with numbers and no errors, and the scores
    rewardserve and the naive server return equal the raw in-process forward (one request
    per item, and all in one batched request) within the fp32 tolerance."""
    out = tmp_path / "RESULTS.gpu.md"
    done = subprocess.run([sys.executable, "-m", "loadtests.gpu_bench", "--smoke", "--out", str(out)], check=False,
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    assert "failed" not in text and "stopped early" not in text, text
    throughput = _rows(text, "| system | workload |")
    expected = ["raw ceiling (forward only) all rollouts"] + [
        f"{system} {workload}" for system in ("rewardserve", "naive") for workload in ("rl-single", "rl-bulk")]
    assert sorted(throughput) == sorted(expected)
    for key, (_, _, tokens_per_s, items_per_s, *_, errors) in throughput.items():
        assert float(tokens_per_s.replace(",", "")) > 0 and float(items_per_s.replace(",", "")) > 0, key
        assert errors == "0", key
    for system in ("rewardserve", "naive"):
        p50, p99 = (float(v.replace(",", "")) for v in throughput[f"{system} rl-single"][4:6])
        assert 0 < p50 <= p99
    checks = _rows(text, "| system | items |")
    assert sorted(checks) == ["naive", "rewardserve"]
    for system, (_, items, alone, together, tolerance, verdict) in checks.items():
        assert int(items) >= 3 and float(tolerance) == 1e-3, system
        assert float(alone) <= 1e-5 and float(together) <= 1e-3 and verdict == "ok", checks[system]
