"""Processes for the multi-replica tests: rewardserve replicas (`rewardserve serve` as
subprocesses, loadtests.servers), nginx running deploy/nginx/ with free loopback ports, and
a Prometheus scraping several targets. Each starts in bounded time and stops in bounded
time, whatever state it is in; paths are under a temporary directory."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Self

import httpx
import yaml

from loadtests.servers import ROOT, Server, free_port, ours, stop_group

DEPLOY = ROOT / "deploy"
NGINX_DIR = DEPLOY / "nginx"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
NGINX_TEMPLATE = NGINX_DIR / "rewardserve.conf.template"
PLACEHOLDER = re.compile(r"\$\{(RS_[A-Z0-9_]+)\}")
WAIT_S = 60.0

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).is_file()), None)
PROMETHEUS = shutil.which("prometheus")


def replica_env() -> dict[str, str]:
    """The environment of a replica: the test's, less every REWARDSERVE_* variable (they
    would override its YAML config: conftest sets REWARDSERVE_SERVER__GRPC_PORT=0), offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDSERVE_")}
    return env | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def bounded_wait(condition, what: str, timeout: float = WAIT_S, interval: float = 0.1):
    """`condition()`'s first truthy value, polling at most `timeout` seconds; connection
    errors count as not yet."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        try:
            if result := condition():
                return result
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(interval)
    raise AssertionError(f"gave up after {timeout:.0f}s waiting for {what}")


class Replica(Server):
    """One `rewardserve serve` process with a YAML config (loadtests.servers.ours: one
    model, gRPC on `grpc_port` when given, cache per `cache`), started with replica_env().
    `start()` and `wait_ready()` are separate so several replicas start side by side."""

    def __init__(self, name: str, model: str, model_dir: Path, workdir: Path, grpc_port: int = 0, **options):
        extra = {"server": {"grpc_port": grpc_port, "log_level": "warning"}, **options.pop("extra", {})}
        super().__init__(ours(model, str(model_dir), workdir, system=name, extra=extra, **options),
                         workdir / f"{name}.log")
        self.name, self.grpc_port = name, grpc_port
        self.address = f"127.0.0.1:{self.spec.port}"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.spec.argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True, env=replica_env())

    def wait_ready(self) -> None:
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def kill(self) -> None:
        """SIGKILL, no drain: what a crashed or OOM-killed replica looks like to nginx."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def client(self, **options) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=WAIT_S, **options)


def start_replicas(replicas: list[Replica]) -> None:
    """Start them all, then wait for each to be ready (stopping every one on failure)."""
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready()
    except BaseException:
        for replica in replicas:
            replica.stop()
        raise


def render(template: str, values: dict[str, str]) -> str:
    """The template with each ${RS_*} placeholder filled in (as envsubst does with the
    names given); nginx's own $variables are left alone. Every placeholder needs a value."""
    missing = sorted(set(PLACEHOLDER.findall(template)) - set(values))
    assert not missing, f"no value for {missing}"
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


class Nginx:
    """nginx from deploy/nginx (nginx.conf including the rendered rewardserve.conf) in
    `workdir`, in the foreground, balancing over `replicas` (two) on free loopback ports."""

    def __init__(self, replicas: list[Replica], workdir: Path):
        assert len(replicas) == 2, "the template has two replicas"
        self.dir = workdir
        self.http_port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.grpc_url = f"grpc://127.0.0.1:{self.grpc_port}"
        self.values = {"RS_LISTEN_HTTP": f"127.0.0.1:{self.http_port}", "RS_LISTEN_GRPC": f"127.0.0.1:{self.grpc_port}",
                       "RS_ACCESS_LOG": "access.log"}
        for number, replica in enumerate(replicas, 1):
            self.values[f"RS_REPLICA_{number}_HTTP"] = replica.address
            # a replica without gRPC still needs a syntactically valid address here
            self.values[f"RS_REPLICA_{number}_GRPC"] = f"127.0.0.1:{replica.grpc_port or free_port()}"
        self.process: subprocess.Popen | None = None

    def argv(self, *extra: str) -> list[str]:
        directives = "daemon off;"
        if os.geteuid() == 0:  # workers would run as nobody, who cannot write the temp dirs here
            directives += f" user {pwd.getpwuid(os.geteuid()).pw_name};"
        return [NGINX, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-e", str(self.dir / "error.log"),
                "-g", directives, *extra]

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(NGINX_DIR / "nginx.conf", self.dir / "nginx.conf")
        (self.dir / "rewardserve.conf").write_text(render(NGINX_TEMPLATE.read_text(), self.values))

    def __enter__(self) -> Self:
        self.write_config()
        checked = subprocess.run(self.argv("-t"), capture_output=True, text=True, check=False, timeout=30)
        assert checked.returncode == 0, checked.stderr
        log = (self.dir / "nginx.out").open("ab")
        self.process = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        try:
            # up once it answers: a 503 (no replica) or anything else from nginx itself
            def answers() -> bool:
                return self.process.poll() is None and httpx.get(self.url + "/health/live", timeout=2).status_code > 0

            bounded_wait(answers, f"nginx to listen (see {self.dir / 'error.log'})")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGQUIT (graceful), then SIGKILL to the process group (master and workers)."""
        if self.process is not None:
            stop_group(self.process, signal.SIGQUIT, 10)
            self.process = None

    def access_log(self) -> list[dict]:
        """The requests logged so far (deploy/nginx's JSON log format), oldest first."""
        path = self.dir / "access.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


class Prometheus:
    """A Prometheus scraping `targets` (host:port, with `labels` on their series) every
    second as job "rewardserve" (with the scrape options in `scrape`, `authorization` say),
    evaluating `rule_files` every second; `api` is an HTTP client for its API."""

    def __init__(self, targets: list[str], rule_files: list[Path], workdir: Path, labels: dict[str, str] | None = None,
                 scrape: dict | None = None):
        self.dir = workdir
        self.port = free_port()
        self.config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{"job_name": "rewardserve", **(scrape or {}),
                                "static_configs": [{"targets": targets, "labels": labels or {}}]}],
        }
        self.process: subprocess.Popen | None = None
        self.api: httpx.Client | None = None

    def __enter__(self) -> Self:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(self.config))
        log = (self.dir / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)
        try:
            bounded_wait(lambda: self.process.poll() is None and self.api.get("/-/ready").status_code == 200,
                         f"Prometheus ready (log: {self.dir / 'prometheus.log'})")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.api is not None:
            self.api.close()
            self.api = None
        if self.process is not None:
            stop_group(self.process, signal.SIGTERM, 15)
            self.process = None


def query(api: httpx.Client, promql: str) -> list[dict]:
    """The result vector of an instant PromQL query through Prometheus's HTTP API."""
    response = api.get("/api/v1/query", params={"query": promql})
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (promql, body)
    return body["data"]["result"]


def scalar(api: httpx.Client, promql: str) -> float | None:
    result = query(api, promql)
    return float(result[0]["value"][1]) if result else None
