"""The KServe v2 / Triton protocol end to end, driven by the unmodified Triton clients
(`tritonclient.http` and `tritonclient.grpc`) against the server's HTTP and gRPC ports:
health, server and model metadata, model config and repository index, and inference with
BYTES and INT64 inputs (JSON and binary tensor data over HTTP). Outputs must equal the
unbatched reference and the /v1/score response for the same items (within float32); bad
requests must raise InferenceServerException naming the input."""

from __future__ import annotations

import json
import math
import queue

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from http_helpers import (
    LONG_TEXT,
    reference,
    sample_items,
    served_input,
)
from protocol_helpers import TRANSPORTS, infer, step_items, text_items, texts
from tiny_models import BUILDERS
from tritonclient.utils import InferenceServerException

from models.spec import ModelKind

MODEL_NAMES = list(BUILDERS)
TEXT_MODELS = [n for n in MODEL_NAMES if not n.endswith("-prm")]
PROCESS_MODELS = [n for n in MODEL_NAMES if n.endswith("-prm")]
TOL = 1e-5  # float32 outputs against float64 references of magnitude < 10
WAIT_S = 30


@pytest.fixture(scope="module")
def server(served):
    with served(MODEL_NAMES, cache={"max_bytes": 0}, batching={"max_batch_size": 4}) as server:
        yield server


@pytest.fixture(scope="module")
def clients(server):
    """{triton_http: client, triton_grpc: client}, both pointed at the running server."""
    http_client = triton_http.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=WAIT_S)
    grpc_client = triton_grpc.InferenceServerClient(server.grpc_target)
    yield {triton_http: http_client, triton_grpc: grpc_client}
    http_client.close()
    grpc_client.close()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def assert_outputs_equal(result, model, items: list[dict], http_results: list[dict] | None = None) -> None:
    """Every output tensor of `result` holds the reference numbers of `items` (and those of
    the /v1/score results, when given)."""
    expected = [reference(model, item) for item in items]
    n = len(items)
    score = result.as_numpy("score")
    assert score.dtype == np.float32 and score.shape == (n,)
    np.testing.assert_allclose(score, [e.score for e in expected], atol=TOL, rtol=0)
    assert result.as_numpy("num_tokens").tolist() == [e.num_tokens for e in expected]
    assert result.as_numpy("truncated").tolist() == [e.truncated for e in expected]
    kind = model.spec.kind
    if kind == ModelKind.multi_objective:
        names = model.spec.multi_objective.dimensions
        dims = result.as_numpy("dimensions")
        assert dims.shape == (n, len(names))
        np.testing.assert_allclose(dims, [[e.dimensions[d] for d in names] for e in expected], atol=TOL, rtol=0)
        gating = result.as_numpy("gating_weights")
        if expected[0].gating_weights is None:
            assert gating is None
        else:
            np.testing.assert_allclose(gating, [e.gating_weights for e in expected], atol=TOL, rtol=0)
    if kind == ModelKind.process:
        steps = result.as_numpy("step_rewards")
        counts = [len(e.step_rewards) for e in expected]
        assert result.as_numpy("num_steps").tolist() == counts
        assert steps.shape == (n, max(counts))
        for row, e in zip(steps, expected):
            np.testing.assert_allclose(row[:len(e.step_rewards)], e.step_rewards, atol=TOL, rtol=0)
            assert np.isnan(row[len(e.step_rewards):]).all()
    if http_results is not None:
        np.testing.assert_allclose(score, [r["score"] for r in http_results], atol=TOL, rtol=0)


# ---- health and metadata --------------------------------------------------------------


@pytest.mark.parametrize("module", [triton_http, triton_grpc], ids=["http", "grpc"])
def test_health_and_server_metadata(module, clients):
    client = clients[module]
    assert client.is_server_live() and client.is_server_ready()
    for name in MODEL_NAMES:
        assert client.is_model_ready(name)
        assert client.is_model_ready(name, "1")
    assert not client.is_model_ready("no-such-model")
    metadata = client.get_server_metadata()
    if module is triton_grpc:
        metadata = {"name": metadata.name, "extensions": list(metadata.extensions)}
    assert metadata["name"] == "rewardserve" and "binary_tensor_data" in metadata["extensions"]
    index = client.get_model_repository_index()
    if module is triton_grpc:
        index = [{"name": m.name, "state": m.state} for m in index.models]
    assert [(m["name"], m["state"]) for m in index] == [(n, "READY") for n in MODEL_NAMES]


