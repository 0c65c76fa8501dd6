"""The triton backend against a real KServe v2 / Triton-protocol peer: a live rewardserve that
serves the tiny models' raw graphs (`serve_graph`), reached with the real tritonclient over
HTTP and gRPC through the normal load path. Every model kind scores its mixed-length
batches as the unbatched torch reference does (within 1e-4); the served graphs describe
themselves as the exported ONNX files (and as deploy/triton's config.pbtxt) do; a peer that
is down at load fails the model with a clear message, one that dies while serving gives 5xx,
and a bad tensor sent to a graph gets 400 naming it.

NVIDIA's tritonserver itself is not run here (it is not installed on these machines)."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton_grpc
from google.protobuf import text_format
from http_helpers import (
    assert_result_matches,
    free_port,
    live_server,
    reference,
    sample_items,
    served_input,
    wait_until_loaded,
)
from paths import DEPLOY
from tiny_models import BUILDERS
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from models.backends.base import Backend
from models.backends.config import TritonConfig
from models.errors import ModelLoadError
from models.onnx_export import export_onnx
from models.reward_model import RewardModel
from service.app import create_app
from service.config import ModelConfig, Settings, load_settings

MODEL_NAMES = list(BUILDERS)  # scalar (decoders, BERT), multi-objective with and without gating, both PRM conventions
PROTOCOLS = ["http", "grpc"]
TOL = 1e-4
EXAMPLES = {"skywork": "llama-scalar", "math-shepherd": "mistral-prm"}  # deploy/triton model -> tiny model of its kind
ONNX_TYPES = {"INT64": "TYPE_INT64", "FLOAT": "TYPE_FP32"}


@dataclass(frozen=True)
class Peer:
    base_url: str
    grpc_address: str

    def address(self, protocol: str) -> str:
        return self.base_url.removeprefix("http://") if protocol == "http" else self.grpc_address


def graph_peer_app(model_dirs: dict[str, Path]):
    models = [ModelConfig(name=name, path=str(path), serve_graph=True) for name, path in model_dirs.items()]
    return create_app(Settings(models=models, server={"grpc_port": free_port()}, cache={"max_bytes": 0}))


@pytest.fixture(scope="module")
def peer(tiny_model_dirs):
    app = graph_peer_app(tiny_model_dirs)
    with live_server(app) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            assert wait_until_loaded(client).status_code == 200
        yield Peer(url, f"127.0.0.1:{app.state.grpc_port}")


def load_remote(name: str, directory: Path, peer: Peer, protocol: str, model: str | None = None,
                **target) -> RewardModel:
    """`directory`'s model with its graph run by `peer` (default: the graph of the same name)."""
    backend = TritonConfig(url=peer.address(protocol), model=model or f"{name}-graph", protocol=protocol,
                           timeout_s=30, **target)
    return RewardModel.load(name, directory, backend=backend)


def onnx_tensors(path: Path) -> tuple[dict, dict]:
    """({name: (config type, dims)} of the inputs, the same of the outputs) of an ONNX file."""
    graph = onnx.load(str(path)).graph

    def table(values) -> dict:
        out = {}
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            out[value.name] = (ONNX_TYPES[onnx.TensorProto.DataType.Name(tensor.elem_type)], dims)
        return out

    return table(graph.input), table(graph.output)


def config_tensors(config: model_config_pb2.ModelConfig) -> tuple[dict, dict]:
    def table(tensors) -> dict:
        return {t.name: (model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in tensors}

    return table(config.input), table(config.output)


@pytest.fixture(scope="module")
def exported(load_tiny, tmp_path_factory):
    """name -> the tiny model's graph exported by export-onnx (made on first use)."""
    root = tmp_path_factory.mktemp("triton_onnx")
    paths: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in paths:
            paths[name] = export_onnx(load_tiny(name), root / f"{name}.onnx")
        return paths[name]

    return get


# ---- parity -----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_triton_backend_matches_the_torch_reference(name, protocol, peer, tiny_model_dirs, load_tiny,
                                                   assert_outputs_match):
    torch_model = load_tiny(name)
    model = load_remote(name, tiny_model_dirs[name], peer, protocol)
    assert model.info.architecture == f"triton:{name}-graph@1"
    assert isinstance(model.backend, Backend) and model.backend.graph is None
    items = [served_input(item) for item in sample_items(torch_model)]
    assert_outputs_match(model.score(items), [torch_model.score([item])[0] for item in items], tol=TOL)


