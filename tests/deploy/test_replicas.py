"""Several rewardserve replicas behind a real nginx load balancer (deploy/nginx), as
subprocesses on loopback ports:

- two replicas sharing a real Redis: a repeat scored on one replica is a cache hit on the
  other, which does not run the model for it; gRPC through nginx reaches both;
- one replica SIGKILLed under load: every request of a retrying client (service/client)
  still succeeds, with the unbatched reference's scores;
- a real Prometheus scraping both replicas: counters add up across `instance`s, drift and
  canary aggregate per model as deploy/prometheus/replicas.rules.yml records them (the
  worst replica, the mean, the replicas past a limit), and a canary alert names the one
  replica whose golden set no longer scores as recorded;
- deploy/compose: the docker-compose file's services, mounts, ports and names agree with
  each other and with the files they mount; its Prometheus config passes promtool.

Every wait is bounded; every process stops at the end of its fixture, also on failure."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from http_helpers import reference, sample_items, write_config
from metrics_helpers import scrape
from redis_helpers import RedisProcess, needs_redis
from replica_helpers import (
    ALERTS,
    DEPLOY,
    NGINX,
    NGINX_TEMPLATE,
    PLACEHOLDER,
    PROMETHEUS,
    Nginx,
    Prometheus,
    Replica,
    bounded_wait,
    free_port,
    query,
    scalar,
    start_replicas,
)

from service.cli import main
from service.client import RewardClient
from service.config import load_settings
from service.config.sections import ServerSettings

MODEL, TINY = "scalar", "llama-scalar"
TOL = 1e-5
CANARY_SHIFT = 0.5
RULES = DEPLOY / "prometheus" / "replicas.rules.yml"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yml"
UPSTREAM = "x-rewardserve-upstream"
# outside programs: nginx, redis-server, prometheus and promtool
pytestmark = pytest.mark.e2e

needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx)")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed")
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")


def items(tag: str, n: int) -> list[dict]:
    """`n` items never sent before (the tag), of different lengths."""
    return [{"prompt": f"Question {i} ({tag})", "response": "An answer. " * (1 + i % 7)} for i in range(n)]


def assert_scores(results: list, expected: list) -> None:
    """Results (dicts or ItemResults) carry the unbatched reference's numbers, in order."""
    assert len(results) == len(expected)
    for index, (result, want) in enumerate(zip(results, expected)):
        result = result if isinstance(result, dict) else result.model_dump()
        assert result["index"] == index
        assert result["num_tokens"] == want.num_tokens
        assert result["score"] == pytest.approx(want.score, abs=TOL, rel=0)


def run(argv: list[str]) -> subprocess.CompletedProcess:
    """A short command's exit status and output (bounded in time)."""
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


def metric(replica: Replica, name: str, **labels: str) -> float:
    with replica.client() as client:
        return scrape(client).value(name, **labels) or 0.0


# ---- two replicas sharing Redis, behind nginx ------------------------------------------


