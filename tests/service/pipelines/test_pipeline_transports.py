"""A pipeline over rewardserve.v1 gRPC and KServe v2 (HTTP and gRPC, through the real Triton
clients): the same rewards, component values and statuses as /v1/score, the items' ground
truths and context carried by each protocol, and its fields named in errors."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from google.protobuf import json_format
from pipeline_helpers import ACCURACY, DEFAULT, FORMAT, ITEMS, NAME, assert_same_result, pipeline
from protocol_helpers import TRANSPORTS, infer
from tritonclient.utils import InferenceServerException

from service.grpc.proto import rewardserve_pb2 as pb
from service.grpc.proto import rewardserve_pb2_grpc as pb_grpc

TOL = 1e-5  # float32 outputs
MATCHED = "matched"  # the exact-match rule alone: a ground-truth list means any of its elements


@pytest.fixture(scope="module")
def server(served, tmp_path_factory):
    config = pipeline(tmp_path_factory.mktemp("functions"))
    matched = {"name": MATCHED, "components": [{"name": "answer", "type": "rule", "rule": "match",
                                                 "params": {"mode": "exact"}}]}
    with served(["llama-scalar", "qwen2-scalar"], pipelines=[config, matched], cache={"max_bytes": 0}) as server:
        yield server


@pytest.fixture(scope="module")
def http_results(server) -> list[dict]:
    response = server.http.post("/v1/score", json={"model": NAME, "items": ITEMS})
    assert response.status_code == 200, response.text
    return response.json()["results"]


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.RewardServiceStub(channel)


def grpc_item(item: dict) -> pb.Item:
    context = {k: v for k, v in item.items() if k in ("ground_truth", "data_source", "extra_info")}
    return json_format.ParseDict({"text": {"prompt": item["prompt"], "response": item["response"]}, **context},
                                 pb.Item())


def test_the_http_results_are_the_rules_verdicts(http_results):
    for result, fmt, acc in zip(http_results, FORMAT, ACCURACY, strict=True):
        components = result["components"]
        assert components["fmt"] == {"value": fmt, "status": "ok"}
        assert components["acc"] == {"value": acc, "status": "ok"}
        assert components["user"]["status"] == "error" and components["user"]["value"] == DEFAULT
        assert result["uncertainty"] is not None


def test_grpc_scores_a_pipeline_as_http_does(stub, http_results):
    response = stub.Score(pb.ScoreRequest(model=NAME, items=[grpc_item(item) for item in ITEMS]), timeout=60)
    assert response.kind == "pipeline"
    for result, expected in zip(response.results, http_results, strict=True):
        assert_same_result(json_format.MessageToDict(result, preserving_proto_field_name=True), expected)
        assert dict(result.dimensions) == pytest.approx(expected["dimensions"], abs=1e-6)


def test_grpc_carries_json_ground_truths_and_context(stub, server):
    item = {"prompt": "What is 2 + 3?", "response": "The answer is \\boxed{5}.", "ground_truth": 5,
            "extra_info": {"tags": ["a", 1], "nested": {"x": 2.5}}}
    expected = server.http.post("/v1/score", json={"model": NAME, "items": [item]}).json()["results"][0]
    result = stub.Score(pb.ScoreRequest(model=NAME, items=[grpc_item(item)]), timeout=60).results[0]
    assert result.components["acc"].value == expected["components"]["acc"]["value"] == 1.0


def test_grpc_names_a_missing_ground_truth(stub):
    item = grpc_item({"prompt": "p", "response": "\\boxed{1}"})
    with pytest.raises(grpc.RpcError) as caught:
        stub.Score(pb.ScoreRequest(model=NAME, items=[item]), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("items[0].ground_truth")


def tensors(items: list[dict], **extra) -> dict[str, np.ndarray]:
    def column(name, encode=str):
        return np.array([encode(item[name]).encode() if item.get(name) is not None else b"" for item in items],
                        dtype=np.object_)
    return {"prompt": column("prompt"), "response": column("response"), "ground_truth": column("ground_truth"),
            "data_source": column("data_source"), "extra_info": column("extra_info", json.dumps), **extra}


@pytest.fixture(scope="module")
def clients(server):
    http_client = triton_http.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)
    grpc_client = triton_grpc.InferenceServerClient(server.grpc_target)
    yield {triton_http: http_client, triton_grpc: grpc_client}
    http_client.close()
    grpc_client.close()


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_kserve_infers_a_pipeline_as_http_scores_it(clients, transport, http_results):
    result = infer(clients, transport, NAME, tensors(ITEMS))
    np.testing.assert_allclose(result.as_numpy("score"), [r["score"] for r in http_results], atol=TOL)
    np.testing.assert_allclose(result.as_numpy("uncertainty"), [r["uncertainty"] for r in http_results], atol=TOL)
    names = ["rm", "ens", "fmt", "acc", "user"]
    np.testing.assert_allclose(result.as_numpy("dimensions"),
                               [[r["dimensions"][n] for n in names] for r in http_results], atol=TOL)
    np.testing.assert_array_equal(result.as_numpy("dimensions")[:, 3], ACCURACY)


def test_kserve_describes_a_pipeline(server):
    metadata = server.http.get(f"/v2/models/{NAME}").json()
    inputs = {t["name"]: t["datatype"] for t in metadata["inputs"]}
    assert {"prompt", "response", "ground_truth", "data_source", "extra_info"} <= set(inputs)
    assert inputs["ground_truth"] == "BYTES"
    assert [t["name"] for t in metadata["outputs"]] == ["score", "num_tokens", "truncated", "dimensions",
                                                       "uncertainty"]
    assert metadata["parameters"]["kind"] == "pipeline"
    assert json.loads(metadata["parameters"]["dimensions"]) == ["rm", "ens", "fmt", "acc", "user"]
    index = server.http.post("/v2/repository/index", json={}).json()
    assert {"name": NAME, "version": "1", "state": "READY"} in index
    assert server.http.get(f"/v2/models/{NAME}/ready").status_code == 200


def test_kserve_ground_truth_may_be_json(clients):
    """A JSON list is a list of ground truths, any of which is right; other text is one."""
    items = [{"prompt": "p", "response": "5", "ground_truth": '["4", "5"]'},
             {"prompt": "p", "response": '["4", "5"]', "ground_truth": '["4", "5"]'},
             {"prompt": "p", "response": "5 or 6", "ground_truth": "5 or 6"}]
    result = infer(clients, "http-json", MATCHED, tensors(items))
    np.testing.assert_array_equal(result.as_numpy("score"), [1.0, 0.0, 1.0])


@pytest.mark.parametrize(("change", "field"), [
    ({"ground_truth": np.array([b"5", b"", b"red"], dtype=np.object_)}, "ground_truth[1]"),
    ({"extra_info": np.array([b"{}", b"[1]", b""], dtype=np.object_)}, "extra_info[1]"),
    ({"extra_info": np.array([b"{}", b"{", b""], dtype=np.object_)}, "extra_info[1]"),
    ({"data_source": np.array([b"x"], dtype=np.object_)}, "data_source"),
])
def test_kserve_names_the_bad_context_tensor(clients, change, field):
    with pytest.raises(InferenceServerException) as caught:
        infer(clients, "http-json", NAME, tensors(ITEMS, **change))
    assert caught.value.status() == "400"
    assert caught.value.message().startswith(field), caught.value.message()
