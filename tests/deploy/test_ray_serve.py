"""rewardserve as a Ray Serve application (service/rayserve/) on a real two-node Ray
cluster: a head and a worker started with `ray start` on their own loopback addresses, from
the Ray venv (Ray's dependencies stay out of the service's venv). The app is deployed with
`serve run` from a config shaped like deploy/ray/serve_config.yaml, two replicas of each of
two models sized so they must span both nodes; then every answer through Ray's HTTP proxy,
and through a DeploymentHandle, is compared with the single-process server's."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest
import yaml
from paths import ROOT

from service.app import create_app
from service.config import load_settings
from service.rayserve.asgi import Call, call
from service.rayserve.routing import Routes
from tests.http_helpers import free_port, live_server, poll, sample_items, within_tol, write_config

RAY_VENV = ROOT / "loadtests" / ".venv-ray"
MAKE_TARGET = "make loadtests/.venv-ray/.installed"
# outside programs: the Ray venv (which `make test` builds) and its `ray start`
pytestmark = pytest.mark.e2e

SERVE_CONFIG = ROOT / "deploy" / "ray" / "serve_config.yaml"
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"  # Ray turns 127.0.0.1 into the host's network address
MODELS = ("llama-scalar", "qwen2-prm")
START_TIMEOUT_S = 120
READY_TIMEOUT_S = 180
STOP_GRACE_S = 5

# Run in the Ray venv, inside the cluster: the DeploymentHandle's answers, and where Ray put
# each replica.
HANDLE_DRIVER = """
import json, sys, time
import ray
from ray import serve
from service.rayserve.deployments import RewardServeError

score, compare, invalid = (json.loads(arg) for arg in sys.argv[2:5])
ray.init(address=sys.argv[1], logging_level="error", log_to_driver=False)
deadline = time.monotonic() + 180
while serve.status().applications["rewardserve"].status != "RUNNING":  # every replica up
    assert time.monotonic() < deadline, serve.status()
    time.sleep(0.5)
handle = serve.get_app_handle("rewardserve")
out = {"score": handle.score.remote(score).result(timeout_s=120),
       "compare": handle.post.remote("/v1/compare", compare).result(timeout_s=120)}
try:
    handle.score.remote(invalid).result(timeout_s=120)
except RewardServeError as err:
    out["error"] = [err.status, err.body]
out["replicas"] = sorted([a["ActorClassName"], a["Address"]["IPAddress"]] for a in ray._private.state.actors().values()
                         if a["State"] == "ALIVE" and a["ActorClassName"].startswith("ServeReplica:"))
print(json.dumps(out))
"""
SHUTDOWN_DRIVER = """
import sys
import ray
from ray import serve

ray.init(address=sys.argv[1], logging_level="error", log_to_driver=False)
serve.shutdown()
"""


class Cluster(NamedTuple):
    bin_dir: Path
    address: str
    logs: Path


def ray_env() -> dict[str, str]:
    """The caller's environment without its Ray settings. Token auth is off explicitly: a
    head turns it on by itself once any earlier local Ray left a ~/.ray/auth_token, and
    then the worker and the drivers of this loopback cluster would be refused."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return env | {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def ray_venv() -> Path:
    """The Ray venv's bin/, with Ray Serve and rewardserve importable; a clear failure
    naming the make target otherwise (CI builds it before the tests)."""
    python = RAY_VENV / "bin" / "python"
    if not python.exists():
        pytest.fail(f"no Ray venv at {RAY_VENV}: build it with `{MAKE_TARGET}`")
    check = subprocess.run([str(python), "-c", "import ray.serve, service.rayserve.builder"], capture_output=True,
                           text=True, check=False, timeout=120, cwd=ROOT, env=ray_env())
    if check.returncode:
        pytest.fail(f"the Ray venv at {RAY_VENV} cannot import the app; rebuild it with `rm -rf {RAY_VENV} && "
                    f"{MAKE_TARGET}`:\n"
                    f"{check.stderr[-2000:]}")
    return python.parent