def test_revision_names_the_remote_model_and_version_not_the_address(peer, tiny_model_dirs, load_tiny):
    directory = tiny_model_dirs["llama-gating"]
    over_http = load_remote("llama-gating", directory, peer, "http")
    over_grpc = load_remote("llama-gating", directory, peer, "grpc")
    pinned = load_remote("llama-gating", directory, peer, "grpc", version="1")
    assert over_http.revision == over_grpc.revision == pinned.revision
    assert over_http.revision != load_tiny("llama-gating").revision
    other_graph = load_remote("llama-helpsteer", tiny_model_dirs["llama-helpsteer"], peer, "grpc")
    assert other_graph.revision != over_grpc.revision


# ---- load-time checks -------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_model_the_peer_does_not_serve_as_this_graph_is_a_load_error(protocol, peer, tiny_model_dirs):
    with pytest.raises(ModelLoadError, match="'no-such-graph'.* is not ready"):
        load_remote("llama-scalar", tiny_model_dirs["llama-scalar"], peer, protocol, model="no-such-graph")
    with pytest.raises(ModelLoadError, match="does not serve .*token_type_ids"):  # BERT takes segment ids
        load_remote("bert-scalar", tiny_model_dirs["bert-scalar"], peer, protocol, model="llama-scalar-graph")
    with pytest.raises(ModelLoadError, match="does not serve .*gating_weights"):
        load_remote("llama-gating", tiny_model_dirs["llama-gating"], peer, protocol, model="llama-helpsteer-graph")
    with pytest.raises(ModelLoadError, match="does not serve .*'prompt'"):  # the scoring model, not its graph
        load_remote("llama-scalar", tiny_model_dirs["llama-scalar"], peer, protocol, model="llama-scalar")
    with pytest.raises(ModelLoadError, match="version 7 on .* is not ready"):
        load_remote("llama-scalar", tiny_model_dirs["llama-scalar"], peer, protocol, version="7")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_peer_down_at_load_fails_the_model_with_a_clear_message(protocol, tiny_model_dirs):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    config = ModelConfig(name="rm", path=str(tiny_model_dirs["llama-scalar"]),
                         backend={"type": "triton", "url": address, "protocol": protocol, "timeout_s": 5})
    with live_server(create_app(Settings(models=[config]))) as url, httpx.Client(base_url=url, timeout=30) as client:
        ready = wait_until_loaded(client)
        assert ready.status_code == 503 and ready.json()["models"] == {"rm": "failed"}
        (entry,) = client.post("/v2/repository/index").json()
        assert entry["state"] == "UNAVAILABLE"
        assert f"model 'rm' on Triton server {protocol}://{address} cannot be reached" in entry["reason"]
        response = client.post("/v1/score", json={"items": [{"prompt": "Hi", "response": "Hello"}]})
        assert response.status_code == 503 and "cannot be reached" in response.json()["error"]["message"]


def test_triton_backend_needs_a_url():
    with pytest.raises(ValueError, match=r"backend\.triton\.url\n  Field required"):
        ModelConfig(name="rm", path="/models/rm", backend={"type": "triton"})
    with pytest.raises(ValueError, match="would name both"):
        Settings(models=[ModelConfig(name="rm", path="/m", serve_graph=True), ModelConfig(name="rm-graph", path="/m")])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_without_tritonclient_the_load_error_names_the_extra(protocol, tiny_model_dirs, monkeypatch):
    monkeypatch.setitem(sys.modules, f"tritonclient.{protocol}", None)  # as when it is not installed
    with pytest.raises(ModelLoadError, match=rf"tritonclient.{protocol} is not installed .*'rewardserve\[triton\]'"):
        RewardModel.load("rm", tiny_model_dirs["llama-scalar"],
                         backend=TritonConfig(url="127.0.0.1:1", protocol=protocol))


