"""rewardserve under a real Prometheus server: the `prometheus` binary, started on a free
loopback port with a temporary config that scrapes a live rewardserve every second and loads
deploy/prometheus/alerts.yml, and stopped after. After traffic, PromQL through Prometheus's
HTTP API gives the latency quantile, the cache hit ratio, a drift gauge and a pipeline's
component statuses and pass rate; every query of the Grafana dashboard
(deploy/grafana/rewardserve.json) parses and names only metrics the live server's /metrics
exports, and the pipeline panels' metrics have samples once a pipeline has scored. Waits are
bounded; Prometheus's own storage is a temporary directory."""

from __future__ import annotations

import json
import re
import shutil

import httpx
import pytest
from http_helpers import live_server, sample_items, wait_until_loaded, write_config
from metrics_helpers import DASHBOARD, dashboard_queries, scrape, wait_for_sample
from prometheus_client.parser import text_string_to_metric_families
from replica_helpers import ALERTS, Prometheus, bounded_wait, query, scalar

from service.app import create_app
from service.cli import main
from service.config import ModelConfig, Settings, load_settings

MODEL = "scalar"
PIPELINE = "graded"
FORMAT_RULE = r"\\boxed\{"
WAIT_S = 60
METRIC = re.compile(r"\b(rewardserve_[a-z_]+)\b")
SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
pytestmark = pytest.mark.e2e  # outside programs: prometheus


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def server(tiny_model_dirs, load_tiny, tmp_path_factory):
    """A live rewardserve on a tiny scalar model with a drift baseline and a golden set, and
    a pipeline of it and a format rule, so every metric family has samples (Redis aside)
    once traffic has come; yields its HTTP client."""
    root = tmp_path_factory.mktemp("prometheus_e2e")
    model_dir = root / MODEL
    shutil.copytree(tiny_model_dirs["llama-scalar"], model_dir)
    pipeline = {"name": PIPELINE, "components": [
        {"name": "rm", "type": "model", "model": MODEL},
        {"name": "fmt", "type": "rule", "rule": "format", "params": {"must_match": [FORMAT_RULE]}}]}
    config = write_config(root / "config.yaml", {MODEL: model_dir}, drift={"interval_s": 0.2, "min_samples": 5},
                          canary={"interval_s": 0}, pipelines=[pipeline])
    items = root / "items.jsonl"
    items.write_text("".join(json.dumps(item) + "\n" for item in sample_items(load_tiny("llama-scalar"))))
    main(["baseline", str(items), "--config", str(config), "--write", "--quiet"])
    main(["canary-record", str(items), "--config", str(config), "--write"])
    app = create_app(load_settings(config))
    with live_server(app) as url, httpx.Client(base_url=url, timeout=WAIT_S) as client:
        assert wait_until_loaded(client).status_code == 200
        yield client


def pipeline_traffic(client: httpx.Client, tag: str) -> list[dict]:
    """Four items for the pipeline, the first two in the rule's format; their results."""
    items = [{"prompt": f"Sum {i} ({tag})", "response": f"It is \\boxed{{{i}}}." if i < 2 else f"It is {i}."}
             for i in range(4)]
    reply = client.post("/v1/score", json={"model": PIPELINE, "items": items})
    assert reply.status_code == 200, reply.text
    return reply.json()["results"]


def exported_sample_names(text: str) -> set[str]:
    """The sample names /metrics declares (histogram families as _bucket/_sum/_count,
    counters as _total), whether or not a family has samples yet."""
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name + suffix for suffix in SAMPLE_SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def traffic(client: httpx.Client, tag: str) -> int:
    """Eight items never sent before, scored twice (the repeats are cache hits); the number
    of items scored."""
    items = [{"prompt": f"Question {i} ({tag})", "response": "An answer. " * (i + 1)} for i in range(8)]
    for _ in range(2):
        for start in range(0, len(items), 4):
            reply = client.post("/v1/score", json={"model": MODEL, "items": items[start:start + 4]})
            assert reply.status_code == 200, reply.text
    return 2 * len(items)


