"""A pipeline's metrics and drift over a live server: after scoring a known set of items,
/metrics holds exact counts of every component's values by status, its value and spread
histograms, rule and function call times, each model's call time and the reward per item;
and /v1/drift and the drift gauges hold a verifier's statistics against its baseline as
computed by hand."""

from __future__ import annotations

import math

import pytest
from metrics_helpers import scrape, wait_for_sample

from models.heads import RewardOutput
from service.monitoring.baseline import compute_baseline, write_baseline
from service.monitoring.pipeline_metrics import VALUE_BUCKETS

ITEMS = [
    {"prompt": "What is 2 + 3?", "response": "The answer is \\boxed{5}.", "ground_truth": "5"},
    {"prompt": "What is 7 * 6?", "response": "The answer is 42.", "ground_truth": "42"},
    {"prompt": "Name a colour.", "response": "Blue.", "ground_truth": "red"},
]
FORMAT = {"name": "fmt", "type": "rule", "rule": "format", "params": {"must_match": [r"\\boxed\{"]}}
FUNCTIONS = """import time

def failing(data_source, solution_str, ground_truth, extra_info=None):
    raise ValueError("no")

def slow(data_source, solution_str, ground_truth, extra_info=None):
    time.sleep(60)
"""


def score(http, model: str, **options) -> list[dict]:
    response = http.post("/v1/score", json={"model": model, "items": ITEMS, **options})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_component_metrics_count_every_item(served, tmp_path):
    functions = tmp_path / "functions.py"
    functions.write_text(FUNCTIONS)
    fn = {"name": "fn", "type": "python", "function": f"{functions}:failing"}
    slow = {"name": "slow", "type": "python", "function": f"{functions}:slow", "timeout_s": 0.5}
    checked = {"name": "checked", "on_component_error": "default", "components": [
        {"name": "rm", "type": "model", "model": "llama-scalar"},
        {"name": "ens", "type": "ensemble", "models": ["llama-scalar", "qwen2-scalar"]}, FORMAT, fn, slow]}
    strict = {"name": "strict", "components": [FORMAT, fn]}
    with served(["llama-scalar", "qwen2-scalar"], pipelines=[checked, strict]) as server:
        results = score(server.http, "checked")
        failed = score(server.http, "strict", on_item_error="item")
        s = scrape(server.http)

    def calls(component: str, status: str, pipeline: str = "checked") -> float:
        return s.value("rewardserve_pipeline_component_calls_total", pipeline=pipeline, component=component,
                       status=status)

    statuses = {"rm": "ok", "ens": "ok", "fmt": "ok", "fn": "error", "slow": "timeout"}
    assert {(c, st): calls(c, st) for c in statuses for st in ("ok", "timeout", "error")} == {
        (c, st): 3 if st == status else 0 for c, status in statuses.items() for st in ("ok", "timeout", "error")}
    assert [r["components"]["slow"]["status"] for r in results] == ["timeout"] * 3
    assert (calls("fmt", "ok", "strict"), calls("fn", "error", "strict")) == (3, 3)

    value = "rewardserve_pipeline_component_value"
    assert [r["components"]["fmt"]["value"] for r in results] == [1.0, 0.0, 0.0]
    assert s.value(f"{value}_count", pipeline="checked", component="fmt") == 3
    assert s.value(f"{value}_bucket", pipeline="checked", component="fmt", le="0.0") == 2  # pass rate 1 - 2/3
    assert s.value(f"{value}_bucket", pipeline="checked", component="fmt", le="1.0") == 3
    assert s.value(f"{value}_count", pipeline="checked", component="fn") == 0  # errors have no value
    for name in ("rm", "ens"):  # scores anywhere on the line: every bucket counts the values at or below it
        got = [r["components"][name]["value"] for r in results]
        assert s.value(f"{value}_count", pipeline="checked", component=name) == 3
        for le in VALUE_BUCKETS:
            assert s.value(f"{value}_bucket", pipeline="checked", component=name, le=str(le)) == sum(
                v <= le for v in got)
    spread = "rewardserve_pipeline_ensemble_spread"
    assert s.value(f"{spread}_count", pipeline="checked", component="ens") == 3
    assert s.value(f"{spread}_sum", pipeline="checked", component="ens") == pytest.approx(
        sum(r["components"]["ens"]["spread"] for r in results), abs=1e-9)

    seconds = "rewardserve_pipeline_component_duration_seconds_count"
    assert {c: s.value(seconds, pipeline="checked", component=c) for c in statuses} == {
        "rm": None, "ens": None, "fmt": 3, "fn": 3, "slow": 3}  # model components are timed per model call
    model_seconds = "rewardserve_pipeline_model_call_duration_seconds_count"
    assert {m: s.value(model_seconds, pipeline="checked", model=m) for m in ("llama-scalar", "qwen2-scalar")} == {
        "llama-scalar": 1, "qwen2-scalar": 1}

    assert s.value("rewardserve_pipeline_reward_count", pipeline="checked") == 3
    assert s.value("rewardserve_pipeline_reward_bucket", pipeline="checked", le="0.0") == sum(
        r["score"] <= 0 for r in results)
    assert all("error" in r for r in failed)
    assert s.value("rewardserve_pipeline_failed_items_total", pipeline="strict") == 3
    assert s.value("rewardserve_pipeline_failed_items_total", pipeline="checked") == 0
    assert s.value("rewardserve_pipeline_reward_count", pipeline="strict") == 0
    # a pipeline request's latency is labelled with the pipeline, not the last model it called
    assert s.value("rewardserve_request_duration_seconds_count", endpoint="/v1/score", model="checked") == 1


