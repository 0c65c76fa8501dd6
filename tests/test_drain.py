"""SIGTERM with HTTP and gRPC calls in flight, against `rewardserve serve` in a subprocess:
every in-flight call is answered, new gRPC calls are refused at once with UNAVAILABLE
(retryable) and new HTTP connections are refused, gRPC health says NOT_SERVING, and the
process exits within its drain grace."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from http_helpers import free_port, write_config

from service.grpc.proto import rewardserve_pb2 as pb
from service.grpc.proto import rewardserve_pb2_grpc as pb_grpc

SCALAR = "llama-scalar"
TEXT = " ".join(["The quick brown fox jumps over the lazy dog."] * 20)
ITEMS = 3072  # several seconds of forwards for the tiny model on two cores, so calls are in flight
GRACE_S = 30.0


def test_sigterm_finishes_in_flight_calls_and_refuses_new_ones(tiny_model_dirs, tmp_path):
    port, grpc_port = free_port(), free_port()
    config = write_config(tmp_path / "config.yaml", {SCALAR: tiny_model_dirs[SCALAR]}, port=port,
                          grpc_port=grpc_port, drain_grace_s=GRACE_S, cache_max_bytes=0, log_level="warning",
                          max_queue_wait_s=None)  # admitted however slow the machine: drain is tested, not the bound
    process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--config", str(config)],
                               env={k: v for k, v in os.environ.items() if not k.startswith("REWARDSERVE_")},
                               stderr=subprocess.DEVNULL)
    url, target = f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "the server did not become ready"
            try:
                if httpx.get(f"{url}/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)

        items = [{"prompt": "Summarize.", "response": TEXT}] * ITEMS
        answers: dict[str, object] = {}

        def over_http():
            answers["http"] = httpx.post(f"{url}/v1/score", json={"model": SCALAR, "items": items, "truncate": "left"},
                                         timeout=60)

        def over_grpc():
            with grpc.insecure_channel(target) as channel:
                request = pb.ScoreRequest(model=SCALAR, items=[pb.Item(text=pb.TextItem(**i)) for i in items],
                                          truncate="left")
                answers["grpc"] = pb_grpc.RewardServiceStub(channel).Score(request, timeout=60)

        with grpc.insecure_channel(target) as probe:  # connected before the signal
            health = health_pb2_grpc.HealthStub(probe)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
                health_pb2.HealthCheckResponse.SERVING
            calls = [threading.Thread(target=over_http), threading.Thread(target=over_grpc)]
            for call in calls:
                call.start()
            time.sleep(0.5)  # both calls reach the server and queue their items
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(grpc.RpcError) as refused:
                pb_grpc.RewardServiceStub(probe).ListModels(pb.ListModelsRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(httpx.TransportError):
                httpx.get(f"{url}/health/live", timeout=5)
            for call in calls:
                call.join(timeout=90)

        assert answers["http"].status_code == 200 and len(answers["http"].json()["results"]) == ITEMS
        assert len(answers["grpc"].results) == ITEMS
        # uvicorn re-raises the signal once it has shut down, so the exit is "terminated by SIGTERM"
        assert process.wait(timeout=GRACE_S + 15) in (0, -signal.SIGTERM)
        assert time.monotonic() - signalled < GRACE_S + 10
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