# ---- serving through a triton-backed server ---------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_served_through_the_peer_then_5xx_when_it_dies(protocol, tiny_model_dirs, load_tiny):
    """A server whose model runs on the peer scores like the reference; once the peer is
    gone, requests fail at once with 500 naming the Triton server, and nothing hangs."""
    peer_app = graph_peer_app({"rm": tiny_model_dirs["qwen2-prm"]})
    peer_stack = ExitStack()
    base_url = peer_stack.enter_context(live_server(peer_app))
    with httpx.Client(base_url=base_url, timeout=30) as client:
        assert wait_until_loaded(client).status_code == 200
    address = Peer(base_url, f"127.0.0.1:{peer_app.state.grpc_port}").address(protocol)
    config = ModelConfig(name="prm", path=str(tiny_model_dirs["qwen2-prm"]), backend=TritonConfig(
        url=address, protocol=protocol, model="rm-graph", timeout_s=10))
    app = create_app(Settings(models=[config], cache={"max_bytes": 0}, batching={"max_batch_size": 4}))
    items = sample_items(load_tiny("qwen2-prm"))
    with peer_stack, live_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert wait_until_loaded(client).status_code == 200
        card = client.get("/v1/models/prm").json()
        assert card["architecture"] == "triton:rm-graph@1"
        body = client.post("/v1/score", json={"items": items}).json()
        for result, item in zip(body["results"], items):
            assert_result_matches(result, reference(load_tiny("qwen2-prm"), item), tol=TOL)
        peer_stack.close()
        response = client.post("/v1/score", json={"items": items[:2]})
        assert response.status_code == 500, response.text
        error = response.json()["error"]
        assert error["code"] == "inference_failed"
        assert f"model 'rm-graph' on Triton server {protocol}://{address}" in error["message"]


# ---- the served graph -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama-gating", "mistral-prm", "bert-scalar"])
def test_served_graph_describes_itself_as_the_exported_onnx(name, peer, exported):
    inputs, outputs = onnx_tensors(exported(name))
    grpc_client = triton_grpc.InferenceServerClient(peer.grpc_address)
    try:
        config = grpc_client.get_model_config(f"{name}-graph").config
        metadata = grpc_client.get_model_metadata(f"{name}-graph")
    finally:
        grpc_client.close()
    assert (config.platform, config.backend, config.max_batch_size) == ("onnxruntime_onnx", "onnxruntime", 0)
    assert not config.HasField("dynamic_batching")
    assert config_tensors(config) == (inputs, outputs)
    assert list(config_tensors(config)[0]) == list(inputs)  # and in graph order
    assert metadata.platform == "onnxruntime_onnx" and list(metadata.versions) == ["1"]
    assert {t.name: (t.datatype, list(t.shape)) for t in metadata.inputs} == {
        n: (t.removeprefix("TYPE_"), dims) for n, (t, dims) in inputs.items()}
    with httpx.Client(base_url=peer.base_url, timeout=30) as client:
        assert client.get(f"/v2/models/{name}-graph/ready").status_code == 200
        states = {m["name"]: m["state"] for m in client.post("/v2/repository/index").json()}
        assert states[f"{name}-graph"] == states[name] == "READY"