def in_ray_venv(bin_dir: Path, code: str, *args: str) -> str:
    """The last line `code` prints, run by the Ray venv's python."""
    run = subprocess.run([str(bin_dir / "python"), "-c", code, *args], capture_output=True, text=True, check=False,
                         timeout=START_TIMEOUT_S, cwd=ROOT, env=ray_env())
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout.strip().rsplit("\n", 1)[-1]


def start_node(bin_dir: Path, args: list[str], groups: list[int]) -> None:
    """`ray start` in its own process group, which every process it leaves running joins,
    so stopping the group stops this node and nothing else on the machine."""
    node = subprocess.Popen([str(bin_dir / "ray"), "start", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats",
                             "--object-store-memory=200000000", f"--dashboard-agent-listen-port={free_port()}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            cwd=ROOT, env=ray_env())
    groups.append(node.pid)
    out, _ = node.communicate(timeout=START_TIMEOUT_S)
    assert node.returncode == 0, f"ray start {args} failed:\n{out[-3000:]}"


def stop_groups(groups: list[int]) -> None:
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for group in groups:
            try:
                os.killpg(group, signum)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and any(_alive(group) for group in groups):
            time.sleep(0.2)


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def cluster():
    """A running two-node cluster, torn down afterwards."""
    bin_dir = ray_venv()
    temp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # Ray's socket paths must stay short
    address = f"{HEAD_IP}:{free_port()}"
    groups: list[int] = []
    try:
        start_node(bin_dir, ["--head", f"--node-ip-address={HEAD_IP}", f"--port={address.split(':')[1]}",
                             f"--temp-dir={temp}", "--include-dashboard=false", f"--dashboard-port={free_port()}",
                             f"--ray-client-server-port={free_port()}"], groups)
        start_node(bin_dir, [f"--address={address}", f"--node-ip-address={WORKER_IP}"], groups)
        yield Cluster(bin_dir, address, Path(temp) / "session_latest" / "logs")
    finally:
        stop_groups(groups)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def config(tiny_model_dirs, tmp_path_factory) -> Path:
    return write_config(tmp_path_factory.mktemp("ray") / "rewardserve.yaml",
                        {name: tiny_model_dirs[name] for name in MODELS})


@pytest.fixture(scope="module")
def ray_url(cluster, config) -> str:
    """Ray's proxy, serving deploy/ray/serve_config.yaml's app over the tiny models with two
    replicas each of half a CPU (a per-model option): four halves fill both nodes' one CPU
    each."""
    bin_dir, address, logs = cluster
    port = free_port()
    serve_config = yaml.safe_load(SERVE_CONFIG.read_text())
    serve_config |= {"proxy_location": "HeadOnly", "http_options": {"host": "127.0.0.1", "port": port}}
    app = serve_config["applications"][0]
    app["args"] |= {"config": str(config), "min_replicas": 2, "max_replicas": 2,
                    "models": {name: {"num_cpus": 0.5} for name in MODELS}}
    path = config.with_name("serve.yaml")
    path.write_text(yaml.safe_dump(serve_config))
    deploy = subprocess.run([str(bin_dir / "serve"), "run", f"--address={address}", "--non-blocking", str(path)],
                            capture_output=True, text=True, check=False, timeout=START_TIMEOUT_S, cwd=ROOT,
                            env=ray_env())
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=30) as client:
        poll(lambda: client.get("/health/ready"), lambda r: r.status_code == 200, timeout=READY_TIMEOUT_S, interval=1)
    yield url
    # Serve's own shutdown, so each replica drains and closes its rewardserve (its lifespan's end)
    in_ray_venv(bin_dir, SHUTDOWN_DRIVER, address)
    replica_logs = {p.name: p.read_text() for p in (logs / "serve").glob("replica_*model-*.log")}
    assert len(replica_logs) == 2 * len(MODELS), sorted(replica_logs)
    assert not [name for name, text in replica_logs.items() if "Traceback" in text], replica_logs


@pytest.fixture(scope="module")
def local_url(config):
    with live_server(create_app(load_settings(config))) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            poll(lambda: client.get("/health/ready"), lambda r: r.status_code == 200)
        yield url


def requests(load_tiny) -> list[tuple[str, str, dict | None]]:
    """(method, path, JSON body) of requests for every kind of route the gateway routes."""
    scalar, process = load_tiny("llama-scalar"), load_tiny("qwen2-prm")
    steps = {"prompt": "What is 3 + 4?", "steps": ["3 + 4 = 7", "The answer is 7."]}
    return [
        ("POST", "/v1/score", {"model": "llama-scalar", "items": sample_items(scalar)}),
        ("POST", "/v1/score", {"items": sample_items(scalar)[:2]}),  # the default model
        ("POST", "/v1/score", {"model": "qwen2-prm", "items": sample_items(process), "aggregate": "min"}),
        ("POST", "/v1/compare", {"prompt": "Hi", "responses": ["Hello!", "Go away.", "Hi, how can I help?"]}),
        ("POST", "/v1/rerank", {"model": "qwen2-prm", "query": "What is 3 + 4?", "documents": [steps, steps]}),
        ("POST", "/v1/steps", {"model": "qwen2-prm", "items": [steps]}),
        ("POST", "/v1/score", {"model": "qwen2-prm", "items": [{"prompt": "x"}]}),  # 422 from the model's server
        ("POST", "/v1/score", {"model": "llama-scalar", "items": "not a list"}),
        ("GET", "/v1/models", None),
        ("GET", "/v1/models/qwen2-prm", None),
        ("GET", "/v2/models/qwen2-prm", None),
        ("GET", "/health/ready", None),
        ("GET", "/v2/health/ready", None),
        ("POST", "/v2/repository/index", None),
    ]


def comparable(response: httpx.Response):
    return response.status_code, same_parts(response.json())


def same_parts(body):
    """A JSON answer with what differs between two servers by design taken out: ids made per
    request, the time each server started, and which items a replica's own result cache
    answered (each replica has its own; `redis_url` shares one)."""
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in ("id", "created")}
        for model in body.get("data", []):
            model.pop("created", None)
        for result in body.get("results", []):
            result.pop("cached", None)
    return body


