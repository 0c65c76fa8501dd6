"""The Kubernetes deployment in deploy/k8s. kubectl's built-in kustomize renders the base and
every overlay; each document validates against the Kubernetes API's schemas
(kubernetes-validate, strict: an unknown field fails), the custom resources against the CRD
fields of tests/k8s_crds.py. The server's config in the ConfigMap loads with the service's
own loader, the container's env on top; the probes, the ServiceMonitor's path and the
autoscaler's PromQL name routes and metrics that the real app serves (one live server on the
cpu overlay's config, scraped, and the queries run in a real Prometheus where it is
installed); the pod fits the image (its uid, a read-only root, HF_HOME) and drains within
its termination grace."""

from __future__ import annotations

import copy
import functools
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import jsonschema
import kubernetes_validate
import pytest
import redis
import yaml
from fastapi import FastAPI
from http_helpers import free_port, live_server, wait_until_loaded
from k8s_crds import CRD_SCHEMAS
from metrics_helpers import scrape
from paths import ROOT
from pydantic import SecretStr
from redis_helpers import needs_redis
from replica_helpers import Prometheus, bounded_wait, query
from starlette.routing import Match

from service.app import create_app
from service.config import Settings, load_settings

K8S = ROOT / "deploy" / "k8s"
TARGETS = ["base", "overlays/cpu", "overlays/gpu", "overlays/autoscale"]
GPU_TARGETS = ["overlays/gpu", "overlays/autoscale"]
KUBERNETES_VERSION = "1.32"  # the Kubernetes API checked against (kubernetes-validate ships its schemas)
NAMESPACE = "rewardserve"
DEVICES = {"base": "auto", "overlays/cpu": "cpu", "overlays/gpu": "cuda", "overlays/autoscale": "cuda"}
MARGIN_S = 10  # termination grace left after the preStop sleep and the drain
API_KEY = "k8s-test-key"
METRIC = re.compile(r"\b(rewardserve_[a-z_]+)\b")
WAIT_S = 60
# outside programs: kubectl (and redis-server, prometheus or promtool for some tests)
pytestmark = pytest.mark.e2e


@functools.cache
def render(target: str) -> tuple[dict, ...]:
    """`kubectl kustomize deploy/k8s/<target>`, parsed (shared: tests must not mutate)."""
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl (with its built-in kustomize) is needed to render deploy/k8s"
    done = subprocess.run([kubectl, "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def one(docs, kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} documents"
    return found[0]


def pod_spec(docs, name: str = "rewardserve") -> dict:
    return one(docs, "Deployment", name)["spec"]["template"]["spec"]


def container(docs, name: str = "rewardserve") -> dict:
    [found] = [c for c in pod_spec(docs, name)["containers"] if c["name"] == name]
    return found


def container_port(docs, port_name: str) -> int:
    [port] = [p["containerPort"] for p in container(docs)["ports"] if p["name"] == port_name]
    return port


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def served_settings(docs, directory: Path, monkeypatch, **env: str) -> Settings:
    """The server's settings as the pod gets them: the ConfigMap's file that
    REWARDSERVE_CONFIG names, through its volume mount, loaded by the service's loader with
    the container's literal REWARDSERVE_* env (and `env`) on top and no other."""
    pod, server = pod_spec(docs), container(docs)
    literal = {e["name"]: e["value"] for e in server["env"] if "value" in e and e["name"].startswith("REWARDSERVE_")}
    config_path = Path(literal.pop("REWARDSERVE_CONFIG"))
    [mount] = [m for m in server["volumeMounts"] if Path(m["mountPath"]) == config_path.parent]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    configmap = one(docs, "ConfigMap", volume["configMap"]["name"])
    local = directory / config_path.name
    local.write_text(configmap["data"][config_path.name])
    for name in [n for n in os.environ if n.startswith("REWARDSERVE_")]:
        monkeypatch.delenv(name)
    for name, value in (literal | env).items():
        monkeypatch.setenv(name, value)
    return load_settings(local)


def serves_get(app: FastAPI, path: str) -> bool:
    """A route of `app` answers GET `path` (routing as Starlette does it, included routers too)."""
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": [], "query_string": b""}
    return any(route.matches(scope)[0] == Match.FULL for route in app.routes)


def scaler_queries(docs) -> list[str]:
    return [t["metadata"]["query"] for t in one(docs, "ScaledObject")["spec"]["triggers"]]


def quantity_bytes(text: str) -> int:
    """A Kubernetes memory quantity (binary suffixes) or a Redis size (`768mb`), in bytes."""
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", text).groups()
    scale = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "kb": 2**10, "mb": 2**20, "gb": 2**30}[unit]
    return int(number) * scale


# ---- rendering and schemas -------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_renders_into_one_namespace(target):
    docs = render(target)
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "PersistentVolumeClaim",
            "NetworkPolicy", "ServiceMonitor"} <= kinds
    assert ("ScaledObject" in kinds) == (target == "overlays/autoscale")
    assert one(docs, "Namespace")["metadata"]["name"] == NAMESPACE
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {NAMESPACE}


