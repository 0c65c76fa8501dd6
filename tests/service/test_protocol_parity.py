"""One live server (HTTP and gRPC, a tiny model of every kind), the same inputs through
every protocol it speaks: the /v1 JSON API, the rewardserve.v1 gRPC stub, KServe v2 through
tritonclient.http and tritonclient.grpc (BYTES texts and INT64 token ids), the Python
client over HTTP and over gRPC, and the compatibility endpoints (OpenRLHF /get_reward,
vLLM /pooling, /classify, /score, /rerank). Every score, dimension and step reward must
equal the unbatched reference and the /v1 API's, and the same bad input must be refused
on every protocol with its own status and a message naming what is wrong. What each
protocol does beyond that is tested in its own file; this one is the matrix across them."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from http_helpers import assert_error, reference, served_input
from protocol_helpers import infer, step_items, text_items, texts, to_request
from tiny_models import BUILDERS
from tritonclient.utils import InferenceServerException

from models.spec import ModelKind
from service.client import RewardClient, RewardServeError
from service.grpc.proto import rewardserve_pb2_grpc as pb_grpc

TOL = 1e-5  # KServe answers in float32; the references are float64 of magnitude < 10
WAIT_S = 30
# A scalar decoder, a scalar encoder, a gated multi-objective model and a process model.
MODELS = ["llama-scalar", "bert-scalar", "llama-gating", "qwen2-prm"]


class Protocols:
    """Everything that talks to the one server: raw HTTP, the gRPC stub, the Triton
    clients ({module: client}) and the Python client per transport."""

    def __init__(self, http: httpx.Client, stub, triton: dict, clients: dict[str, RewardClient]):
        self.http, self.stub, self.triton, self.clients = http, stub, triton, clients


@pytest.fixture(scope="module")
def protocols(served):
    with served(list(BUILDERS), cache={"max_bytes": 0}, timeout=WAIT_S) as server:
        url, http, target = server.url, server.http, server.grpc_target
        triton = {triton_http: triton_http.InferenceServerClient(url.removeprefix("http://"), network_timeout=WAIT_S),
                  triton_grpc: triton_grpc.InferenceServerClient(target)}
        with grpc.insecure_channel(target) as channel, RewardClient(url) as over_http, \
                RewardClient(f"grpc://{target}") as over_grpc:
            yield Protocols(http, pb_grpc.RewardServiceStub(channel), triton, {"http": over_http, "grpc": over_grpc})
        for client in triton.values():
            client.close()


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


# ---- what each protocol answers, as {score, dimensions, step_rewards} per item ---------------
# `dimensions` is a list in the model's order; a protocol leaves out what it does not carry.


def numbers(score: float, dimensions=None, step_rewards=None) -> dict:
    got = {"score": float(score)}
    if dimensions is not None:
        got["dimensions"] = [float(v) for v in dimensions]
    if step_rewards is not None:
        got["step_rewards"] = [float(v) for v in step_rewards]
    return got


def from_result(result: dict, names: list[str] | None) -> dict:
    """A /v1 result (JSON, or a gRPC or client result as a dict), dimensions in the model's order."""
    dims = result.get("dimensions")
    if dims is not None:
        assert set(dims) == set(names)
    return numbers(result["score"], dims and [dims[n] for n in names], result.get("step_rewards") or None)


def tokens(model, item: dict) -> dict:
    encoded = model.encode(served_input(item))
    return {"input_ids": list(encoded.input_ids), "prompt_length": encoded.prompt_length}


def gates(model) -> bool:
    """Gating models weigh dimensions by the prompt, so token ids must say where it ends."""
    return model.spec.multi_objective is not None and model.spec.multi_objective.aggregate == "gating"


def response_text(item: dict) -> str:
    """The response as one text: process models' steps at blank lines, where the text
    endpoints cut them."""
    return "\n\n".join(item["steps"]) if "steps" in item else item["response"]


def v1_http(p: Protocols, name, model, items):
    body = ok(p.http.post("/v1/score", json={"model": name, "items": items}))
    assert list(body["results"][0].get("dimensions") or []) == (model.info.dimensions or [])  # JSON keeps the order
    return [from_result(r, model.info.dimensions) for r in body["results"]]