def test_http_through_rays_proxy_answers_as_the_single_process_server(ray_url, local_url, load_tiny):
    with httpx.Client(base_url=ray_url, timeout=60) as ray, httpx.Client(base_url=local_url, timeout=60) as local:
        for method, path, body in requests(load_tiny):
            got, want = (comparable(c.request(method, path, json=body)) for c in (ray, local))
            assert got == (want[0], within_tol(want[1])), (method, path, body)
        # a gzip body still reaches the model it names; the query names one for OpenRLHF's route
        named = {"model": "qwen2-prm", "items": sample_items(load_tiny("qwen2-prm"))}
        packed = gzip.compress(json.dumps(named).encode())
        headers = {"content-encoding": "gzip", "content-type": "application/json"}
        got, want = (comparable(c.post("/v1/score", content=packed, headers=headers)) for c in (ray, local))
        assert got == (want[0], within_tol(want[1]))
        query = {"query": ["What is 3 + 4? 3 + 4 = 7"]}
        got, want = (comparable(c.post("/get_reward", params={"model": "qwen2-prm"}, json=query)) for c in (ray, local))
        assert got == (want[0], within_tol(want[1]))
        unknown = ray.post("/v1/score", json={"model": "nope", "items": [{"prompt": "a", "response": "b"}]})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
        assert ray.get("/metrics").status_code == 404  # per replica under Ray


