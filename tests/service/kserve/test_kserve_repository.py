"""Triton's model repository extension against the live server, with unmodified clients
(`tritonclient.http` and `tritonclient.grpc`): a model loaded by name (and with a `config` of
its configuration fields), reloaded, unloaded (then listed UNAVAILABLE, not ready), loaded
again; a load that fails raises with the reason and leaves the model serving."""

from __future__ import annotations

import json

import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

SCALAR, OTHER = "llama-scalar", "qwen2-scalar"
WAIT_S = 30


@pytest.fixture(params=[triton_http, triton_grpc], ids=["http", "grpc"])
def client(request, served):
    """A client of either protocol on a fresh server (each test changes what it serves)."""
    with served([SCALAR]) as server:
        if request.param is triton_http:
            client = triton_http.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=WAIT_S)
        else:
            client = triton_grpc.InferenceServerClient(server.grpc_target)
        yield client
        client.close()


def index(client) -> dict[str, dict]:
    """name -> its repository index entry, as a dict on either protocol."""
    entries = client.get_model_repository_index()
    entries = entries if isinstance(entries, list) else \
        [{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in entries.models]
    return {entry["name"]: entry for entry in entries}


def test_load_reload_unload_and_load_again(client, tiny_model_dirs):
    assert index(client)[SCALAR]["state"] == "READY"
    client.load_model(SCALAR)  # a reload from its configuration
    assert client.is_model_ready(SCALAR)
    client.load_model("added", config=json.dumps({"path": str(tiny_model_dirs[OTHER])}))
    assert client.is_model_ready("added") and index(client)["added"]["state"] == "READY"

    client.unload_model(SCALAR)
    assert not client.is_model_ready(SCALAR)
    assert {key: index(client)[SCALAR].get(key) for key in ("state", "reason")} == {
        "state": "UNAVAILABLE", "reason": "unloaded"}
    with pytest.raises(InferenceServerException, match="no model named"):
        client.get_model_metadata(SCALAR)
    with pytest.raises(InferenceServerException, match="no model named"):
        client.unload_model(SCALAR)

    client.load_model(SCALAR)  # as it was configured
    assert client.is_model_ready(SCALAR) and index(client)[SCALAR]["state"] == "READY"


def test_a_failed_load_raises_with_the_reason_and_keeps_the_model(client, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(InferenceServerException, match="no such directory") as raised:
        client.load_model(SCALAR, config=json.dumps({"path": str(missing)}))
    assert "still serves revision" in str(raised.value)
    assert client.is_model_ready(SCALAR)
    with pytest.raises(InferenceServerException, match="no model named 'unknown'"):
        client.load_model("unknown")
    with pytest.raises(InferenceServerException, match="parameters.config"):
        client.load_model(SCALAR, config="not json")
    with pytest.raises(InferenceServerException, match="weights"):  # not a field of the model's configuration
        client.load_model(SCALAR, config=json.dumps({"weights": "x"}))
    with pytest.raises(InferenceServerException, match="parameters.file:model.onnx"):
        client.load_model(SCALAR, config="{}", files={"file:model.onnx": b"\0"})
    assert client.is_model_ready(SCALAR)