def v1_grpc(p: Protocols, name, model, items):
    response = p.stub.Score(to_request({"model": name, "items": items}), timeout=WAIT_S)
    return [from_result({"score": r.score, "dimensions": dict(r.dimensions) or None,
                         "step_rewards": list(r.step_rewards)}, model.info.dimensions) for r in response.results]


def client(transport: str):
    def send(p: Protocols, name, model, items):
        response = p.clients[transport].score(items, model=name)
        assert list(response.results[0].dimensions or []) == (model.info.dimensions or [])
        return [from_result(r.model_dump(), model.info.dimensions) for r in response.results]
    return send


def kserve(transport: str, as_tokens: bool):
    """KServe v2 through a Triton client: BYTES prompt/response (or steps_json), or INT64
    input_ids padded with -1 (and prompt_length for gating)."""
    def send(p: Protocols, name, model, items):
        if as_tokens:
            encoded = [tokens(model, item) for item in items]
            rows = np.full((len(items), max(len(e["input_ids"]) for e in encoded)), -1, dtype=np.int64)
            for row, e in zip(rows, encoded):
                row[:len(e["input_ids"])] = e["input_ids"]
            tensors = {"input_ids": rows}
            if gates(model):
                tensors["prompt_length"] = np.array([e["prompt_length"] for e in encoded], dtype=np.int64)
        elif model.spec.kind == ModelKind.process:
            tensors = {"prompt": texts([i["prompt"] for i in items]),
                       "steps_json": texts([json.dumps(i["steps"]) for i in items])}
        else:
            tensors = {"prompt": texts([i["prompt"] for i in items]), "response": texts([i["response"] for i in items])}
        result = infer(p.triton, transport, name, tensors)
        dims, steps = result.as_numpy("dimensions"), result.as_numpy("step_rewards")
        counts = result.as_numpy("num_steps")
        return [numbers(score, None if dims is None else dims[i],
                        None if steps is None else steps[i][:counts[i]])
                for i, score in enumerate(result.as_numpy("score"))]
    return send


def get_reward(p: Protocols, name, model, items):
    """OpenRLHF in mode split: each query is its prompt followed by the response."""
    body = ok(p.http.post("/get_reward", params={"model": name, "mode": "split"}, json={
        "query": [i["prompt"] + response_text(i) for i in items], "prompts": [i["prompt"] for i in items]}))
    dims = model.info.dimensions
    return [numbers(score, dims and [body["extra_logs"][f"rm/{d}"][i] for d in dims])
            for i, score in enumerate(body["rewards"])]


def vllm_entries(p: Protocols, path: str, name: str, model, items) -> list[dict]:
    """vLLM's `data` for the items sent as token ids; a gating model needs its prompt's
    extent, which token ids cannot tell vLLM, so its items go one conversation each."""
    if gates(model):
        bodies = [{"messages": [{"role": "user", "content": i["prompt"]},
                                {"role": "assistant", "content": i["response"]}]} for i in items]
    else:
        bodies = [{"input": [tokens(model, i)["input_ids"] for i in items]}]
    return [entry for body in bodies for entry in ok(p.http.post(path, json={"model": name, **body}))["data"]]


def pooling(p: Protocols, name, model, items):
    """vLLM pooling: the score, the dimensions, or the step rewards."""
    vector = {ModelKind.process: "step_rewards", ModelKind.multi_objective: "dimensions"}.get(model.spec.kind)
    return [{vector: entry["data"]} if vector else numbers(entry["data"][0])
            for entry in vllm_entries(p, "/pooling", name, model, items)]


def classify(p: Protocols, name, model, items):
    """vLLM classify: [sigmoid(score)], or [1 - score, score] for process models."""
    entries = vllm_entries(p, "/classify", name, model, items)
    if model.spec.kind == ModelKind.process:
        return [numbers(entry["probs"][1]) for entry in entries]
    return [numbers(math.log(entry["probs"][0] / (1 - entry["probs"][0]))) for entry in entries]


def vllm_score(p: Protocols, name, model, items):
    body = ok(p.http.post("/score", json={"model": name, "text_1": [i["prompt"] for i in items],
                                          "text_2": [response_text(i) for i in items]}))
    return [numbers(entry["score"]) for entry in body["data"]]