def test_deployment_handle_answers_as_http_and_replicas_span_both_nodes(cluster, ray_url, local_url, load_tiny):
    bin_dir, address, _ = cluster
    score = {"model": "llama-scalar", "items": sample_items(load_tiny("llama-scalar"))}
    compare = {"model": "llama-scalar", "prompt": "Hi", "responses": ["Hello!", "Go away."]}
    invalid = {"model": "llama-scalar", "items": []}
    out = json.loads(in_ray_venv(bin_dir, HANDLE_DRIVER, address, *map(json.dumps, (score, compare, invalid))))
    with httpx.Client(base_url=local_url, timeout=60) as local:
        assert same_parts(out["score"]) == within_tol(same_parts(local.post("/v1/score", json=score).json()))
        assert same_parts(out["compare"]) == within_tol(same_parts(local.post("/v1/compare", json=compare).json()))
        error = local.post("/v1/score", json=invalid)
        assert out["error"] == [error.status_code, error.json()]
    placed = {}
    for actor, ip in out["replicas"]:
        placed.setdefault(actor.split(":")[-1], []).append(ip)
    models = {name: ips for name, ips in placed.items() if name.startswith("model-")}
    assert sorted(models) == [f"model-{name}" for name in MODELS]
    assert all(len(ips) == 2 for ips in models.values()), models
    assert {ip for ips in models.values() for ip in ips} == {HEAD_IP, WORKER_IP}, models


def test_the_in_process_call_answers_as_uvicorn(config, local_url):
    """What a ModelServer replica does with each request Ray hands it, here without Ray:
    the app's status, headers and body."""
    app = create_app(load_settings(config))
    body = json.dumps({"model": "qwen2-prm", "items": [{"prompt": "What is 3 + 4?", "steps": ["7"]}]}).encode()

    async def exchange():
        async with app.router.lifespan_context(app):
            await app.state.loading
            return (await call(app, Call("POST", "/v1/score", b"", [(b"content-type", b"application/json")], body)),
                    await call(app, Call("GET", "/nowhere", b"", [], b"")))

    reply, missing = asyncio.run(exchange())
    want = httpx.post(f"{local_url}/v1/score", content=body, headers={"content-type": "application/json"})
    assert reply.status == 200 and json.loads(reply.body) == within_tol(want.json())
    assert dict(reply.headers)[b"content-type"] == b"application/json"
    assert missing.status == 404 and json.loads(missing.body)["error"]["code"] == "not_found"


def test_routes_find_the_model_in_path_body_or_query(config, tiny_model_dirs):
    routes = Routes(load_settings(config).model_copy(update={"default_model": "qwen2-prm"}))

    def model(path: str, body: bytes = b"", query: bytes = b"", headers=()) -> str:
        return routes.model_for(Call("POST", path, query, list(headers), body))

    assert model("/v2/models/llama-scalar/infer", b'{"model": "qwen2-prm"}') == "llama-scalar"
    assert model("/v1/models/llama-scalar") == "llama-scalar"
    assert model("/v1/score", b'{"model": "llama-scalar"}') == "llama-scalar"
    assert model("/v1/score", gzip.compress(b'{"model": "llama-scalar"}'), headers=[(b"content-encoding", b"gzip")]) \
        == "llama-scalar"
    assert model("/get_reward", b'{"query": ["a"]}', b"model=llama-scalar") == "llama-scalar"
    by_path = json.dumps({"model": str(tiny_model_dirs["llama-scalar"])}).encode()
    assert model("/v1/score", by_path) == "llama-scalar"  # a model's configured path names it too
    assert model("/v1/score", b'{"items": []}') == "qwen2-prm"  # the default
    assert model("/v1/score", b"not json") == "qwen2-prm"
    assert model("/v1/score", b"\x1f\x8b not gzip", headers=[(b"content-encoding", b"gzip")]) == "qwen2-prm"
    assert model("/v1/score", b'{"model": "nope"}') == "qwen2-prm"  # whose server answers 404
    assert model("/v1/score", b'["model"]') == "qwen2-prm"