@pytest.mark.parametrize("example", sorted(p.name for p in (DEPLOY / "triton").iterdir() if p.is_dir()))
def test_deploy_config_pbtxt_matches_what_export_onnx_writes(example, peer, exported):
    """deploy/triton's configs declare exactly the exported file's tensors (names, types and
    dims), as the served graph of a model of the same kind does."""
    text = (DEPLOY / "triton" / example / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.name == example
    assert (config.platform, config.max_batch_size) == ("onnxruntime_onnx", 0)
    assert not config.HasField("dynamic_batching")
    tiny = EXAMPLES[example]
    assert config_tensors(config) == onnx_tensors(exported(tiny))
    grpc_client = triton_grpc.InferenceServerClient(peer.grpc_address)
    try:
        assert config_tensors(grpc_client.get_model_config(f"{tiny}-graph").config) == config_tensors(config)
    finally:
        grpc_client.close()


def test_deploy_triton_yaml_points_at_the_example_repository():
    models = [m for m in load_settings(DEPLOY / "config" / "triton.yaml").models if m.backend.type == "triton"]
    assert models
    assert {m.backend.model or m.name for m in models} <= set(EXAMPLES)


def test_graph_infer_over_both_protocols_equals_the_backend(peer, load_tiny):
    model = load_tiny("llama-gating")
    inputs = model.model_inputs([model.encode(served_input(item)) for item in sample_items(model)])
    expected = model.backend(inputs)
    arrays = {name: tensor.numpy() for name, tensor in inputs.items()}
    with httpx.Client(base_url=peer.base_url, timeout=30) as client:
        body = client.post("/v2/models/llama-gating-graph/infer", json={"inputs": [
            {"name": n, "datatype": "INT64", "shape": list(a.shape), "data": a.reshape(-1).tolist()}
            for n, a in arrays.items()], "outputs": [{"name": "gated_score"}]}).json()
    assert [o["name"] for o in body["outputs"]] == ["gated_score"]
    assert body["outputs"][0]["data"] == pytest.approx(expected["gated_score"].tolist(), abs=1e-6)
    grpc_client = triton_grpc.InferenceServerClient(peer.grpc_address)
    try:
        tensors = []
        for name, array in arrays.items():
            tensor = triton_grpc.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        result = grpc_client.infer("llama-gating-graph", tensors)
    finally:
        grpc_client.close()
    for name, tensor in expected.items():
        np.testing.assert_allclose(result.as_numpy(name), tensor.numpy(), atol=1e-6, rtol=0)


BAD_TENSORS = {  # case -> (change to the good request, the input the error must name)
    "missing input": (lambda t: t.pop("attention_mask"), "attention_mask"),
    "unknown input": (lambda t: t.update(prompt=(np.array([b"hi", b"yo"], dtype=object), "BYTES")), "prompt"),
    "INT32 ids": (lambda t: t.update(input_ids=(t["input_ids"][0].astype(np.int32), "INT32")), "input_ids"),
    "rank": (lambda t: t.update(attention_mask=(t["attention_mask"][0][:, 0].copy(), "INT64")), "attention_mask"),
    "rows": (lambda t: t.update(prompt_end=(np.array([1], dtype=np.int64), "INT64")), "prompt_end"),
    "vocabulary": (lambda t: t["input_ids"][0].__setitem__((0, 0), 10**6), "input_ids"),
    "left padding": (lambda t: t["attention_mask"][0].__setitem__((1, 0), 0), "attention_mask"),
    "prompt_end past the row": (lambda t: t["prompt_end"][0].__setitem__(1, 3), "prompt_end"),
}


def good_tensors() -> dict[str, tuple[np.ndarray, str]]:
    """Two right-padded rows for llama-gating-graph: lengths 5 and 3."""
    ids = np.array([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]], dtype=np.int64)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=np.int64)
    return {"input_ids": (ids, "INT64"), "attention_mask": (mask, "INT64"),
            "prompt_end": (np.array([2, 1], dtype=np.int64), "INT64")}


@pytest.mark.parametrize("case", list(BAD_TENSORS))
def test_bad_tensors_to_the_graph_get_400_naming_the_input(case, peer):
    change, field = BAD_TENSORS[case]
    tensors = good_tensors()
    change(tensors)
    body = {"inputs": [{"name": n, "datatype": dtype, "shape": list(a.shape),
                        "data": [v.decode() for v in a.reshape(-1)] if dtype == "BYTES" else a.reshape(-1).tolist()}
                       for n, (a, dtype) in tensors.items()]}
    with httpx.Client(base_url=peer.base_url, timeout=30) as client:
        response = client.post("/v2/models/llama-gating-graph/infer", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(field), response.json()
    grpc_client = triton_grpc.InferenceServerClient(peer.grpc_address)
    inputs = []
    for name, (array, dtype) in tensors.items():
        tensor = triton_grpc.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    try:
        with pytest.raises(InferenceServerException) as raised:
            grpc_client.infer("llama-gating-graph", inputs)
    finally:
        grpc_client.close()
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert field in raised.value.message()


def test_unknown_output_and_version_of_the_graph_are_refused(peer):
    tensors = good_tensors()
    body = {"inputs": [{"name": n, "datatype": d, "shape": list(a.shape), "data": a.reshape(-1).tolist()}
                       for n, (a, d) in tensors.items()], "outputs": [{"name": "score"}]}
    with httpx.Client(base_url=peer.base_url, timeout=30) as client:
        response = client.post("/v2/models/llama-gating-graph/infer", json=body)
        assert response.status_code == 400 and response.json()["error"].startswith("score"), response.text
        assert client.get("/v2/models/llama-gating-graph/versions/2").status_code == 404
        assert client.get("/v2/models/llama-scalar-graph/versions/1/config").json()["platform"] == "onnxruntime_onnx"