def vllm_rerank(p: Protocols, name, model, items):
    """vLLM/Cohere rerank, one query (the item's prompt) and one document per request."""
    got = []
    for item in items:
        document = {"steps": item["steps"]} if "steps" in item else item["response"]
        body = ok(p.http.post("/rerank", json={"model": name, "query": item["prompt"], "documents": [document]}))
        got.append(from_result(body["results"][0], model.info.dimensions))
    return got


CHANNELS: dict[str, Callable] = {
    "v1 http": v1_http,
    "v1 grpc": v1_grpc,
    "client http": client("http"),
    "client grpc": client("grpc"),
    "kserve http bytes": kserve("http-binary", False),
    "kserve http json int64": kserve("http-json", True),
    "kserve grpc bytes": kserve("grpc", False),
    "kserve grpc int64": kserve("grpc", True),
    "openrlhf get_reward": get_reward,
    "vllm pooling": pooling,
    "vllm classify": classify,
    "vllm score": vllm_score,
    "vllm rerank": vllm_rerank,
}


def assert_numbers_equal(got: dict, want: dict, where: str) -> None:
    for key, value in got.items():
        assert value == pytest.approx(want[key], abs=TOL, rel=0), (where, key, value, want[key])


@pytest.mark.parametrize("name", MODELS)
def test_every_protocol_gives_the_reference_numbers(name, protocols, load_tiny):
    model = load_tiny(name)
    items = step_items(model) if model.spec.kind == ModelKind.process else text_items(model)
    names = model.info.dimensions
    expected = [numbers(out.score, names and [out.dimensions[d] for d in names], out.step_rewards)
                for out in (reference(model, item) for item in items)]
    answers = {channel: send(protocols, name, model, items) for channel, send in CHANNELS.items()}
    for channel, got in answers.items():
        assert len(got) == len(items), channel
        for i, (item_got, want, over_v1) in enumerate(zip(got, expected, answers["v1 http"])):
            assert set(item_got) <= set(want), (channel, set(item_got))
            assert_numbers_equal(item_got, want, f"{channel} item {i} vs the reference")
            assert_numbers_equal(item_got, over_v1, f"{channel} item {i} vs /v1/score")
    carried = {key for got in answers.values() for key in got[0]}
    assert carried == set(expected[0]), "some protocol carries every number the model gives"


# ---- the same bad input on every protocol ----------------------------------------------------


class Refused:
    """What a protocol answered a bad request with: its status (an HTTP status, or a gRPC
    status name), the message, and the field when the protocol names one apart."""

    def __init__(self, status: str, message: str, field: str | None = None):
        self.status, self.message, self.field = status, message, field


def refused_v1_http(p: Protocols, model: str, rows: list[list[int]]) -> Refused:
    response = p.http.post("/v1/score", json={"model": model, "items": [{"input_ids": r} for r in rows]})
    error = assert_error(response, response.status_code, None, response.json()["error"]["field"])
    return Refused(str(response.status_code), error["message"], error["field"])


def refused_v1_grpc(p: Protocols, model: str, rows) -> Refused:
    with pytest.raises(grpc.RpcError) as info:
        p.stub.Score(to_request({"model": model, "items": [{"input_ids": r} for r in rows]}), timeout=WAIT_S)
    error = info.value
    return Refused(error.code().name, error.details(), dict(error.trailing_metadata())["rewardserve-error-field"])


def refused_client(transport: str):
    def send(p: Protocols, model: str, rows) -> Refused:
        with pytest.raises(RewardServeError) as info:
            p.clients[transport].score([{"input_ids": r} for r in rows], model=model)
        error = info.value
        if transport == "grpc":
            expected = grpc.StatusCode.NOT_FOUND if error.status == 404 else grpc.StatusCode.INVALID_ARGUMENT
            assert error.grpc_code == expected
        return Refused(str(error.status), error.message, error.field)
    return send