def test_a_verifiers_pass_rate_drift_is_its_mean_shift(served, tmp_path):
    """Reference pass rate 1/2 (values 1, 0, 1, 0), live 1/3 (ITEMS give 1, 0, 0)."""
    reference = [RewardOutput(score=v, dimensions={"fmt": v}) for v in (1.0, 0.0, 1.0, 0.0)]
    baseline = tmp_path / "drift_baseline.jsonl"
    write_baseline(baseline, compute_baseline("verified", "reference", "by hand", reference))
    verified = {"name": "verified", "components": [FORMAT], "drift_baseline": str(baseline)}
    mistyped = {"name": "mistyped", "components": [FORMAT], "drift_baseline": str(tmp_path / "missing.jsonl")}
    with served(["llama-scalar"], pipelines=[verified, mistyped], drift={"interval_s": 0.1, "min_samples": 3}) \
            as server:
        score(server.http, "verified")
        s = wait_for_sample(server.http, lambda s: s.value("rewardserve_drift_mean_shift", model="verified",
                                                           dimension="dim:fmt") is not None, "the drift gauges")
        report = server.http.get("/v1/drift").json()["models"]
        revision = server.http.get("/v1/models/verified").json()["revision"]

    assert report["verified"]["revision"] == revision
    # hand computation: reference mean 1/2, std 1/2; live mean 1/3, std sqrt(2)/3
    fmt = report["verified"]["dimensions"]["dim:fmt"]
    assert (fmt["observations"], fmt["live_mean"]) == (3, pytest.approx(1 / 3))
    assert fmt["statistics"]["mean_shift"] == pytest.approx((1 / 3 - 1 / 2) / (1 / 2))
    assert fmt["statistics"]["std_shift"] == pytest.approx((math.sqrt(2) / 3) / (1 / 2) - 1)
    # PSI over the baseline's bins (edges 0, 0.2, 0.5, 0.8, 1: reference quantiles of 0, 0, 1, 1),
    # half a value added to each of the six bins: reference 0|2|0|0|0|2, live 0|2|0|0|0|1
    live = [(n + 0.5) / (3 + 3) for n in (0, 2, 0, 0, 0, 1)]
    ref = [(n + 0.5) / (4 + 3) for n in (0, 2, 0, 0, 0, 2)]
    psi = sum((p - q) * math.log(p / q) for p, q in zip(live, ref))
    assert fmt["statistics"]["psi"] == pytest.approx(psi)
    assert report["verified"]["dimensions"]["score"]["statistics"] == fmt["statistics"]  # the reward is fmt
    for statistic in ("mean_shift", "std_shift", "psi"):
        gauge = s.value(f"rewardserve_drift_{statistic}", model="verified", dimension="dim:fmt")
        assert gauge == pytest.approx(fmt["statistics"][statistic])
    assert s.value("rewardserve_drift_window_mean", model="verified", dimension="dim:fmt") == pytest.approx(1 / 3)
    assert s.value("rewardserve_drift_baseline_loaded", model="verified") == 1
    assert s.value("rewardserve_drift_baseline_loaded", model="mistyped") == 0
    assert "missing.jsonl" in report["mistyped"]["baseline_error"]