@pytest.mark.parametrize("module", [triton_http, triton_grpc], ids=["http", "grpc"])
def test_model_metadata_and_config_describe_the_tensors(module, clients, load_tiny):
    client = clients[module]
    for name in ("llama-scalar", "llama-gating", "qwen2-prm"):
        model = load_tiny(name)
        json_form = {"as_json": True} if module is triton_grpc else {}
        metadata = client.get_model_metadata(name, **json_form)
        config = client.get_model_config(name, **json_form)
        config = config.get("config", config)
        assert metadata["name"] == name and metadata["versions"] == ["1"]
        inputs = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in metadata["inputs"]}
        outputs = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in metadata["outputs"]}
        assert inputs["input_ids"] == ("INT64", [-1, -1]) and inputs["prompt"] == ("BYTES", [-1])
        assert outputs["score"] == ("FP32", [-1]) and outputs["num_tokens"] == ("INT32", [-1])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        assert (params["kind"], params["revision"]) == (model.spec.kind.value, model.revision)
        if name == "llama-gating":
            assert outputs["dimensions"] == ("FP32", [-1, len(model.spec.multi_objective.dimensions)])
            assert "gating_weights" in outputs and "response" in inputs
            assert json.loads(params["dimensions"]) == model.spec.multi_objective.dimensions
        if name == "qwen2-prm":
            assert {"steps_json", "prompt"} <= set(inputs) and "response" not in inputs
            assert outputs["step_rewards"] == ("FP32", [-1, -1]) and outputs["num_steps"] == ("INT32", [-1])
        if name == "llama-scalar":
            assert set(outputs) == {"score", "num_tokens", "truncated"}


# ---- inference ------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", TEXT_MODELS)
def test_infer_prompt_response_equals_reference_and_http(name, transport, clients, http, load_tiny):
    model = load_tiny(name)
    items = text_items(model)
    result = infer(clients, transport, name, {"prompt": texts([i["prompt"] for i in items]),
                                              "response": texts([i["response"] for i in items])})
    over_http = http.post("/v1/score", json={"model": name, "items": items}).json()
    assert_outputs_equal(result, model, items, over_http["results"])
    response = result.get_response(as_json=True) if transport == "grpc" else result.get_response()
    assert response["model_name"] == name
    params = {k: v.get("string_param", v) if isinstance(v, dict) else v for k, v in response["parameters"].items()}
    assert params["revision"] == model.revision


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", PROCESS_MODELS)
def test_infer_steps_equals_reference(name, transport, clients, http, load_tiny):
    """step_rewards come NaN-padded to the longest item, with num_steps per item."""
    model = load_tiny(name)
    items = step_items(model)
    result = infer(clients, transport, name, {"prompt": texts([i["prompt"] for i in items]),
                                              "steps_json": texts([json.dumps(i["steps"]) for i in items])})
    over_http = http.post("/v1/score", json={"model": name, "items": items}).json()
    assert_outputs_equal(result, model, items, over_http["results"])


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", ["llama-gating", "qwen2-prm", "bert-scalar"])
def test_infer_token_ids(name, transport, clients, load_tiny):
    """INT64 input_ids [N, L]: rows padded with -1, or cut by `lengths`; prompt_length for
    gating models."""
    model = load_tiny(name)
    items = [item for item in sample_items(model) if "input_ids" not in item][:3]
    encoded = [model.encode(served_input(item)) for item in items]
    token_items = [{"input_ids": e.input_ids, **({"prompt_length": e.prompt_length} if e.prompt_length else {})}
                   for e in encoded]
    width = max(len(e.input_ids) for e in encoded)
    padded = np.full((len(encoded), width), -1, dtype=np.int64)
    for row, e in enumerate(encoded):
        padded[row, :len(e.input_ids)] = e.input_ids
    tensors = {"input_ids": padded}
    if name == "llama-gating":
        tensors["prompt_length"] = np.array([e.prompt_length for e in encoded], dtype=np.int64)
    assert_outputs_equal(infer(clients, transport, name, tensors), model, token_items)

    lengths = np.array([len(e.input_ids) for e in encoded], dtype=np.int64)
    zero_padded = np.where(padded == -1, 0, padded)
    result = infer(clients, transport, name, {**tensors, "input_ids": zero_padded, "lengths": lengths})
    assert_outputs_equal(result, model, token_items)