def refused_kserve_json(p: Protocols, model: str, rows) -> Refused:
    """The raw KServe v2 HTTP request: the answer is {"error": message}."""
    tensor = {"name": "input_ids", "shape": [len(rows), len(rows[0])], "datatype": "INT64",
              "data": [t for row in rows for t in row]}
    response = p.http.post(f"/v2/models/{model}/infer", json={"inputs": [tensor]})
    assert set(response.json()) == {"error"}, response.text
    return Refused(str(response.status_code), response.json()["error"])


def refused_triton(transport: str):
    def send(p: Protocols, model: str, rows) -> Refused:
        with pytest.raises(InferenceServerException) as info:
            infer(p.triton, transport, model, {"input_ids": np.array(rows, dtype=np.int64)})
        return Refused(info.value.status().removeprefix("StatusCode."), info.value.message())
    return send


def refused_compat(path: str, body: Callable[[list], dict]):
    def send(p: Protocols, model: str, rows) -> Refused:
        response = p.http.post(path, json={"model": model, **body(rows)})
        error = assert_error(response, response.status_code, None, response.json()["error"]["field"])
        return Refused(str(response.status_code), error["message"], error["field"])
    return send


# protocol -> (how to send, {case: (status, field or the text the message must hold)})
REFUSALS = {
    "v1 http": (refused_v1_http, {"unknown model": ("404", "model"), "bad token": ("422", "items[1].input_ids[1]")}),
    "v1 grpc": (refused_v1_grpc, {"unknown model": ("NOT_FOUND", "model"),
                                  "bad token": ("INVALID_ARGUMENT", "items[1].input_ids[1]")}),
    "client http": (refused_client("http"), {"unknown model": ("404", "model"),
                                             "bad token": ("422", "items[1].input_ids[1]")}),
    "client grpc": (refused_client("grpc"), {"unknown model": ("404", "model"),
                                             "bad token": ("422", "items[1].input_ids[1]")}),
    "kserve http json": (refused_kserve_json, {"unknown model": ("404", "no-such-model"),
                                               "bad token": ("400", "input_ids[1, 1]")}),
    "kserve tritonclient.http": (refused_triton("http-binary"), {"unknown model": ("404", "no-such-model"),
                                                                 "bad token": ("400", "input_ids[1, 1]")}),
    "kserve tritonclient.grpc": (refused_triton("grpc"), {"unknown model": ("NOT_FOUND", "no-such-model"),
                                                          "bad token": ("INVALID_ARGUMENT", "input_ids[1, 1]")}),
    "vllm pooling": (refused_compat("/pooling", lambda rows: {"input": rows}),
                     {"unknown model": ("404", "model"), "bad token": ("422", "input[1]")}),
    "vllm classify": (refused_compat("/classify", lambda rows: {"input": rows}),
                      {"unknown model": ("404", "model"), "bad token": ("422", "input[1]")}),
    "vllm rerank": (refused_compat("/rerank", lambda rows: {"query": "Q",
                                                            "documents": [{"input_ids": r} for r in rows]}),
                    {"unknown model": ("404", "model"), "bad token": ("422", "documents[1].input_ids[1]")}),
    "openrlhf get_reward": (refused_compat("/get_reward", lambda rows: {"query": ["Hi there"]}),
                            {"unknown model": ("404", "model")}),
    "vllm score": (refused_compat("/score", lambda rows: {"text_1": "Hi", "text_2": "there"}),
                   {"unknown model": ("404", "model")}),
}
CASES = {"unknown model": ("no-such-model", [[1, 5], [7, 9]]), "bad token": ("llama-scalar", [[1, 5], [7, 99999]])}


@pytest.mark.parametrize(("protocol", "case"), [(protocol, case) for protocol, (_, cases) in REFUSALS.items()
                                                for case in cases])
def test_bad_input_is_refused_on_every_protocol_naming_it(protocol, case, protocols):
    send, expected = REFUSALS[protocol]
    status, named = expected[case]
    model, rows = CASES[case]
    refused = send(protocols, model, rows)
    assert refused.status == status, (refused.status, refused.message)
    assert refused.message
    if refused.field is None:  # KServe names the input in its message
        assert named in refused.message, refused.message
    else:
        assert refused.field == named, (refused.field, refused.message)
    if protocol in ("v1 grpc", "client http", "client grpc"):  # their messages are led by the field
        assert refused.message.startswith(named), refused.message
