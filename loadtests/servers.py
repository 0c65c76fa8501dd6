"""The systems under test as subprocesses on loopback ports: this service
(`rewardserve serve`), the naive server and the Ray Serve server. Each runs in its own
process group, so stopping one also ends whatever it spawned (Ray's daemons); start-up and
shutdown are bounded in time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
RAY_PYTHON = ROOT / "loadtests" / ".venv-ray" / "bin" / "python"
STATS_TIMEOUT_S = 300.0
PADDING_SAMPLES = ("rewardserve_batch_real_tokens_total", "rewardserve_batch_padded_tokens_sum")  # real, padded


def free_port() -> int:
    """A loopback port that was free a moment ago (for servers we cannot hand a socket)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class ServerSpec:
    """How to start one system: its command, where it says it is ready, and where it counts
    its own padding: `/stats` (the baselines) or Prometheus `/metrics` (rewardserve)."""

    system: str
    argv: list[str]
    port: int
    ready_path: str
    padding_from: str | None  # "stats", "metrics" or None


def ours_settings(model_name: str, model_path: str, onnx_file: Path | None = None, cache: str = "off",
                  redis_url: str | None = None, extra: dict | None = None) -> dict:
    """rewardserve's settings for a benchmark: only the benchmarked model, its defaults
    otherwise, gRPC off (HTTP is measured) and, unless `cache` says otherwise, the result
    cache off (the workloads repeat requests across runs, and the batching engine is what
    is measured). `cache`: "off", "lru" (the in-process tier) or "redis" (Redis alone, as a
    replica that did not see the first request finds it); `onnx_file` selects onnxruntime;
    `extra`: other sections of the settings ({"queue": {...}}, ...)."""
    model = {"name": model_name, "path": model_path, "cache": cache != "off"}
    if onnx_file:
        model["backend"] = {"type": "onnxruntime", "file": str(onnx_file)}
    lru = {} if cache == "lru" else {"max_bytes": 0}
    redis = {"redis_url": redis_url} if cache == "redis" else {}
    return {"models": [model], "server": {"grpc_port": 0}, "cache": lru | redis, **(extra or {})}


def ours(model_name: str, model_path: str, workdir: Path, system: str = "rewardserve", **options) -> ServerSpec:
    """`rewardserve serve` with a config from `ours_settings(**options)`."""
    return ours_with(ours_settings(model_name, model_path, **options), workdir, system)


def ours_with(settings: dict, workdir: Path, system: str = "rewardserve") -> ServerSpec:
    """`rewardserve serve` with these settings (written to `<workdir>/<system>.yaml`)."""
    port = free_port()
    config = workdir / f"{system}.yaml"
    config.write_text(yaml.safe_dump(settings))
    rewardserve = Path(sys.executable).with_name("rewardserve")
    return ServerSpec(system, [str(rewardserve), "serve", "--config", str(config), "--port", str(port)],
                      port, "/health/ready", padding_from="metrics")


def naive(model_name: str, model_dir: Path | None) -> ServerSpec:
    port = free_port()
    argv = [sys.executable, "-m", "loadtests.naive_server", "--port", str(port), "--name", model_name]
    if model_dir:
        argv += ["--model-dir", str(model_dir)]
    return ServerSpec("naive", argv, port, "/health", padding_from="stats")


def ray(model_name: str, model_dir: Path | None, python: Path = RAY_PYTHON) -> ServerSpec:
    port = free_port()
    argv = [str(python), "-m", "loadtests.ray_server", "--port", str(port), "--name", model_name]
    if model_dir:
        argv += ["--model-dir", str(model_dir)]
    return ServerSpec("ray-serve", argv, port, "/health", padding_from="stats")


class Server:
    """A running system; use as a context manager. `log` collects its output."""

    def __init__(self, spec: ServerSpec, log: Path, startup_timeout_s: float = 180.0):
        self.spec = spec
        self.url = f"http://127.0.0.1:{spec.port}"
        self.log = log
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen | None = None
        self._tokens_at_reset = (0.0, 0.0)

    @classmethod
    def fresh_log(cls, spec: ServerSpec, log_dir: Path) -> Server:
        """A Server logging to `<log_dir>/<system>.log`, emptied first; says where."""
        log = log_dir / f"{spec.system}.log"
        log.unlink(missing_ok=True)
        print(f"starting {spec.system} (log: {log})", flush=True)
        return cls(spec, log)

    def __enter__(self) -> Self:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.spec.argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.spec.system} exited with {self.process.returncode}; see {self.log}")
            try:
                if httpx.get(self.url + self.spec.ready_path, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.spec.system} not ready after {self.startup_timeout_s}s; see {self.log}")

    def health(self) -> dict:
        return httpx.get(self.url + self.spec.ready_path, timeout=5.0).json()

    def reset_stats(self) -> None:
        if self.spec.padding_from == "stats":
            httpx.post(self.url + "/stats/reset", timeout=STATS_TIMEOUT_S).raise_for_status()
        elif self.spec.padding_from == "metrics":
            self._tokens_at_reset = self._forwarded_tokens()

    def padding_ratio(self) -> float | None:
        """Padded-token share of the forwards since the last reset, where the system counts it.
        A server that handles requests one at a time answers only once its backlog (work the
        client gave up on) is done, which also keeps that work out of the next run."""
        if self.spec.padding_from == "stats":
            stats = httpx.get(self.url + "/stats", timeout=STATS_TIMEOUT_S).json()
            real, padded = stats["real_tokens"], stats["padded_tokens"]
        elif self.spec.padding_from == "metrics":
            now = self._forwarded_tokens()
            real, padded = now[0] - self._tokens_at_reset[0], now[1] - self._tokens_at_reset[1]
        else:
            return None
        return 1 - real / padded if padded else None

    def _forwarded_tokens(self) -> tuple[float, float]:
        """(real, padded) tokens rewardserve has forwarded so far, from its /metrics."""
        text = httpx.get(self.url + "/metrics", timeout=STATS_TIMEOUT_S).text
        totals = {name: 0.0 for name in PADDING_SAMPLES}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in totals:
                    totals[sample.name] += sample.value
        return totals[PADDING_SAMPLES[0]], totals[PADDING_SAMPLES[1]]

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM to the server, then SIGKILL to its whole process group."""
        if self.process is not None:
            stop_group(self.process, signal.SIGTERM, grace_s)
            self.process = None


def stop_group(process: subprocess.Popen, signum: int, grace_s: float) -> None:
    """`signum` to a process started in a session of its own, up to `grace_s` to exit, then
    SIGKILL to its whole process group (whatever it left running), in bounded time."""
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)