@pytest.mark.parametrize("transport", ["http-binary", "grpc"])
def test_infer_chat_and_options(transport, clients, load_tiny):
    """messages_json items; request parameters truncate and priority (Triton's integer)."""
    model = load_tiny("llama-scalar")
    chats = [item for item in sample_items(model) if "messages" in item]
    result = infer(
        clients,
        transport,
        "llama-scalar",
        {"messages_json": texts([json.dumps(c["messages"]) for c in chats])},
        priority=2,
    )
    assert_outputs_equal(result, model, chats)

    long = {"prompt": "Tell me. " + " ".join([LONG_TEXT] * 6), "response": "No."}
    result = infer(clients, transport, "llama-scalar", {"prompt": texts([long["prompt"]]),
                                                        "response": texts([long["response"]])},
                   parameters={"truncate": "left"})
    expected = reference(model, long, truncate="left")
    assert expected.truncated and result.as_numpy("truncated").tolist() == [True]
    assert math.isclose(result.as_numpy("score")[0], expected.score, abs_tol=TOL)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_only_requested_outputs_come_back(transport, clients, load_tiny):
    model = load_tiny("llama-helpsteer")
    item = text_items(model)[1]
    result = infer(clients, transport, "llama-helpsteer", {"prompt": texts([item["prompt"]]),
                                                           "response": texts([item["response"]])},
                   outputs=["dimensions"])
    assert result.as_numpy("score") is None
    names = model.spec.multi_objective.dimensions
    expected = reference(model, item)
    np.testing.assert_allclose(result.as_numpy("dimensions"), [[expected.dimensions[d] for d in names]], atol=TOL)


def test_stream_infer_over_grpc(clients, load_tiny):
    """tritonclient.grpc's bidirectional stream: each request answered with its id."""
    client = clients[triton_grpc]
    model = load_tiny("llama-scalar")
    items = text_items(model)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i, item in enumerate(items):
            prompt, response = triton_grpc.InferInput("prompt", [1], "BYTES"), triton_grpc.InferInput(
                "response", [1], "BYTES")
            prompt.set_data_from_numpy(texts([item["prompt"]]))
            response.set_data_from_numpy(texts([item["response"]]))
            client.async_stream_infer("llama-scalar", [prompt, response], request_id=str(i))
        got = {}
        for _ in items:
            result, error = answers.get(timeout=WAIT_S)
            assert error is None, error
            got[int(result.get_response().id)] = result
    finally:
        client.stop_stream()
    for i, item in enumerate(items):
        assert_outputs_equal(got[i], model, [item])


# ---- errors ---------------------------------------------------------------------------


BAD = {  # case -> (model, tensors, what the message must name, HTTP status, gRPC status)
    "unknown input": ("llama-scalar", {"prompt": texts(["Hi"]), "answer": texts(["Hello"])},
                      "answer", "400", "INVALID_ARGUMENT"),
    "missing response": ("llama-scalar", {"prompt": texts(["Hi"])}, "response", "400", "INVALID_ARGUMENT"),
    "steps on a scalar model": ("llama-scalar", {"prompt": texts(["Hi"]), "steps_json": texts(['["a"]'])},
                                "steps_json", "400", "INVALID_ARGUMENT"),
    "count mismatch": ("llama-scalar", {"prompt": texts(["Hi", "Yo"]), "response": texts(["Hello"])},
                       "response", "400", "INVALID_ARGUMENT"),
    "token outside vocabulary": ("llama-scalar", {"input_ids": np.array([[1, 5], [7, 99999]], dtype=np.int64)},
                                 "input_ids[1, 1]", "400", "INVALID_ARGUMENT"),
    "float token ids": ("llama-scalar", {"input_ids": np.array([[1.0, 5.0]], dtype=np.float32)},
                        "input_ids", "400", "INVALID_ARGUMENT"),
    "steps not json": ("qwen2-prm", {"prompt": texts(["Q"]), "steps_json": texts(["not json"])},
                       "steps_json[0]", "400", "INVALID_ARGUMENT"),
    "empty steps": ("qwen2-prm", {"prompt": texts(["Q"]), "steps_json": texts(["[]"])},
                    "steps_json[0]", "400", "INVALID_ARGUMENT"),
    "too long": ("llama-scalar", {"prompt": texts(["Hi " * 400]), "response": texts(["Hello"])},
                 "prompt/response[0]", "400", "INVALID_ARGUMENT"),
    "unknown model": ("no-such-model", {"prompt": texts(["Hi"]), "response": texts(["Hello"])},
                      "no-such-model", "404", "NOT_FOUND"),
}


@pytest.mark.parametrize("transport", ["http-binary", "http-json", "grpc"])
@pytest.mark.parametrize("case", BAD)
def test_bad_request_raises_naming_the_input(case, transport, clients):
    model, tensors, named, http_status, grpc_status = BAD[case]
    with pytest.raises(InferenceServerException) as info:
        infer(clients, transport, model, tensors)
    error = info.value
    assert named in error.message(), error.message()
    assert error.status() == (http_status if transport != "grpc" else f"StatusCode.{grpc_status}")


@pytest.mark.parametrize("transport", ["http-binary", "grpc"])
def test_unknown_output_and_version_are_refused(transport, clients):
    tensors = {"prompt": texts(["Hi"]), "response": texts(["Hello"])}
    with pytest.raises(InferenceServerException) as info:
        infer(clients, transport, "llama-scalar", tensors, outputs=["step_rewards"])
    assert "step_rewards" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        infer(clients, transport, "llama-scalar", tensors, model_version="7")
    assert "version '7'" in info.value.message()