def test_dashboard_names_only_exported_metrics(server):
    traffic(server, "dashboard")
    pipeline_traffic(server, "dashboard")
    scraped = wait_for_sample(server, lambda s: s.value("rewardserve_drift_window_mean", model=PIPELINE) is not None,
                              "the pipeline's drift window")
    exported = exported_sample_names(scraped.text)
    queries = dashboard_queries()
    assert len(queries) >= 30
    used = {name for query in queries for name in METRIC.findall(query)}
    assert used - exported == set()
    # every panel group the dashboard promises is there
    titles = {panel["title"] for panel in json.loads(DASHBOARD.read_text())["panels"]}
    for title in ("Request latency (scoring routes)", "Requests per second by endpoint", "Queue depth (items)",
                  "Batch efficiency", "Cache hit ratio", "PSI per dimension", "Canary max |deviation| vs tolerance",
                  "Reward pipelines", "Pipeline component latency p90", "Component error and timeout rates",
                  "Verifier pass rates", "Component values", "Ensemble spread",
                  "Component drift (mean shift, reference stds)"):
        assert title in titles
    # the pipeline panels' metrics are not only declared: a pipeline's traffic gave them samples
    pipeline_metrics = {name for query in dashboard_queries("Reward pipelines") for name in METRIC.findall(query)}
    assert "rewardserve_pipeline_component_calls_total" in pipeline_metrics
    assert pipeline_metrics - {"rewardserve_pipeline_ensemble_spread_sum", "rewardserve_pipeline_ensemble_spread_count",
                               "rewardserve_pipeline_ensemble_spread_bucket"} <= scraped.names()


# ---- a real Prometheus ---------------------------------------------------------------

needs_prometheus = pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed")


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    """A Prometheus scraping `server` every second; yields an HTTP client for its API."""
    targets = [str(server.base_url).removeprefix("http://")]
    with Prometheus(targets, [ALERTS], tmp_path_factory.mktemp("prometheus")) as prometheus:
        yield prometheus.api



@needs_prometheus
def test_promql_over_scraped_metrics(server, prometheus):
    bounded_wait(lambda: scalar(prometheus, 'up{job="rewardserve"}') == 1, "a first successful scrape")
    counters = {"scored": f'sum(rewardserve_scored_items_total{{model="{MODEL}"}})',
                "hits": "sum(rewardserve_cache_hits_total)", "lookups": "sum(rewardserve_cache_lookups_total)"}
    before = {name: scalar(prometheus, promql) or 0.0 for name, promql in counters.items()}
    scored = traffic(server, "prometheus")
    bounded_wait(lambda: scalar(prometheus, counters["scored"]) == before["scored"] + scored,
         "Prometheus to scrape the traffic")
    after = {name: scalar(prometheus, promql) for name, promql in counters.items()}

    p99 = scalar(prometheus, 'histogram_quantile(0.99, sum by (le) (rate(rewardserve_request_duration_seconds_bucket'
                             f'{{model="{MODEL}", endpoint="/v1/score", status="200"}}[1m])))')
    assert p99 is not None and 0 < p99 <= 60
    # every item was sent twice: half the lookups of the traffic were hits
    assert (after["hits"] - before["hits"]) / (after["lookups"] - before["lookups"]) == 0.5
    served = scrape(server)
    hit_ratio = scalar(prometheus, "sum(rewardserve_cache_hits_total) / sum(rewardserve_cache_lookups_total)")
    assert hit_ratio == pytest.approx(served.value("rewardserve_cache_hits_total")
                                      / served.value("rewardserve_cache_lookups_total"), rel=1e-9)
    windowed = scalar(prometheus, "sum(rate(rewardserve_cache_hits_total[1m])) / "
                                  "sum(rate(rewardserve_cache_lookups_total[1m]))")  # the dashboard's panel
    assert windowed is not None and 0 < windowed <= 1

    drift = server.get("/v1/drift").json()["models"][MODEL]["dimensions"]["score"]["statistics"]
    psi = bounded_wait(lambda: scalar(prometheus, f'rewardserve_drift_psi{{model="{MODEL}", dimension="score"}}'),
               "a drift gauge in Prometheus")
    assert psi == pytest.approx(drift["psi"], rel=1e-6)
    deviation = scalar(prometheus, f'rewardserve_canary_max_abs_deviation{{model="{MODEL}"}}')
    assert deviation is not None and deviation < 1e-4

    groups = prometheus.get("/api/v1/rules").json()["data"]["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert {"RewardserveRewardDrift", "RewardserveCanaryDeviation", "RewardserveLatencyP99OverSLO",
            "RewardserveQueueFullRate"} <= set(rules)
    assert all(rule["health"] != "err" for rule in rules.values()), rules