@pytest.mark.parametrize("target", TARGETS)
def test_documents_validate(target):
    for doc in render(target):
        schema = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if schema is not None:
            jsonschema.Draft202012Validator(schema).validate(doc)
        else:  # raises SchemaNotFoundError for a kind with no schema either
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_crd_schemas_refuse_mistakes():
    for schema in CRD_SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    scaled = one(render("overlays/autoscale"), "ScaledObject")
    monitor = one(render("base"), "ServiceMonitor")
    mistakes = [
        (scaled, lambda d: d["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
         .update(stabilisationWindowSeconds=600)),
        (scaled, lambda d: d["spec"]["triggers"][0]["metadata"].update(threshold=5)),
        (scaled, lambda d: d["spec"]["triggers"][0]["metadata"].pop("query")),
        (scaled, lambda d: d["spec"].update(maxReplicas=8)),
        (monitor, lambda d: d["spec"]["endpoints"][0].update(interval="15 seconds")),
        (monitor, lambda d: d["spec"]["endpoints"][0].update(metricsPath="/metrics")),
    ]
    for doc, mistake in mistakes:
        wrong = copy.deepcopy(doc)
        mistake(wrong)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft202012Validator(CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])]).validate(wrong)


def test_model_loader_pod_mounts_the_models_claim():
    loader = yaml.safe_load((K8S / "model-loader.yaml").read_text())
    kubernetes_validate.validate(loader, KUBERNETES_VERSION, strict=True)
    claim = one(render("base"), "PersistentVolumeClaim")
    assert loader["metadata"]["namespace"] == claim["metadata"]["namespace"]
    [volume] = loader["spec"]["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    [mount] = loader["spec"]["containers"][0]["volumeMounts"]
    assert mount["mountPath"] == "/models" and not mount.get("readOnly")


# ---- the server's config ---------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_config_loads_with_the_service_settings(target, tmp_path, monkeypatch):
    docs = render(target)
    settings = served_settings(docs, tmp_path, monkeypatch)
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == container_port(docs, "http")
    assert settings.server.grpc_port == container_port(docs, "grpc")
    mounts = {m["mountPath"]: m for m in container(docs)["volumeMounts"]}
    for model in settings.models:
        assert model.path.startswith("builtin:") or Path(model.path).parent == Path("/models"), model.path
        assert model.device == DEVICES[target], model
    assert mounts["/models"]["readOnly"] is True
    [models_volume] = [v for v in pod_spec(docs)["volumes"] if v["name"] == mounts["/models"]["name"]]
    assert models_volume["persistentVolumeClaim"]["readOnly"] is True
    claim = one(docs, "PersistentVolumeClaim", models_volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # shared by replicas on any node
    # the shared cache is the Redis Service, on its port
    url = httpx.URL(settings.cache.redis_url)
    service = one(docs, "Service", url.host)
    assert url.port in [p["port"] for p in service["spec"]["ports"]]
    redis_pods = one(docs, "Deployment", url.host)["spec"]["template"]["metadata"]["labels"]
    assert selects(service["spec"]["selector"], redis_pods)


def test_api_keys_come_from_an_optional_secret(tmp_path, monkeypatch):
    """Without the Secret the env vars are unset and auth is off; with it, its values (JSON
    lists, as README's kubectl create secret writes them) load as the keys."""
    docs = render("base")
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(docs)["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}
    assert set(refs) == {"REWARDSERVE_AUTH__API_KEYS", "REWARDSERVE_AUTH__ADMIN_API_KEYS"}
    assert all(ref["optional"] is True and ref["name"] == "rewardserve-api-keys" for ref in refs.values())
    assert served_settings(docs, tmp_path, monkeypatch).auth.api_keys == []
    settings = served_settings(docs, tmp_path, monkeypatch, REWARDSERVE_AUTH__API_KEYS='["k1", "k2"]',
                               REWARDSERVE_AUTH__ADMIN_API_KEYS='["k3"]')
    assert [k.get_secret_value() for k in settings.auth.api_keys] == ["k1", "k2"]
    assert [k.get_secret_value() for k in settings.auth.admin_api_keys] == ["k3"]


@pytest.mark.parametrize("target", TARGETS)
def test_drain_fits_in_the_termination_grace(target, tmp_path, monkeypatch):
    docs = render(target)
    settings = served_settings(docs, tmp_path, monkeypatch)
    assert "REWARDSERVE_SERVER__DRAIN_GRACE_S" in {e["name"] for e in container(docs)["env"]}  # explicit, not a default
    command = container(docs)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2
    grace = pod_spec(docs)["terminationGracePeriodSeconds"]
    assert grace >= float(command[1]) + settings.server.drain_grace_s + MARGIN_S


@pytest.mark.parametrize("target", GPU_TARGETS)
def test_gpu_overlay_asks_for_a_gpu(target, tmp_path, monkeypatch):
    docs = render(target)
    server, pod = container(docs), pod_spec(docs)
    assert int(server["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert server["image"] == "rewardserve:cuda"
    for model in served_settings(docs, tmp_path, monkeypatch).models:
        assert (model.resolved_device(), model.resolved_dtype()) == ("cuda", "bfloat16")


# ---- the pods --------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_pods_run_unprivileged_on_a_read_only_root(target):
    docs = render(target)
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = int(re.search(r"useradd .*--uid (\d+)", dockerfile)[1])
    hf_home = Path(re.search(r"HF_HOME=(\S+)", dockerfile)[1])
    for name in ("rewardserve", "redis"):
        pod, main = pod_spec(docs, name), container(docs, name)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert main["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                           "capabilities": {"drop": ["ALL"]}}
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(main["resources"][kind]), (name, kind)
    pod, server = pod_spec(docs), container(docs)
    assert pod["securityContext"]["runAsUser"] == uid
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    writable = [Path(m["mountPath"]) for m in server["volumeMounts"] if m["name"] in empty_dirs]
    assert any(hf_home.is_relative_to(path) for path in writable), (hf_home, writable)


@pytest.mark.parametrize("target", TARGETS)
def test_services_and_budget_select_the_pods(target):
    docs = render(target)
    labels = one(docs, "Deployment", "rewardserve")["spec"]["template"]["metadata"]["labels"]
    service = one(docs, "Service", "rewardserve")
    assert selects(service["spec"]["selector"], labels)
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert (ports["http"]["port"], ports["grpc"]["port"]) == (8000, 50051)
    assert ports["grpc"]["appProtocol"] == "grpc"
    for port in ports.values():
        assert container_port(docs, port["targetPort"])  # a named port of the container
    assert selects(one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)
    [rule] = one(docs, "NetworkPolicy", "redis")["spec"]["ingress"]
    assert [selects(peer["podSelector"]["matchLabels"], labels) for peer in rule["from"]] == [True]


def redis_args(docs) -> dict[str, str]:
    args = container(docs, "redis")["args"]
    assert args[0] == "redis-server" and len(args) % 2 == 1
    return {flag.removeprefix("--"): value for flag, value in zip(args[1::2], args[2::2])}


@pytest.mark.parametrize("target", TARGETS)
def test_redis_is_a_bounded_cache(target):
    docs = render(target)
    args = redis_args(docs)
    assert (args["save"], args["appendonly"], args["maxmemory-policy"]) == ("", "no", "allkeys-lru")
    limit = quantity_bytes(container(docs, "redis")["resources"]["limits"]["memory"])
    assert quantity_bytes(args["maxmemory"]) <= 0.8 * limit  # room for Redis's own overhead


@needs_redis
def test_redis_server_takes_the_arguments():
    docs = render("base")
    args = redis_args(docs)
    port = free_port()
    process = subprocess.Popen(["redis-server", *container(docs, "redis")["args"][1:],
                                "--port", str(port), "--bind", "127.0.0.1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, socket_timeout=2)

        def answered() -> dict | None:
            try:
                return client.config_get("*")
            except redis.ConnectionError:
                return None

        config = bounded_wait(lambda: process.poll() is None and answered(),
                              "redis-server to answer (with the manifest's arguments)")
        assert config["maxmemory"] == str(quantity_bytes(args["maxmemory"]))
        assert (config["maxmemory-policy"], config["save"], config["appendonly"]) == ("allkeys-lru", "", "no")
    finally:
        process.kill()
        process.wait(timeout=10)


# ---- autoscaling -----------------------------------------------------------------------


def test_autoscale_owns_the_replica_count():
    docs = render("overlays/autoscale")
    deployment = one(docs, "Deployment", "rewardserve")
    assert "replicas" not in deployment["spec"]
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    spec = one(docs, "ScaledObject")["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300  # replicas take minutes to come back
    assert {t["type"] for t in spec["triggers"]} == {"prometheus"}
    for target in ("base", "overlays/cpu", "overlays/gpu"):
        assert one(render(target), "Deployment", "rewardserve")["spec"]["replicas"] >= 2


def test_autoscaler_queries_select_the_scraped_service():
    docs = render("overlays/autoscale")
    for promql in scaler_queries(docs):
        assert METRIC.search(promql), promql
        matchers = dict(re.findall(r'(\w+)="([^"]*)"', promql))
        assert matchers == {"namespace": NAMESPACE, "service": one(docs, "Service", "rewardserve")["metadata"]["name"]}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_autoscaler_queries_parse(tmp_path):
    queries = scaler_queries(render("overlays/autoscale"))
    rules = {"groups": [{"name": "keda", "rules": [{"record": f"keda:query_{i}", "expr": q}
                                                   for i, q in enumerate(queries)]}]}
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    done = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# ---- against the live server -----------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The cpu overlay's settings served for real, with an API key, gRPC and Redis off (no
    such host here); after one scored request, so the queue gauges have every sample.
    Yields (app, client without a key)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        settings = served_settings(render("overlays/cpu"), tmp_path_factory.mktemp("k8s"), monkeypatch)
    settings = settings.model_copy(update={"server": settings.server.model_copy(update={"grpc_port": 0}),
                                           "cache": settings.cache.model_copy(update={"redis_url": None}),
                                           "auth": settings.auth.model_copy(update={"api_keys": [SecretStr(API_KEY)]})})
    app = create_app(settings)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=WAIT_S) as client:
        assert wait_until_loaded(client).status_code == 200
        reply = client.post("/v1/score", headers={"x-api-key": API_KEY}, json={
            "model": settings.models[0].name, "items": [{"prompt": "Hello?", "response": "Hi there."}]})
        assert reply.status_code == 200, reply.text
        assert client.post("/v1/score", json={"items": []}).status_code == 401  # the key is in force
        yield app, client


@pytest.mark.parametrize("target", TARGETS)
def test_probes_are_open_routes_of_the_app(target, live, tmp_path, monkeypatch):
    app, client = live
    docs = render(target)
    settings = served_settings(docs, tmp_path, monkeypatch)
    server = container(docs)
    probes = {kind: server[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert (probes["readinessProbe"]["path"], probes["livenessProbe"]["path"]) == ("/health/ready", "/health/live")
    assert probes["startupProbe"]["path"] == "/health/ready"  # live answers before the models load
    assert server["startupProbe"]["periodSeconds"] * server["startupProbe"]["failureThreshold"] >= 600
    for probe in probes.values():
        assert container_port(docs, probe["port"]) == settings.server.port
        assert serves_get(app, probe["path"]) and probe["path"] in settings.auth.open_paths
        assert client.get(probe["path"]).status_code == 200  # no key needed


@pytest.mark.parametrize("target", TARGETS)
def test_service_monitor_scrapes_the_metrics_route(target, live, tmp_path, monkeypatch):
    app, client = live
    docs = render(target)
    settings = served_settings(docs, tmp_path, monkeypatch)
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service", "rewardserve")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    [endpoint] = monitor["spec"]["endpoints"]
    [port] = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert container_port(docs, port["targetPort"]) == settings.server.port
    assert serves_get(app, endpoint["path"]) and endpoint["path"] in settings.auth.open_paths
    reply = client.get(endpoint["path"])  # without a key, as Prometheus scrapes
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")


def test_autoscaler_queries_name_exported_metrics(live):
    _, client = live
    exported = scrape(client).names()
    for promql in scaler_queries(render("overlays/autoscale")):
        assert set(METRIC.findall(promql)) - exported == set(), promql


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed")
def test_autoscaler_queries_in_prometheus(live, tmp_path):
    """A Prometheus scraping the live server, its target labelled as the Prometheus Operator
    labels a ServiceMonitor's (namespace, service): each query gives KEDA the one number it
    needs."""
    _, client = live
    labels = {"namespace": NAMESPACE, "service": "rewardserve", "pod": "rewardserve-0"}
    with Prometheus([str(client.base_url).removeprefix("http://")], [], tmp_path, labels) as prometheus:
        for promql in scaler_queries(render("overlays/autoscale")):
            [sample] = bounded_wait(
                lambda promql=promql: query(prometheus.api, promql), f"a scraped sample for {promql}"
            )
            assert math.isfinite(float(sample["value"][1])) and float(sample["value"][1]) >= 0
