"""SIGTERM with HTTP and gRPC calls in flight, against `rewardserve serve` in a subprocess:
every in-flight call is answered, new gRPC calls are refused at once with UNAVAILABLE
(retryable) and new HTTP connections are refused, gRPC health says NOT_SERVING, and the
process exits within its drain grace; calls still running when the grace ends are answered
503 `shutting_down` over HTTP and UNAVAILABLE over gRPC, with no traceback logged."""

from __future__ import annotations

import logging
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
from http_helpers import assert_error, free_port, running, wait_until_loaded, write_config
from sched_helpers import GatedForward, intercept_forward

from service.app import DrainingServer, create_app
from service.config import ModelConfig, Settings
from service.grpc.proto import rewardserve_pb2 as pb
from service.grpc.proto import rewardserve_pb2_grpc as pb_grpc

SCALAR = "llama-scalar"
TEXT = " ".join(["The quick brown fox jumps over the lazy dog."] * 20)
ITEMS = 3072  # several seconds of forwards for the tiny model on two cores, so calls are in flight
GRACE_S = 30.0


def test_sigterm_finishes_in_flight_calls_and_refuses_new_ones(tiny_model_dirs, tmp_path):
    port, grpc_port = free_port(), free_port()
    # no queue time bound: admitted however slow the machine (drain is tested, not the bound)
    config = write_config(tmp_path / "config.yaml", {SCALAR: tiny_model_dirs[SCALAR]},
                          server={"port": port, "grpc_port": grpc_port, "drain_grace_s": GRACE_S,
                                  "log_level": "warning"},
                          cache={"max_bytes": 0}, queue={"max_wait_s": None})
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


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_calls_still_running_when_the_grace_ends_are_answered_shutting_down(tiny_model_dirs, monkeypatch):
    """A forward held past the grace (the gate), the server stopped as SIGTERM stops it."""
    settings = Settings(models=[ModelConfig(name=SCALAR, path=str(tiny_model_dirs[SCALAR]))],
                        server={"port": 0, "grpc_port": free_port(), "drain_grace_s": 1, "log_level": "warning"},
                        cache={"max_bytes": 0})
    app = create_app(settings)
    server = DrainingServer(app, settings)
    records = Records()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn")]  # uvicorn's does not propagate
    for logger in loggers:
        logger.addHandler(records)
    answers: dict[str, object] = {}
    try:
        with running(server) as port:
            url = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=url) as client:
                assert wait_until_loaded(client).status_code == 200
            runner = app.state.registry.runners[SCALAR]
            gate = intercept_forward(monkeypatch, runner.model, GatedForward)
            item = {"prompt": "Summarize.", "response": "A short text."}

            def over_http():
                body = {"model": SCALAR, "items": [{**item, "response": "Another text."}]}
                answers["http"] = httpx.post(f"{url}/v1/score", json=body, timeout=30)

            def over_grpc():
                with grpc.insecure_channel(f"127.0.0.1:{app.state.grpc_port}") as channel:
                    request = pb.ScoreRequest(model=SCALAR, items=[pb.Item(text=pb.TextItem(**item))])
                    try:
                        answers["grpc"] = pb_grpc.RewardServiceStub(channel).Score(request, timeout=30)
                    except grpc.RpcError as err:
                        answers["grpc"] = err

            calls = [threading.Thread(target=over_http), threading.Thread(target=over_grpc)]
            for call in calls:
                call.start()
            deadline = time.monotonic() + 30
            while sum(map(len, gate.entered)) + runner.scheduler.queued_items < 2:  # both in the server
                assert time.monotonic() < deadline, "the calls never reached the model"
                time.sleep(0.01)
            server.should_exit = True  # what SIGTERM sets
            for call in calls:
                call.join(timeout=30)
            gate.open()
    finally:
        for logger in loggers:
            logger.removeHandler(records)

    error = assert_error(answers["http"], 503, "shutting_down")
    assert "drain_grace_s" in error["message"]
    assert answers["grpc"].code() == grpc.StatusCode.UNAVAILABLE
    assert "drain_grace_s" in answers["grpc"].details()
    assert ("rewardserve-error-code", "shutting_down") in answers["grpc"].trailing_metadata()
    assert not [r for r in records.records if r.exc_info], [r.getMessage() for r in records.records]
    assert not [r for r in records.records if "CancelledError" in r.getMessage()]
