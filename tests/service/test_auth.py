"""API keys on every protocol: HTTP (ours, compatibility, KServe v2), gRPC (rewardserve.v1
and KServe v2) and the Python client over both; probes and the scrape stay open; the admin
routes need an admin key; keys also come from a file."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from grpc_health.v1 import health_pb2, health_pb2_grpc
from http_helpers import assert_error, serve
from tritonclient.utils import InferenceServerException

from service.client import RewardClient, RewardServeError
from service.config import ModelConfig, Settings
from service.config.sections import AuthSettings
from service.core.auth import KeyRing, read_keys_file
from service.grpc.proto import rewardserve_pb2 as pb
from service.grpc.proto import rewardserve_pb2_grpc as pb_grpc

SCALAR = "llama-scalar"
API_KEY, ADMIN_KEY, FILE_KEY = "k-scoring-1", "k-admin-1", "k-from-file"
PAIR = {"prompt": "What is 2 + 2?", "response": "It is 4."}


@pytest.fixture(scope="module")
def server(served, tmp_path_factory):
    keys_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys_file.write_text(f"# one key per line\n{FILE_KEY}\n")
    # served() waits on /health/ready, which is open without a key
    with served([SCALAR], server={"cors_origins": ["https://dashboard.example"]},
                auth={"api_keys": [API_KEY], "admin_api_keys": [ADMIN_KEY], "api_keys_file": keys_file}) as server:
        yield server.url, server.http, server.app.state.grpc_port


def bearer(key: str) -> dict:
    return {"authorization": f"Bearer {key}"}


def test_http_routes_need_a_key(server):
    _, http, _ = server
    body = {"model": SCALAR, "items": [PAIR]}
    for path, payload in (("/v1/score", body), ("/get_reward", {"model": SCALAR, "query": ["x"]}),
                          ("/classify", {"model": SCALAR, "input": "x"})):
        missing = http.post(path, json=payload)
        assert_error(missing, 401, "unauthorized")
        assert missing.headers["www-authenticate"] == "Bearer"
        assert_error(http.post(path, json=payload, headers=bearer("wrong")), 401, "unauthorized")
        assert http.post(path, json=payload, headers=bearer(API_KEY)).status_code == 200
    assert http.post("/v1/score", json=body, headers={"x-api-key": API_KEY}).status_code == 200
    assert http.post("/v1/score", json=body, headers=bearer(FILE_KEY)).status_code == 200
    assert_error(http.get("/v1/models"), 401, "unauthorized")
    assert http.get(f"/v2/models/{SCALAR}").status_code == 401


def test_probes_and_the_scrape_stay_open(server):
    _, http, _ = server
    for path in ("/health/live", "/health/ready", "/v2/health/ready", "/metrics"):
        assert http.get(path).status_code == 200, path


def test_probes_answer_head_without_a_body(server):
    url, http, _ = server
    for path in ("/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", f"/v2/models/{SCALAR}/ready"):
        got = http.get(path, headers=bearer(API_KEY))
        head = http.head(path, headers=bearer(API_KEY))
        assert (head.status_code, head.content) == (got.status_code, b""), path
        assert head.headers["content-type"] == got.headers["content-type"], path
    assert http.head("/health/ready").status_code == 200  # open, as GET is


@pytest.mark.parametrize("header", ["Authorization", "x-api-key"])
def test_a_key_header_sent_twice_is_400_naming_it(header, server):
    _, http, _ = server
    value = f"Bearer {API_KEY}" if header == "Authorization" else API_KEY
    body = {"model": SCALAR, "items": [PAIR]}
    for second in (value, "Bearer wrong" if header == "Authorization" else "wrong"):
        twice = http.post("/v1/score", json=body, headers=[(header, value), (header.upper(), second)])
        assert_error(twice, 400, "invalid_request", header.lower())
        assert f"{header.lower()} is sent more than once" in twice.json()["error"]["message"]
    both = http.post("/v1/score", json=body, headers={"authorization": f"Bearer {API_KEY}", "x-api-key": API_KEY})
    assert both.status_code == 200  # one of each is not a repeat


def test_metrics_can_need_a_key(tiny_model_dirs):
    settings = Settings(models=[ModelConfig(name=SCALAR, path=str(tiny_model_dirs[SCALAR]))], server={"grpc_port": 0},
                        auth={"api_keys": [API_KEY], "metrics_require_key": True})
    with serve(settings) as server:
        http = server.http
        assert_error(http.get("/metrics"), 401, "unauthorized")
        assert_error(http.get("/metrics", headers=bearer("wrong")), 401, "unauthorized")
        for headers in (bearer(API_KEY), {"x-api-key": API_KEY}):
            scraped = http.get("/metrics", headers=headers)
            assert scraped.status_code == 200 and "rewardserve_" in scraped.text
        assert http.get("/health/live").status_code == 200  # the probes stay open
    assert "/metrics" in KeyRing(settings.auth.model_copy(update={"metrics_require_key": False})).open_paths


def test_admin_routes_need_an_admin_key(server):
    _, http, _ = server
    assert_error(http.get("/v1/admin/canary", headers=bearer(API_KEY)), 403, "forbidden")
    assert http.get("/v1/admin/canary", headers=bearer(ADMIN_KEY)).status_code == 200
    assert http.post("/v1/score", json={"model": SCALAR, "items": [PAIR]}, headers=bearer(ADMIN_KEY)).status_code == 200


def test_grpc_methods_need_a_key_and_health_stays_open(server):
    _, _, port = server
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.RewardServiceStub(channel)
        request = pb.ScoreRequest(model=SCALAR, items=[pb.Item(text=pb.TextItem(**PAIR))])
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            with pytest.raises(grpc.RpcError) as raised:
                stub.Score(request, metadata=metadata, timeout=30)
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert dict(raised.value.trailing_metadata())["rewardserve-error-code"] == "unauthorized"
        with pytest.raises(grpc.RpcError) as raised:
            list(stub.ScoreStream(iter([request]), timeout=30))
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.Score(request, metadata=(("authorization", f"Bearer {API_KEY}"),), timeout=30).results
        assert stub.Score(request, metadata=(("x-api-key", FILE_KEY),), timeout=30).results
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_kserve_clients_send_the_key_as_a_header(server):
    url, _, port = server
    tensors = {"prompt": np.array([PAIR["prompt"].encode()], dtype=np.object_),
               "response": np.array([PAIR["response"].encode()], dtype=np.object_)}
    for module, target in ((triton_http, url.removeprefix("http://")), (triton_grpc, f"127.0.0.1:{port}")):
        client = module.InferenceServerClient(target)
        try:
            inputs = []
            for name, array in tensors.items():
                tensor = module.InferInput(name, list(array.shape), "BYTES")
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            with pytest.raises(InferenceServerException):
                client.infer(SCALAR, inputs)
            result = client.infer(SCALAR, inputs, headers=bearer(API_KEY))
            assert result.as_numpy("score").shape == (1,)
            assert client.is_server_live()  # liveness is open on both
        finally:
            client.close()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_the_python_client_sends_its_key(transport, server):
    url, _, port = server
    target = url if transport == "http" else f"grpc://127.0.0.1:{port}"
    with RewardClient(target, model=SCALAR, api_key=API_KEY) as client:
        assert client.score([(PAIR["prompt"], PAIR["response"])]).results[0].num_tokens > 0
    with RewardClient(target, model=SCALAR, retries=0) as client, pytest.raises(RewardServeError) as raised:
        client.score([(PAIR["prompt"], PAIR["response"])])
    assert (raised.value.status, raised.value.code) == (401, "unauthorized")


def test_keys_file_lines_and_scopes(tmp_path):
    path = tmp_path / "keys"
    path.write_text("a\n\nb admin  # ops\n")
    assert read_keys_file(path) == [("a", "api"), ("b", "admin")]
    path.write_text("a root\n")
    with pytest.raises(ValueError, match="keys:1"):
        read_keys_file(path)
    ring = KeyRing(AuthSettings(api_keys=["x"], admin_api_keys=["x"]))
    assert ring.scope("x") == "admin" and ring.scope("y") is None and ring.scope(None) is None
    assert not KeyRing(AuthSettings()).enabled


def test_cors_answers_configured_origins_only(server):
    _, http, _ = server
    preflight = {"access-control-request-method": "POST", "access-control-request-headers": "authorization"}
    allowed = http.options("/v1/score", headers={"origin": "https://dashboard.example", **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://dashboard.example"
    other = http.options("/v1/score", headers={"origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers
