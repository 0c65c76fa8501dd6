"""The one KServe v2 data plane, driven over both of its transports by the unmodified Triton
clients: every call (server live, ready and metadata, model ready, metadata and config,
the repository index, inference) asked the same of tritonclient.http and tritonclient.grpc
must get the same answer, or the same error message with the statuses the data plane's
table pairs (HTTP 404 with NOT_FOUND, ...). The models asked about cover every case: a
reward model by its name and by an alias, a process model, a served graph, a model that
failed to load, a name nobody serves, and versions "", "1" and one that does not exist.

A request to the served graph runs on its model's forward thread (never beside the
model's own forwards) and is admitted to the model's queue: while one holds the forward,
the queue's bound refuses more graph work and scoring work alike."""

from __future__ import annotations

import json
import threading

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from google.protobuf import json_format
from protocol_helpers import infer, texts
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from models.backends.torch import TorchBackend
from service.config import ModelConfig
from service.kserve import inference
from service.kserve.dataplane import STATUSES

WAIT_S = 30
TOL = 1e-5
ALIAS = "scalar-alias"
READY = ["llama-scalar", ALIAS, "qwen2-prm", "llama-gating", "llama-gating-graph"]
NAMES = [*READY, "ghost", "no-such-model"]
VERSIONS = ["", "1", "7"]
GRAPH_INPUTS = {"input_ids": np.array([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]], dtype=np.int64),
                "attention_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=np.int64),
                "prompt_end": np.array([2, 1], dtype=np.int64)}
LEFT_PADDED = GRAPH_INPUTS["attention_mask"][:, ::-1].copy()
PAIR = {"prompt": texts(["Is the sky blue?", "Hi"]), "response": texts(["Yes, on a clear day.", "Hello!"])}


@pytest.fixture(scope="module")
def server(served, tiny_model_dirs, tmp_path_factory):
    models = [ModelConfig(name="llama-scalar", path=str(tiny_model_dirs["llama-scalar"]), aliases=[ALIAS]),
              "qwen2-prm",
              ModelConfig(name="llama-gating", path=str(tiny_model_dirs["llama-gating"]), serve_graph=True),
              ModelConfig(name="ghost", path=str(tmp_path_factory.mktemp("ghost") / "does-not-exist"))]
    with served(models, cache={"max_bytes": 0}, batching={"max_batch_size": 4}, ready=False, timeout=WAIT_S) as server:
        assert server.http.get("/health/ready").json()["models"]["ghost"] == "failed"
        yield server


@pytest.fixture(scope="module")
def app(server):
    return server.app


@pytest.fixture(scope="module")
def base_url(server):
    return server.url


@pytest.fixture(scope="module")
def clients(server):
    http_client = triton_http.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=WAIT_S)
    grpc_client = triton_grpc.InferenceServerClient(server.grpc_target)
    yield {triton_http: http_client, triton_grpc: grpc_client}
    http_client.close()
    grpc_client.close()


def on_both(clients, call) -> tuple:
    """`call(module, client)` over HTTP and over gRPC: (HTTP answer, gRPC answer, error).
    Either both answer, or both fail with the same message, their statuses a row of the
    data plane's table; the error is then (message, HTTP status)."""
    outcomes = []
    for module in (triton_http, triton_grpc):
        try:
            outcomes.append((call(module, clients[module]), None))
        except InferenceServerException as err:
            outcomes.append((None, (err.message(), err.status())))
    (http_answer, http_error), (grpc_answer, grpc_error) = outcomes
    assert (http_error is None) == (grpc_error is None), (http_error, grpc_error)
    if http_error is None:
        return http_answer, grpc_answer, None
    assert http_error[0] == grpc_error[0]
    statuses = (int(http_error[1]), grpc_error[1].removeprefix("StatusCode."))
    assert statuses in STATUSES.values(), (http_error, grpc_error)
    return None, None, (http_error[0], int(http_error[1]))


def expected_error(name: str, version: str) -> int | None:
    """The HTTP status the data plane answers a description of `name` at `version` with."""
    if name == "no-such-model" or version == "7":
        return 404
    return 503 if name == "ghost" else None


# ---- the server ---------------------------------------------------------------------------