@needs_prometheus
def test_pipeline_metrics_in_prometheus(server, prometheus):
    """The dashboard's pass-rate and status queries over scraped pipeline metrics give the
    counts the server answered with."""
    calls = f'sum by (component, status) (rewardserve_pipeline_component_calls_total{{pipeline="{PIPELINE}"}})'
    bounded_wait(lambda: scalar(prometheus, 'up{job="rewardserve"}') == 1, "a first successful scrape")
    results = pipeline_traffic(server, "prometheus")
    served = scrape(server)
    rewarded = served.value("rewardserve_pipeline_reward_count", pipeline=PIPELINE)
    bounded_wait(lambda: scalar(prometheus, f'rewardserve_pipeline_reward_count{{pipeline="{PIPELINE}"}}') == rewarded,
                 "Prometheus to scrape the pipeline's traffic")
    by_status = {(r["metric"]["component"], r["metric"]["status"]): float(r["value"][1])
                 for r in query(prometheus, calls)}
    assert by_status == {(c, s): served.value("rewardserve_pipeline_component_calls_total", pipeline=PIPELINE,
                                              component=c, status=s)
                         for c in ("rm", "fmt") for s in ("ok", "timeout", "error")}
    assert by_status["fmt", "ok"] == rewarded and by_status["fmt", "error"] == 0
    value = "rewardserve_pipeline_component_value"
    pass_rate = scalar(prometheus, f'1 - sum({value}_bucket{{pipeline="{PIPELINE}", component="fmt", le="0.0"}}) / '
                                   f'sum({value}_count{{pipeline="{PIPELINE}", component="fmt"}})')
    assert pass_rate == 1 - served.value(f"{value}_bucket", pipeline=PIPELINE, component="fmt", le="0.0") / rewarded
    assert [r["components"]["fmt"]["value"] for r in results] == [1.0, 1.0, 0.0, 0.0]


@needs_prometheus
def test_every_dashboard_query_runs_in_prometheus(server, prometheus):
    for expr in dashboard_queries():
        promql = expr.replace("$__rate_interval", "1m").replace("$model", ".*").replace("$pipeline", ".*")
        query(prometheus, promql)  # a syntax or type error is a 400 with status "error"


@needs_prometheus
def test_prometheus_scrapes_metrics_behind_a_key(tiny_model_dirs, tmp_path):
    """metrics_require_key: Prometheus sends the key from its scrape config's
    `authorization` (as the README shows) and scrapes; without it the scrape is refused."""
    key = "k-scrape"
    settings = Settings(models=[ModelConfig(name=MODEL, path=str(tiny_model_dirs["llama-scalar"]))],
                        server={"grpc_port": 0}, auth={"api_keys": [key], "metrics_require_key": True})
    key_file = tmp_path / "rewardserve.key"
    key_file.write_text(key + "\n")
    with live_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=WAIT_S) as client:
        assert client.get("/metrics").status_code == 401
        target = [url.removeprefix("http://")]
        with Prometheus(target, [], tmp_path / "keyed", scrape={"authorization": {"credentials_file": str(key_file)}}) \
                as keyed:
            bounded_wait(lambda: scalar(keyed.api, 'up{job="rewardserve"}') == 1, "a scrape with the key")
            assert scalar(keyed.api, 'rewardserve_requests_in_flight{protocol="http"}') is not None
        with Prometheus(target, [], tmp_path / "keyless") as keyless:
            bounded_wait(lambda: scalar(keyless.api, 'up{job="rewardserve"}') == 0, "a scrape without the key")