@pytest.fixture(scope="module")
def model_dirs(tiny_model_dirs, load_tiny, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny scalar model twice, with one drift baseline and one golden set: replica a's
    as recorded, replica b's with every expected score off by CANARY_SHIFT (a replica whose
    model changed under the same name, which its canary must catch). The golden set and the
    baseline are not part of the model's revision, so both serve the same cache keys."""
    root = tmp_path_factory.mktemp("replica_models")
    good, bad = root / "a" / MODEL, root / "b" / MODEL
    shutil.copytree(tiny_model_dirs[TINY], good)
    config = write_config(root / "config.yaml", {MODEL: good})
    reference_items = root / "items.jsonl"
    reference_items.write_text("".join(json.dumps(item) + "\n" for item in sample_items(load_tiny(TINY))))
    main(["baseline", str(reference_items), "--config", str(config), "--write", "--quiet"])
    main(["canary-record", str(reference_items), "--config", str(config), "--write"])
    shutil.copytree(good, bad)
    lines = [json.loads(line) for line in (bad / "canary.jsonl").read_text().splitlines()]
    for line in lines:
        line["expected"]["score"] += CANARY_SHIFT
    (bad / "canary.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return good, bad


class Cluster:
    def __init__(self, replicas: list[Replica], nginx: Nginx):
        self.replicas, self.nginx = replicas, nginx
        self.by_address = {replica.address: replica for replica in replicas}


@pytest.fixture(scope="module")
def cluster(model_dirs, tmp_path_factory):
    """Redis, two replicas of the model using it as their only cache tier (no in-process
    LRU, so every hit is a Redis hit), drift computed every 0.2 s over at least 5 values,
    the golden set run at start-up, gRPC on; nginx in front of both."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    root = tmp_path_factory.mktemp("replicas")
    with ExitStack() as stack:
        redis = stack.enter_context(RedisProcess())
        replicas = [Replica(name, MODEL, model_dir, root, grpc_port=free_port(), cache="redis", redis_url=redis.url,
                            extra={"drift": {"interval_s": 0.2, "min_samples": 5}, "canary": {"interval_s": 0}})
                    for name, model_dir in zip(("replica-a", "replica-b"), model_dirs)]
        for replica in replicas:
            stack.callback(replica.stop)
        start_replicas(replicas)
        for replica in replicas:  # the start-up canary's batches would show in the metrics the tests read
            with replica.client() as client:
                bounded_wait(lambda: MODEL in client.get("/v1/admin/canary").json()["models"],
                             f"the start-up canary of {replica.name}")
        nginx = stack.enter_context(Nginx(replicas, root / "nginx"))
        yield Cluster(replicas, nginx)


@needs_nginx
@needs_redis
def test_repeat_on_another_replica_is_a_redis_hit(cluster, load_tiny):
    """Why a shared Redis: a trainer's repeated rollouts land on any replica, and the one
    that did not score an input first still answers it from the cache, without a forward."""
    batch = items("cache", 4)
    expected = [reference(load_tiny(TINY), item) for item in batch]
    with httpx.Client(base_url=cluster.nginx.url, timeout=60) as client:
        first = client.post("/v1/score", json={"model": MODEL, "items": batch})
        assert first.status_code == 200, first.text
        assert not any(result.get("cached") for result in first.json()["results"])
        assert_scores(first.json()["results"], expected)
        scorer = cluster.by_address[first.headers[UPSTREAM]]
        other = next(replica for replica in cluster.replicas if replica is not scorer)
        hits = metric(other, "rewardserve_cache_hits_total", tier="redis")
        forwarded = metric(other, "rewardserve_batch_real_tokens_total", model=MODEL)

        def answered_by_other():
            reply = client.post("/v1/score", json={"model": MODEL, "items": batch})
            assert reply.status_code == 200, reply.text
            return reply if reply.headers[UPSTREAM] == other.address else None

        repeat = bounded_wait(answered_by_other, f"nginx to send a repeat to {other.name}", timeout=30)

    assert [result.get("cached") for result in repeat.json()["results"]] == [True] * len(batch)
    assert repeat.json()["results"] == [result | {"cached": True} for result in first.json()["results"]]
    assert metric(other, "rewardserve_cache_hits_total", tier="redis") == hits + len(batch)
    assert metric(other, "rewardserve_batch_real_tokens_total", model=MODEL) == forwarded  # no forward


@needs_nginx
@needs_redis
def test_grpc_through_nginx_reaches_both_replicas(cluster, load_tiny):
    """nginx balances gRPC calls too (grpc_pass): each call of one client may go to either
    replica, and every answer is the reference's."""
    before = {r.name: metric(r, "rewardserve_request_duration_seconds_count", protocol="grpc")
              for r in cluster.replicas}
    model = load_tiny(TINY)
    with RewardClient(cluster.nginx.grpc_url, model=MODEL, timeout_s=60) as client:
        for call in range(6):
            batch = items(f"grpc {call}", 2)
            assert_scores(client.score(batch).results, [reference(model, item) for item in batch])
    for replica in cluster.replicas:
        calls = metric(replica, "rewardserve_request_duration_seconds_count", protocol="grpc") - before[replica.name]
        assert calls >= 1, f"no gRPC call reached {replica.name}"


# ---- Prometheus over both replicas ----------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(cluster, tmp_path_factory):
    """A Prometheus scraping both replicas (two targets of job rewardserve) every second,
    with the alerting rules and the cross-replica recording rules."""
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed")
    with Prometheus([r.address for r in cluster.replicas], [ALERTS, RULES],
                    tmp_path_factory.mktemp("replicas_prometheus")) as server:
        bounded_wait(lambda: scalar(server.api, 'count(up{job="rewardserve"} == 1)') == 2, "both targets up")
        yield server.api


def by_instance(api: httpx.Client, promql: str) -> dict[str, float]:
    return {series["metric"]["instance"]: float(series["value"][1]) for series in query(api, promql)}


def send_through_nginx(cluster: Cluster, tag: str, requests: int, per_request: int) -> dict[str, int]:
    """Unique items through nginx; the items each replica answered, by its address."""
    answered = {replica.address: 0 for replica in cluster.replicas}
    with httpx.Client(base_url=cluster.nginx.url, timeout=60) as client:
        for number in range(requests):
            reply = client.post("/v1/score", json={"model": MODEL, "items": items(f"{tag} {number}", per_request)})
            assert reply.status_code == 200, reply.text
            answered[reply.headers[UPSTREAM]] += per_request
    return answered


@needs_nginx
@needs_redis
@needs_prometheus
def test_counters_add_up_across_replicas(cluster, prometheus):
    """`sum by (model)` over the replicas' counters is the traffic nginx spread over them:
    each replica's series is what it answered, and the sum is every item sent."""
    before = {r.address: metric(r, "rewardserve_scored_items_total", model=MODEL) for r in cluster.replicas}
    answered = send_through_nginx(cluster, "counters", requests=12, per_request=4)
    after = {r.address: metric(r, "rewardserve_scored_items_total", model=MODEL) for r in cluster.replicas}

    assert all(count > 0 for count in answered.values()), answered  # nginx used both
    assert {address: after[address] - before[address] for address in after} == answered
    series = f'rewardserve_scored_items_total{{job="rewardserve", model="{MODEL}"}}'
    bounded_wait(lambda: by_instance(prometheus, series) == after, "Prometheus to scrape the traffic")
    assert scalar(prometheus, f"sum by (model) ({series})") == sum(after.values())
    bounded_wait(lambda: scalar(prometheus, f'model:rewardserve_replicas_ready:sum{{model="{MODEL}"}}') == 2,
                 "the recorded count of ready replicas")
    rate = bounded_wait(lambda: scalar(prometheus, f'model:rewardserve_scored_items:rate5m{{model="{MODEL}"}}'),
                        "the recorded scoring rate")
    assert rate > 0
    p99 = bounded_wait(lambda: scalar(prometheus, 'model_endpoint:rewardserve_request_duration_seconds:p99_5m'
                                                  f'{{model="{MODEL}", endpoint="/v1/score"}}'),
                       "the recorded p99 over both replicas' histograms")
    assert 0 < p99 <= 60


def replica_drift(replica: Replica, since: float) -> dict:
    """The replica's report of the `score` dimension, once computed after `since`."""
    def report():
        with replica.client() as client:
            body = client.get("/v1/drift").json()["models"][MODEL]
        computed = body["computed_at"] is not None and body["computed_at"] > since
        score = body.get("dimensions", {}).get("score", {})
        return score if computed and score.get("statistics") else None
    return bounded_wait(report, f"a drift report of {replica.name} covering the traffic")


@needs_nginx
@needs_redis
@needs_prometheus
def test_drift_aggregates_per_model_across_replicas(cluster, prometheus):
    """Each replica computes drift over its own window (its share of the traffic); per model,
    the recorded max and avg over the replicas are those of the replicas' own reports, the
    windows add up, and the count of replicas past a threshold is the count of reports that
    say so."""
    send_through_nginx(cluster, "drift", requests=12, per_request=5)
    sent_at = time.time()  # a report computed later covers every item (the servers' clock is this one)
    reports = {r.address: replica_drift(r, sent_at) for r in cluster.replicas}
    psi = {address: report["statistics"]["psi"] for address, report in reports.items()}

    selector = f'{{job="rewardserve", model="{MODEL}", dimension="score"}}'
    bounded_wait(lambda: by_instance(prometheus, f"rewardserve_drift_psi{selector}") == pytest.approx(psi, rel=1e-9),
                 "Prometheus to scrape both drift gauges")
    expected = {"max": max(psi.values()), "avg": sum(psi.values()) / len(psi)}
    assert scalar(prometheus, f"max by (model, dimension) (rewardserve_drift_psi{selector})") == pytest.approx(
        expected["max"], rel=1e-9)
    assert scalar(prometheus, f"avg by (model, dimension) (rewardserve_drift_psi{selector})") == pytest.approx(
        expected["avg"], rel=1e-9)
    for how, value in expected.items():
        recorded = f'model_dimension:rewardserve_drift_psi:{how}{{model="{MODEL}", dimension="score"}}'
        bounded_wait(lambda recorded=recorded, value=value: scalar(prometheus, recorded)
                     == pytest.approx(value, rel=1e-9), f"recorded {how} PSI")

    observations = sum(report["observations"] for report in reports.values())
    recorded = f'model_dimension:rewardserve_drift_window_observations:sum{{model="{MODEL}", dimension="score"}}'
    bounded_wait(lambda: scalar(prometheus, recorded) == observations, "the recorded window sizes")
    past_psi = sum("psi" in report["exceeded"] for report in reports.values())
    recorded = ('model_dimension_statistic:rewardserve_drift_exceeded_replicas:sum'
                f'{{model="{MODEL}", dimension="score", statistic="psi"}}')
    bounded_wait(lambda: scalar(prometheus, recorded) == past_psi, "the recorded count of drifted replicas")


@needs_nginx
@needs_redis
@needs_prometheus
def test_canary_aggregates_catch_the_one_bad_replica(cluster, prometheus):
    """One replica of two fails its golden set: per model, the worst deviation is that
    replica's, the least `passed` is 0 and one replica is counted failing, and the canary
    alert fires for that replica's instance alone."""
    results = {}
    for replica in cluster.replicas:
        with replica.client() as client:
            results[replica.address] = client.get("/v1/admin/canary").json()["models"][MODEL]
    good, bad = (replica.address for replica in cluster.replicas)
    assert results[good]["passed"] and results[good]["max_abs_deviation"] < 1e-4
    assert not results[bad]["passed"]
    assert results[bad]["max_abs_deviation"] == pytest.approx(CANARY_SHIFT, abs=1e-4)

    selector = f'{{job="rewardserve", model="{MODEL}"}}'
    bounded_wait(lambda: by_instance(prometheus, f"rewardserve_canary_passed{selector}") == {good: 1.0, bad: 0.0},
                 "both canary results in Prometheus")
    recorded = {
        "model:rewardserve_canary_passed:min": 0.0,
        "model:rewardserve_canary_failing_replicas:sum": 1.0,
        "model:rewardserve_canary_max_abs_deviation:max": results[bad]["max_abs_deviation"],
    }
    for name, value in recorded.items():
        bounded_wait(lambda name=name, value=value: scalar(prometheus, f'{name}{{model="{MODEL}"}}')
                     == pytest.approx(value, rel=1e-9), f"{name} to be {value}")

    def firing():
        alerts = query(prometheus, 'ALERTS{alertname="RewardserveCanaryDeviation", alertstate="firing"}')
        return alerts or None
    alerts = bounded_wait(firing, "the canary alert")
    assert [(a["metric"]["instance"], a["metric"]["model"]) for a in alerts] == [(bad, MODEL)]


# ---- a replica killed under load ------------------------------------------------------

KILL_REQUESTS, KILL_WORKERS, KILL_ITEMS = 160, 8, 2


@pytest.fixture
def pair(tiny_model_dirs, tmp_path):
    """Two replicas without a cache (every request is a forward) whose bulk batches wait up
    to 50 ms to fill, so requests are in flight on each at any time under load; nginx in
    front. Yields (replicas, nginx)."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    with ExitStack() as stack:
        replicas = [Replica(name, MODEL, tiny_model_dirs[TINY], tmp_path, cache="off",
                            extra={"batching": {"max_wait_ms": 50}})
                    for name in ("kill-a", "kill-b")]
        for replica in replicas:
            stack.callback(replica.stop)
        start_replicas(replicas)
        yield replicas, stack.enter_context(Nginx(replicas, tmp_path / "nginx"))


@needs_nginx
def test_killed_replica_loses_no_request(pair, load_tiny):
    """A replica SIGKILLed with requests in flight: nginx passes the ones it held on to the
    other replica (non_idempotent), later ones skip it, and the client retries what is
    left (connection errors, 503); every request ends with the reference's scores."""
    (victim, survivor), nginx = pair
    requests = [items(f"kill {number}", KILL_ITEMS) for number in range(KILL_REQUESTS)]
    model = load_tiny(TINY)
    expected = [[reference(model, item) for item in batch] for batch in requests]
    answers: list = [None] * KILL_REQUESTS
    completed = threading.Semaphore(0)

    def worker(first: int) -> None:
        with RewardClient(nginx.url, model=MODEL, timeout_s=60, retries=8, backoff_s=0.05) as client:
            for number in range(first, KILL_REQUESTS, KILL_WORKERS):
                answers[number] = client.score(requests[number], priority="bulk")
                completed.release()

    with ThreadPoolExecutor(KILL_WORKERS) as pool:
        futures = [pool.submit(worker, first) for first in range(KILL_WORKERS)]
        for _ in range(KILL_REQUESTS // 4):  # a quarter done: the load is on both replicas
            assert completed.acquire(timeout=60), "the load did not get going"
        # /metrics counts itself in flight: 2 means a scoring request is in flight too
        bounded_wait(lambda: metric(victim, "rewardserve_requests_in_flight", protocol="http") >= 2,
                     f"requests in flight on {victim.name}", timeout=30, interval=0.01)
        victim.kill()
        done, pending = wait_futures(futures, timeout=180)
        assert not pending, "the load did not finish"
        for future in done:
            future.result()  # a request the client gave up on raises here

    assert victim.process.returncode == -signal.SIGKILL
    for number, answer in enumerate(answers):
        assert answer is not None, f"request {number} lost"
        assert_scores(answer.results, expected[number])

    def logged():  # nginx logs a request once it is done, just after its answer
        lines = [entry for entry in nginx.access_log() if entry["uri"] == "/v1/score"]
        return lines if len(lines) >= KILL_REQUESTS else None

    log = bounded_wait(logged, "nginx to log every request")
    assert {entry["status"] for entry in log} == {200}
    upstreams = [entry["upstream"] for entry in log]
    assert victim.address in upstreams, "the victim served nothing before it was killed"
    passed_on = [u for u in upstreams if u == f"{victim.address}, {survivor.address}"]
    assert passed_on, "no request was passed from the killed replica to the other"


# ---- the shipped files --------------------------------------------------------------


@needs_promtool
def test_recording_rules_pass_promtool():
    done = run(["promtool", "check", "rules", str(RULES)])
    assert done.returncode == 0, done.stdout + done.stderr


@needs_nginx
def test_nginx_template_renders_to_a_valid_config(tmp_path):
    """deploy/nginx/nginx.conf with the template filled in passes `nginx -t` (no replica
    needs to run: nginx resolves the loopback addresses only)."""
    replicas = [Replica(name, MODEL, tmp_path, tmp_path, grpc_port=free_port()) for name in ("t-a", "t-b")]
    lb = Nginx(replicas, tmp_path / "nginx")
    lb.write_config()
    done = run(lb.argv("-t"))
    assert done.returncode == 0, done.stderr
    assert PLACEHOLDER.search((lb.dir / "rewardserve.conf").read_text()) is None


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of each volume: a path for bind mounts (relative to the compose
    file), a name for named volumes."""
    out = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        out.append((source, target))
    return out


def bind_source(source: str) -> Path | None:
    return (COMPOSE_DIR / source).resolve() if source.startswith((".", "/")) else None


def host_port(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


def test_compose_services_mounts_and_ports_agree():
    """Every file the compose file builds from or mounts exists, named volumes are declared,
    dependencies name services, published ports do not clash, and the replicas' config is
    valid and points at the compose Redis."""
    spec = compose()
    services = spec["services"]
    assert {"rewardserve-1", "rewardserve-2", "redis", "nginx", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        if "build" in service:
            context = (COMPOSE_DIR / service["build"]["context"]).resolve()
            assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file(), name
        for source, _target in mounts(service):
            path = bind_source(source)
            if path is None:
                assert source in spec.get("volumes", {}), f"{name}: volume {source} is not declared"
            else:
                assert path.exists(), f"{name}: {source} does not exist"
        assert set(service.get("depends_on", {})) <= set(services), name
    published = [port.rsplit(":", 1)[0] for service in services.values() for port in service.get("ports", [])]
    assert len(published) == len(set(published)), published

    replicas = [name for name in services if name.startswith("rewardserve-")]
    for name in replicas:
        service = services[name]
        config = dict(mounts(service))["./rewardserve.yaml"]
        assert service["environment"]["REWARDSERVE_CONFIG"] == config
        dockerfile = (COMPOSE_DIR / service["build"]["context"] / service["build"]["dockerfile"]).read_text()
        assert "HEALTHCHECK" in dockerfile, "nginx waits for the replicas' health check"


def replica_settings(monkeypatch) -> ServerSettings:
    """The compose replicas' server settings, from their file as the server loads it (without
    the test environment's REWARDSERVE_* overrides)."""
    for key in [k for k in os.environ if k.startswith("REWARDSERVE_")]:
        monkeypatch.delenv(key)
    settings = load_settings(COMPOSE_DIR / "rewardserve.yaml")
    assert settings.server.host == "0.0.0.0"
    assert urlsplit(settings.cache.redis_url).hostname == "redis"
    return settings.server


def test_compose_nginx_balances_the_replicas(monkeypatch):
    """The nginx service fills every placeholder of deploy/nginx/rewardserve.conf.template,
    names each replica at the ports its settings serve, and publishes what it listens on."""
    services = compose()["services"]
    settings = replica_settings(monkeypatch)
    nginx = services["nginx"]
    env = nginx["environment"]
    template_target = dict(mounts(nginx))["../nginx/rewardserve.conf.template"]
    assert template_target.startswith("/etc/nginx/templates/") and template_target.endswith(".template")
    placeholders = set(PLACEHOLDER.findall(NGINX_TEMPLATE.read_text()))
    assert placeholders <= set(env), placeholders - set(env)
    replicas = sorted(name for name in services if name.startswith("rewardserve-"))
    for number, name in enumerate(replicas, 1):
        assert host_port(env[f"RS_REPLICA_{number}_HTTP"]) == (name, settings.port)
        assert host_port(env[f"RS_REPLICA_{number}_GRPC"]) == (name, settings.grpc_port)
    published = {int(port.rsplit(":", 1)[1]) for port in nginx["ports"]}
    assert published == {int(env["RS_LISTEN_HTTP"]), int(env["RS_LISTEN_GRPC"])}
    assert set(replicas) <= set(nginx["depends_on"])


@needs_promtool
def test_compose_prometheus_config_passes_promtool(tmp_path, monkeypatch):
    """The Prometheus container's /etc/prometheus, laid out from the compose mounts, passes
    `promtool check config` (its rule files included) and scrapes each replica directly."""
    services = compose()["services"]
    settings = replica_settings(monkeypatch)
    prometheus = services["prometheus"]
    etc = tmp_path / "etc" / "prometheus"
    etc.mkdir(parents=True)
    for source, target in mounts(prometheus):
        if target.startswith("/etc/prometheus/"):
            shutil.copy(bind_source(source), etc / target.removeprefix("/etc/prometheus/"))
    config_flag = next(arg for arg in prometheus["command"] if arg.startswith("--config.file="))
    config = etc / config_flag.split("=", 1)[1].removeprefix("/etc/prometheus/")
    done = run(["promtool", "check", "config", str(config)])
    assert done.returncode == 0, done.stdout + done.stderr
    body = yaml.safe_load(config.read_text())
    assert {"alerts.yml", "replicas.rules.yml"} <= set(body["rule_files"])
    targets = [t for job in body["scrape_configs"] for group in job["static_configs"] for t in group["targets"]]
    replicas = sorted(name for name in services if name.startswith("rewardserve-"))
    assert sorted(targets) == [f"{name}:{settings.port}" for name in replicas]


def test_compose_grafana_provisions_the_dashboard_and_prometheus():
    """Grafana's provisioning files are valid YAML: the default datasource is the compose
    Prometheus, and the dashboard provider reads the directory deploy/grafana/rewardserve.json
    is mounted into."""
    services = compose()["services"]
    grafana = services["grafana"]
    provisioning = {target: bind_source(source) for source, target in mounts(grafana)
                    if target.startswith("/etc/grafana/provisioning/")}
    datasources = provisioning["/etc/grafana/provisioning/datasources"]
    dashboards = provisioning["/etc/grafana/provisioning/dashboards"]
    sources = [s for f in sorted(datasources.glob("*.yml")) for s in yaml.safe_load(f.read_text())["datasources"]]
    default = [s for s in sources if s.get("isDefault")]
    assert len(default) == 1 and default[0]["type"] == "prometheus"
    url = urlsplit(default[0]["url"])
    assert url.hostname == "prometheus" and "prometheus" in services
    assert any(port.endswith(f":{url.port}") for port in services["prometheus"]["ports"])
    assert "prometheus" in grafana["depends_on"]

    providers = [p for f in sorted(dashboards.glob("*.yml")) for p in yaml.safe_load(f.read_text())["providers"]]
    assert providers and all(p["type"] == "file" for p in providers)
    mounted = {target: bind_source(source) for source, target in mounts(grafana)}
    dashboard_files = {target: path for target, path in mounted.items()
                       if any(target.startswith(p["options"]["path"].rstrip("/") + "/") for p in providers)}
    assert list(dashboard_files.values()) == [DEPLOY / "grafana" / "rewardserve.json"]
    assert json.loads((DEPLOY / "grafana" / "rewardserve.json").read_text())["uid"] == "rewardserve"
    home = grafana["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    assert home is None or home in dashboard_files


def compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin) or `docker-compose` (v1), whichever runs here."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        if run([*command, "version"]).returncode == 0:
            return command
    return None


def test_compose_file_passes_docker_compose_config():
    """Compose's own validation, which needs no engine; skipped where no compose runs."""
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    done = run([*command, "-f", str(COMPOSE), "config", "-q"])
    assert done.returncode == 0, done.stdout + done.stderr