def test_server_live_ready_and_metadata_agree(clients):
    live, over_grpc, _ = on_both(clients, lambda m, c: c.is_server_live())
    assert live is over_grpc is True
    ready, over_grpc, _ = on_both(clients, lambda m, c: c.is_server_ready())
    assert ready is over_grpc is False  # the ghost failed to load
    metadata, over_grpc, _ = on_both(clients, lambda m, c: c.get_server_metadata())
    assert metadata["name"] == "rewardserve" and "binary_tensor_data" in metadata["extensions"]
    assert json_format.ParseDict(metadata, service_pb2.ServerMetadataResponse()) == over_grpc


def test_repository_index_agrees_and_both_filter_ready(clients, base_url, app):
    index, over_grpc, _ = on_both(clients, lambda m, c: c.get_model_repository_index())
    assert json_format.ParseDict({"models": index}, service_pb2.RepositoryIndexResponse()) == over_grpc
    states = {entry["name"]: entry["state"] for entry in index}
    assert states == {"llama-scalar": "READY", "qwen2-prm": "READY", "llama-gating": "READY", "ghost": "UNAVAILABLE",
                      "llama-gating-graph": "READY"}
    assert "does-not-exist" in next(e for e in index if e["name"] == "ghost")["reason"]

    with httpx.Client(base_url=base_url, timeout=WAIT_S) as http:
        ready_only = http.post("/v2/repository/index", json={"ready": True}).json()
        refused = http.post("/v2/repository/index", json={"ready": "yes"})
    assert refused.status_code == 400 and refused.json()["error"].startswith("ready:")
    with grpc.insecure_channel(f"127.0.0.1:{app.state.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        ready_over_grpc = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True), timeout=WAIT_S)
    assert json_format.ParseDict({"models": ready_only}, service_pb2.RepositoryIndexResponse()) == ready_over_grpc
    assert [entry["name"] for entry in ready_only] == [name for name in states if name != "ghost"]


# ---- one model ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", NAMES)
def test_model_ready_agrees(name, version, clients):
    ready, over_grpc, _ = on_both(clients, lambda m, c: c.is_model_ready(name, version))
    assert ready is over_grpc is (name in READY and version != "7")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", NAMES)
def test_model_metadata_agrees(name, version, clients):
    metadata, over_grpc, error = on_both(clients, lambda m, c: c.get_model_metadata(name, version))
    if expected_error(name, version):
        named = name if name == "no-such-model" or version != "7" else "7"
        assert error[1] == expected_error(name, version) and repr(named) in error[0], error
        return
    canonical = "llama-scalar" if name == ALIAS else name
    assert metadata["name"] == canonical and metadata["versions"] == ["1"]
    # gRPC's ModelMetadataResponse has no parameters: only HTTP's metadata carries them
    assert ("parameters" in metadata) is (not name.endswith("-graph"))
    fields = {key: value for key, value in metadata.items() if key != "parameters"}
    assert json_format.ParseDict(fields, service_pb2.ModelMetadataResponse()) == over_grpc


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", NAMES)
def test_model_config_agrees(name, version, clients):
    config, over_grpc, error = on_both(clients, lambda m, c: c.get_model_config(name, version))
    if expected_error(name, version):
        assert error[1] == expected_error(name, version)
        return
    assert json_format.ParseDict(config, model_config_pb2.ModelConfig()) == over_grpc.config
    assert config["platform"] == ("onnxruntime_onnx" if name.endswith("-graph") else "rewardserve")


# ---- inference --------------------------------------------------------------------------------


def infer_on_both(clients, model: str, tensors: dict, **options) -> tuple:
    """One inference over HTTP (binary tensor data) and over gRPC, through on_both."""
    def call(module, client):
        return infer(clients, "grpc" if module is triton_grpc else "http-binary", model, tensors, **options)

    return on_both(clients, call)


def assert_same_result(over_http, over_grpc) -> dict:
    """Both InferResults hold the same tensors, model, version and parameters; the HTTP one's
    response."""
    response, grpc_response = over_http.get_response(), over_grpc.get_response(as_json=True)
    names = [output["name"] for output in response["outputs"]]
    assert names == [output["name"] for output in grpc_response["outputs"]]
    for name in names:
        got, want = over_http.as_numpy(name), over_grpc.as_numpy(name)
        assert (got.dtype, got.shape) == (want.dtype, want.shape), name
        if got.dtype.kind == "f":  # two forwards of the same batch agree to float32 rounding; NaN padding alike
            np.testing.assert_allclose(got, want, atol=TOL, rtol=0, equal_nan=True)
        else:
            np.testing.assert_array_equal(got, want)
    assert (response["model_name"], response["model_version"]) == (grpc_response["model_name"],
                                                                   grpc_response["model_version"])
    grpc_parameters = {key: value["string_param"] for key, value in grpc_response.get("parameters", {}).items()}
    assert response.get("parameters", {}) == grpc_parameters
    return response


@pytest.mark.parametrize(("model", "tensors", "answered_by"), [
    ("llama-scalar", PAIR, "llama-scalar"),
    (ALIAS, PAIR, "llama-scalar"),
    ("qwen2-prm", {"prompt": texts(["2+2?", "3+3?"]), "steps_json": texts([json.dumps(["4", "so 4"]), '["6"]'])},
     "qwen2-prm"),
    ("llama-gating", {"input_ids": np.array([[5, 6, 7], [5, 6, -1]], dtype=np.int64),
                      "prompt_length": np.array([2, 1], dtype=np.int64)}, "llama-gating"),
    ("llama-gating-graph", GRAPH_INPUTS, "llama-gating-graph"),
], ids=["scalar", "alias", "process", "token ids", "graph"])
def test_infer_agrees(model, tensors, answered_by, clients):
    over_http, over_grpc, error = infer_on_both(clients, model, tensors)
    assert error is None, error
    response = assert_same_result(over_http, over_grpc)
    assert response["model_name"] == answered_by and response["model_version"] == "1"
    assert ("parameters" in response) is (not model.endswith("-graph"))


BAD = {  # case -> (model, tensors, infer options, HTTP status, what the message starts with or names)
    "unknown model": ("no-such-model", PAIR, {}, 404, "model: no model named 'no-such-model'"),
    "bad version": ("llama-scalar", PAIR, {"model_version": "7"}, 404, "model_version: model 'llama-scalar'"),
    "bad version of the graph": ("llama-gating-graph", GRAPH_INPUTS, {"model_version": "7"}, 404, "model_version:"),
    "failed model": ("ghost", PAIR, {}, 503, "model 'ghost' is failed: ModelLoadError"),
    "missing tensor": ("llama-scalar", {"prompt": PAIR["prompt"]}, {}, 400, "response: missing"),
    "token outside the vocabulary": ("llama-scalar", {"input_ids": np.array([[1, 99999]], dtype=np.int64)}, {}, 400,
                                     "input_ids[0, 1]"),
    "unknown output": ("llama-scalar", PAIR, {"outputs": ["step_rewards"]}, 400, "step_rewards: no such output"),
    "bad parameter": ("llama-scalar", PAIR, {"parameters": {"truncate": "middle"}}, 400, "parameter 'truncate'"),
    "bad graph tensor": ("llama-gating-graph", {**GRAPH_INPUTS, "attention_mask": LEFT_PADDED}, {}, 400,
                         "attention_mask: each row must be ones then zeros"),
    "unknown graph output": ("llama-gating-graph", GRAPH_INPUTS, {"outputs": ["score"]}, 400, "score: no such output"),
}


@pytest.mark.parametrize("case", BAD)
def test_infer_errors_agree(case, clients):
    model, tensors, options, status, says = BAD[case]
    _, _, error = infer_on_both(clients, model, tensors, **options)
    assert error is not None and error[1] == status, error
    assert error[0].startswith(says) or says in error[0], error[0]


def test_a_stream_reports_the_same_error_as_a_call(clients):
    """ModelStreamInfer's error_message is the unary call's status and message."""
    model, tensors, _, _, _ = BAD["missing tensor"]
    client = clients[triton_grpc]
    with pytest.raises(InferenceServerException) as unary:
        infer(clients, "grpc", model, tensors)
    answers = []
    done = threading.Event()
    client.start_stream(callback=lambda result, error: (answers.append(error), done.set()))
    try:
        tensor = triton_grpc.InferInput("prompt", [2], "BYTES")
        tensor.set_data_from_numpy(tensors["prompt"])
        client.async_stream_infer(model, [tensor])
        assert done.wait(WAIT_S)
    finally:
        client.stop_stream()
    assert answers[0].message() == f"[INVALID_ARGUMENT] {unary.value.message()}"


# ---- the served graph runs through its model's runner --------------------------------------


@pytest.fixture
def watched_backend(monkeypatch):
    """Every torch backend forward records its thread; `hold` makes the next ones of one
    backend wait (saying so on `entered`) until `release` is set."""
    calls: list[tuple[object, str]] = []
    hold: dict = {}
    entered, release = threading.Event(), threading.Event()
    forward = TorchBackend.__call__

    def watched(backend, inputs):
        calls.append((backend, threading.current_thread().name))
        if hold.get("backend") is backend:
            entered.set()
            assert release.wait(WAIT_S), "the held forward was never released"
        return forward(backend, inputs)

    monkeypatch.setattr(TorchBackend, "__call__", watched)
    yield calls, hold, entered, release
    release.set()


def test_graph_requests_run_on_the_models_forward_thread(clients, app, watched_backend):
    calls = watched_backend[0]
    backend = app.state.registry.runners["llama-gating"].model.backend
    for transport in ("http-binary", "grpc"):
        infer(clients, transport, "llama-gating-graph", GRAPH_INPUTS)
    threads = [thread for called, thread in calls if called is backend]
    assert threads == ["forward-llama-gating_0"] * 2, threads


def test_graph_requests_are_held_to_the_models_queue_bound(served, tiny_model_dirs, watched_backend):
    """queue.max_items 3: while a 2-row graph request holds the forward, a second one (2
    more rows) and a 2-item score request are refused with 429; once it has run, both go."""
    _, hold, entered, release = watched_backend
    config = ModelConfig(name="rm", path=str(tiny_model_dirs["llama-gating"]), serve_graph=True)
    graph_body = {"inputs": [{"name": n, "datatype": "INT64", "shape": list(a.shape), "data": a.reshape(-1).tolist()}
                             for n, a in GRAPH_INPUTS.items()]}
    score_body = {"items": [{"prompt": "Hi", "response": "Hello"}, {"prompt": "Yo", "response": "Hey"}]}
    with served([config], cache={"max_bytes": 0}, queue={"max_items": 3, "max_wait_s": None}, timeout=WAIT_S) as server:
        app, url, http = server.app, server.url, server.http
        grpc_client = triton_grpc.InferenceServerClient(server.grpc_target)
        hold["backend"] = app.state.registry.runners["rm"].model.backend
        first: dict = {}
        holder = threading.Thread(target=lambda: first.update(
            response=httpx.post(f"{url}/v2/models/rm-graph/infer", json=graph_body, timeout=WAIT_S)))
        holder.start()
        try:
            assert entered.wait(WAIT_S), "the first graph request never reached the forward"
            refused = http.post("/v2/models/rm-graph/infer", json=graph_body)
            assert refused.status_code == 429 and refused.headers["retry-after"], refused.text
            assert refused.json()["error"].startswith("queue full")
            with pytest.raises(InferenceServerException) as raised:
                infer({triton_grpc: grpc_client}, "grpc", "rm-graph", GRAPH_INPUTS)
            assert raised.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
            assert http.post("/v1/score", json=score_body).status_code == 429
        finally:
            hold.clear()
            release.set()
            holder.join(WAIT_S)
            grpc_client.close()
        assert first["response"].status_code == 200, first["response"].text
        assert http.post("/v2/models/rm-graph/infer", json=graph_body).status_code == 200
        assert http.post("/v1/score", json=score_body).status_code == 200



def test_a_failure_no_check_foresaw_is_500_on_both(clients, monkeypatch):
    """Reported as KServe's error (HTTP 500, gRPC INTERNAL), with the same message."""
    async def broken(*args):
        raise RuntimeError("the scorer broke")

    monkeypatch.setattr(inference, "infer", broken)
    _, _, error = infer_on_both(clients, "llama-scalar", PAIR)
    assert error == ("RuntimeError: the scorer broke", 500)
