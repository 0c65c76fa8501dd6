"""Inputs that used to crash a handler (500, gRPC UNKNOWN or INTERNAL) or were taken
wrongly, each answered with a 4xx / INVALID_ARGUMENT naming what is wrong: lone UTF-16
surrogates in any text, KServe parameters of the wrong type, JSON nested past the
parser's depth, a NaN threshold, request bytes that are not their protobuf message,
booleans as token ids, UINT64 ids past int64; and the smaller HTTP details (405's Allow,
error messages that quote a huge input, the /v2 routes' documented errors)."""

from __future__ import annotations

import json

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from http_helpers import assert_error
from tritonclient.utils import InferenceServerException

from models.inputs import TextPair, TokenIds
from models.reward_model import RewardModel
from service.app import create_app
from service.config import ModelConfig, Settings
from service.grpc.proto import rewardserve_pb2 as pb
from service.grpc.proto import rewardserve_pb2_grpc as pb_grpc

SCALAR, PRM = "llama-scalar", "qwen2-prm"
SURROGATE = "\ud800x"


@pytest.fixture(scope="module")
def live(served):
    """(HTTP client, gRPC channel, gRPC port) of a server of SCALAR and PRM."""
    with served([SCALAR, PRM], cache={"max_bytes": 0}) as server, grpc.insecure_channel(server.grpc_target) as channel:
        yield server.http, channel, server.app.state.grpc_port


@pytest.fixture(scope="module")
def http(live):
    return live[0]


def post_ascii(http: httpx.Client, path: str, body: dict) -> httpx.Response:
    """The body as JSON with \\u escapes, the only way a lone surrogate travels."""
    return http.post(path, content=json.dumps(body, ensure_ascii=True), headers={"content-type": "application/json"})


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/score", {"model": SCALAR, "items": [{"prompt": "hi", "response": SURROGATE}]}, "items[0].response"),
    ("/v1/score", {"model": SCALAR, "items": [{"messages": [{"role": "user", "content": SURROGATE},
                                                            {"role": "assistant", "content": "x"}]}]},
     "items[0].messages[0].content"),
    ("/v1/compare", {"model": SCALAR, "prompt": SURROGATE, "responses": ["a", "b"]}, "prompt"),
    ("/v1/compare", {"model": SCALAR, "prompt": "q", "responses": ["a", SURROGATE]}, "responses[1]"),
    ("/v1/rerank", {"model": SCALAR, "query": "q", "documents": [SURROGATE]}, "documents[0]"),
    ("/v1/steps", {"model": PRM, "items": [{"prompt": "q", "steps": ["a", SURROGATE]}]}, "items[0].steps[1]"),
    ("/get_reward", {"model": SCALAR, "query": [SURROGATE]}, "query[0]"),
    ("/pooling", {"model": SCALAR, "input": SURROGATE}, "input[0]"),
    ("/classify", {"model": SCALAR, "messages": [{"role": "user", "content": SURROGATE}]}, "messages[0].content"),
    ("/score", {"model": SCALAR, "text_1": "q", "text_2": SURROGATE}, "text_2[0]"),
])
def test_a_lone_surrogate_is_422_naming_the_field(path, body, field, http):
    error = assert_error(post_ascii(http, path, body), 422, "invalid_input", field)
    assert "surrogate" in error["message"]


def test_a_lone_surrogate_beside_good_items_names_only_its_own(http):
    body = {"model": SCALAR, "items": [{"prompt": "fine", "response": "fine"}, {"prompt": SURROGATE, "response": "x"}]}
    assert_error(post_ascii(http, "/v1/score", body), 422, "invalid_input", "items[1].prompt")


KSERVE_TEXT = [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["a"]},
               {"name": "response", "datatype": "BYTES", "shape": [1], "data": ["b"]}]


@pytest.mark.parametrize(("extra", "field"), [
    ({"parameters": "x"}, "parameters"),
    ({"parameters": [1]}, "parameters"),
    ({"outputs": 5}, "outputs"),
    ({"outputs": [{"name": "score", "parameters": "binary"}]}, "outputs[0].parameters"),
])
def test_kserve_parameters_of_the_wrong_type_are_400(extra, field, http):
    response = http.post(f"/v2/models/{SCALAR}/infer", json={"inputs": KSERVE_TEXT, **extra})
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(f"{field}:")


def test_kserve_input_parameters_of_the_wrong_type_are_400(http):
    inputs = [{**KSERVE_TEXT[0], "parameters": "x"}, KSERVE_TEXT[1]]
    response = http.post(f"/v2/models/{SCALAR}/infer", json={"inputs": inputs})
    assert response.status_code == 400 and response.json()["error"].startswith("inputs[0].parameters:")


def test_json_nested_past_the_parsers_depth_is_400(http):
    deep = "[" * 100_000 + "]" * 100_000
    for path in (f"/v2/models/{SCALAR}/infer", "/v1/score"):
        assert http.post(path, content=deep, headers={"content-type": "application/json"}).status_code == 400
    data = "[" * 50_000 + '"x"' + "]" * 50_000
    body = '{"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ' + data + "}]}"
    response = http.post(f"/v2/models/{SCALAR}/infer", content=body)
    assert response.status_code == 400 and "nests too deeply" in response.json()["error"]


def test_deeply_nested_steps_json_over_kserve_grpc_is_invalid_argument(live):
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{live[2]}")
    try:
        tensors = {"prompt": np.array([b"q"], dtype=np.object_),
                   "steps_json": np.array([("[" * 100_000 + "]" * 100_000).encode()], dtype=np.object_)}
        inputs = []
        for name, array in tensors.items():
            tensor = triton_grpc.InferInput(name, list(array.shape), "BYTES")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        with pytest.raises(InferenceServerException) as raised:
            client.infer(PRM, inputs)
        assert raised.value.status() == "StatusCode.INVALID_ARGUMENT" and "steps_json[0]" in raised.value.message()
    finally:
        client.close()


def test_a_nan_threshold_is_refused(live):
    http, channel, _ = live
    item = {"prompt": "q", "steps": ["a"]}
    response = http.post("/v1/steps", content=json.dumps({"model": PRM, "items": [item], "threshold": float("nan")}),
                         headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_request", "threshold")
    with pytest.raises(grpc.RpcError) as raised:
        pb_grpc.RewardServiceStub(channel).Steps(pb.StepsRequest(
            model=PRM, items=[pb.Item(steps=pb.StepsItem(prompt="q", steps=["a"]))], threshold=float("nan")))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "threshold" in raised.value.details()


@pytest.mark.parametrize("payload", [b"\xff\xfe\x00garbage", bytes([0x0A, 0x05, 0x0A, 0x03, 0xFF, 0xFE, 0xFD])],
                         ids=["garbage", "invalid utf-8"])
def test_bytes_that_are_not_the_message_are_invalid_argument(payload, live):
    channel = live[1]
    identity = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    calls = [(channel.unary_unary("/rewardserve.v1.RewardService/Score", **identity), payload),
             (channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", **identity), payload),
             (channel.stream_stream("/rewardserve.v1.RewardService/ScoreStream", **identity), iter([payload]))]
    for call, request in calls:
        with pytest.raises(grpc.RpcError) as raised:
            result = call(request, timeout=30)
            list(result) if not isinstance(result, bytes) else None
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
        assert "is not a valid" in raised.value.details()


def test_booleans_are_not_token_ids(http):
    assert_error(http.post("/v1/score", json={"model": SCALAR, "items": [{"input_ids": [True, 5]}]}), 422,
                 "invalid_request", "items[0].input_ids[0]")
    assert_error(http.post("/v1/rerank", json={"model": SCALAR, "documents": [{"input_ids": [1, False]}]}), 422,
                 "invalid_request", "documents[0].input_ids[1]")


def test_uint64_ids_past_int64_are_400_not_wrapped(http):
    raw = np.array([[2**63 + 1, 5]], dtype="<u8").tobytes()
    header = json.dumps({"inputs": [{"name": "input_ids", "datatype": "UINT64", "shape": [1, 2],
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    response = http.post(f"/v2/models/{SCALAR}/infer", content=header + raw,
                         headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400 and response.json()["error"].startswith("input_ids:")


def test_405_says_which_methods_are_allowed(http):
    response = http.get("/v1/score")
    assert response.status_code == 405 and response.headers["allow"] == "POST"


def test_error_messages_do_not_quote_huge_inputs(http):
    role = "r" * 100_000
    item = {"messages": [{"role": role, "content": "hi"}, {"role": "assistant", "content": "x"}]}
    error = assert_error(http.post("/v1/score", json={"model": SCALAR, "items": [item]}), 422, "invalid_input",
                         "items[0].messages[0].role")
    assert len(error["message"]) < 1100 and error["message"].endswith("characters)")


def test_kserve_routes_document_their_errors(http):
    paths = http.get("/openapi.json").json()["paths"]
    infer = paths["/v2/models/{name}/infer"]["post"]["responses"]
    assert {"200", "400", "404", "503"} <= set(infer)
    assert infer["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/KServeError")


# ---- bounded work ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_body(served):
    """A server whose request bodies are bounded at 64 KiB."""
    with served([SCALAR], grpc=False, server={"max_request_bytes": 64 * 1024}) as server:
        yield server.http


def test_a_body_past_the_limit_is_413_before_it_is_read(small_body):
    big = {"model": SCALAR, "items": [{"prompt": "p", "response": "x" * 70_000}]}
    assert_error(small_body.post("/v1/score", json=big), 413, "request_too_large")
    fits = {"model": SCALAR, "items": [{"prompt": "p", "response": "fine"}]}
    assert small_body.post("/v1/score", json=fits).status_code == 200


def test_a_chunked_body_stops_being_read_at_the_limit(small_body):
    def chunks():
        yield b'{"model": "llama-scalar", "items": [{"prompt": "p", "response": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}]}'

    response = small_body.post("/v1/score", content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413, "request_too_large")


def test_a_compressed_body_is_not_inflated_past_the_limit(small_body):
    import gzip

    bomb = gzip.compress(b"[" + b" " * (10 * 2**20) + b"]")  # 10 MiB of JSON in ~10 KiB
    assert len(bomb) < 64 * 1024
    response = small_body.post(f"/v2/models/{SCALAR}/infer", content=bomb, headers={"content-encoding": "gzip"})
    assert response.status_code == 413, response.text
    body = json.dumps({"inputs": KSERVE_TEXT}).encode()
    fine = small_body.post(f"/v2/models/{SCALAR}/infer", content=gzip.compress(body),
                           headers={"content-encoding": "gzip"})
    assert fine.status_code == 200, fine.text


# ---- compressed bodies ----------------------------------------------------------------------

# A body each POST route takes; a route missing here (a new one) is sent `{}`, whose answer,
# an error most likely, must still be the same compressed or not.
POST_BODIES = {
    "/v1/score": {"model": SCALAR, "items": [{"prompt": "q", "response": "a"}]},
    "/v1/compare": {"model": SCALAR, "prompt": "q", "responses": ["a", "b"]},
    "/v1/rerank": {"model": SCALAR, "query": "q", "documents": ["a", "b"]},
    "/rerank": {"model": SCALAR, "query": "q", "documents": ["a", "b"]},
    "/v2/rerank": {"model": SCALAR, "query": "q", "documents": ["a", "b"]},
    "/v1/steps": {"model": PRM, "items": [{"prompt": "q", "steps": ["a", "b"]}]},
    "/get_reward": {"model": SCALAR, "query": ["q a"]},
    "/pooling": {"model": SCALAR, "input": "q a"},
    "/classify": {"model": SCALAR, "input": "q a"},
    "/score": {"model": SCALAR, "text_1": "q", "text_2": ["a", "b"]},
    "/v2/models/{name}/infer": {"inputs": KSERVE_TEXT},
    "/v2/models/{name}/versions/{version}/infer": {"inputs": KSERVE_TEXT},
}
VOLATILE = ("id", "created")


def post_routes() -> list[str]:
    """Every POST route the app serves (the included routers' too), by its template."""
    def walk(routes):
        for route in routes:
            included = getattr(route, "original_router", None)  # FastAPI's included router
            yield from walk(included.routes) if included is not None else [route]

    app = create_app(Settings(models=[ModelConfig(name=SCALAR, path="/unused")], server={"grpc_port": 0}))
    paths = sorted({route.path_format for route in walk(app.routes) if "POST" in getattr(route, "methods", ())})
    assert "/v1/score" in paths and "/v2/models/{name}/infer" in paths
    return paths


MODEL_CONTROL = ("/load", "/unload", "/reload")  # sent for a name no model has: they change nothing here


def called(path: str) -> str:
    return path.format(name="no-such-model" if path.endswith(MODEL_CONTROL) else SCALAR, version="1")


def comparable(response: httpx.Response) -> tuple[int, object]:
    body = response.json()
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in VOLATILE}
    return response.status_code, body


@pytest.mark.parametrize("path", post_routes())
def test_every_post_route_takes_a_compressed_body(path, http):
    import gzip
    import zlib

    raw = json.dumps(POST_BODIES.get(path, {})).encode()
    plain = http.post(called(path), content=raw, headers={"content-type": "application/json"})
    if path in POST_BODIES:
        assert plain.status_code == 200, plain.text
    for encoding, packed in (("gzip", gzip.compress(raw)), ("deflate", zlib.compress(raw))):
        got = http.post(called(path), content=packed,
                        headers={"content-type": "application/json", "content-encoding": encoding})
        assert comparable(got) == comparable(plain), (encoding, got.text)


@pytest.mark.parametrize("path", post_routes())
def test_every_post_route_refuses_an_unknown_encoding_by_name(path, http):
    raw = json.dumps(POST_BODIES.get(path, {})).encode()
    for encoding in ("br", "zstd", "gzip, br"):
        refused = http.post(called(path), content=raw,
                            headers={"content-type": "application/json", "content-encoding": encoding})
        assert_error(refused, 415, "unsupported_media_type", "Content-Encoding")
        assert repr(encoding) in refused.json()["error"]["message"]


def test_a_compressed_body_is_inflated_as_it_streams_and_must_be_whole(http):
    import gzip

    raw = json.dumps(POST_BODIES["/v1/score"]).encode()
    packed = gzip.compress(raw)
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    streamed = http.post("/v1/score", content=iter([packed[i:i + 7] for i in range(0, len(packed), 7)]),
                         headers=headers)  # chunked, in pieces that split gzip's header and blocks
    assert comparable(streamed) == comparable(http.post("/v1/score", json=POST_BODIES["/v1/score"]))
    for broken, why in ((packed[:-9], "ends before"), (b"not gzip", "cannot decompress"),
                        (packed + packed, "follow the end")):
        for path in ("/v1/score", f"/v2/models/{SCALAR}/infer"):
            response = http.post(path, content=broken, headers=headers)
            assert_error(response, 400, "invalid_request")
            assert why in response.json()["error"]["message"]


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_huge_text_is_cut_before_tokenizing_and_scores_the_same(side, tiny_model_dirs, http):
    """The served score of a text far past max_length equals the reference that tokenizes
    the whole text; without truncation it is refused naming the field."""

    whole = RewardModel.load(SCALAR, tiny_model_dirs[SCALAR])
    huge = " ".join(f"word{i % 97} and more text" for i in range(20_000))
    assert len(huge) > 10 * whole.encoder.max_text_chars
    whole.encoder.max_text_chars = 10**12  # the reference: no cut, every character tokenized
    expected = whole.score([TextPair("Summarize.", huge)], side)[0]
    body = {"model": SCALAR, "items": [{"prompt": "Summarize.", "response": huge}], "truncate": side}
    result = http.post("/v1/score", json=body).json()["results"][0]
    assert result["truncated"] and result["num_tokens"] == expected.num_tokens
    assert result["score"] == pytest.approx(expected.score, abs=1e-5)
    refused = {"model": SCALAR, "items": [{"prompt": "Summarize.", "response": huge}]}
    assert_error(http.post("/v1/score", json=refused), 422, "input_too_long", "items[0].response")



def test_a_huge_vllm_input_is_cut_before_tokenizing_and_scores_the_same(tiny_model_dirs, http):
    whole = RewardModel.load(SCALAR, tiny_model_dirs[SCALAR])
    huge = " ".join(f"word{i % 97} and more text" for i in range(20_000))
    ids = whole.encoder.tokenizer(huge, add_special_tokens=True)["input_ids"]
    expected = whole.score([TokenIds(tuple(ids))], "left")[0]
    body = http.post("/classify", json={"model": SCALAR, "input": huge, "use_activation": False}).json()
    assert body["data"][0]["truncated"]
    assert body["data"][0]["probs"][0] == pytest.approx(expected.score, abs=1e-5)


def test_compare_sends_its_quadratic_matrix_only_when_small_or_asked(http):
    many = {"model": SCALAR, "prompt": "Pick one.", "responses": [f"answer {i}" for i in range(70)]}
    unasked = http.post("/v1/compare", json=many).json()
    assert "pairwise" not in unasked and len(unasked["results"]) == 70 and unasked["winner"] is not None
    asked = http.post("/v1/compare", json={**many, "pairwise": True}).json()
    assert len(asked["pairwise"]) == 70 and all(len(row) == 70 for row in asked["pairwise"])
    few = {"model": SCALAR, "prompt": "Pick one.", "responses": ["a", "b"]}
    assert len(http.post("/v1/compare", json=few).json()["pairwise"]) == 2
    assert "pairwise" not in http.post("/v1/compare", json={**few, "pairwise": False}).json()
    too_many = {**many, "responses": ["x"] * 513, "pairwise": True}
    assert_error(http.post("/v1/compare", json=too_many), 422, "invalid_request", "pairwise")


def test_json_routes_take_json_only(http):
    simple = http.post("/v1/admin/canary", content='{"model": "llama-scalar"}', headers={"content-type": "text/plain"})
    assert_error(simple, 415, "unsupported_media_type", "Content-Type")
    form = http.post("/v1/score", content="items=1", headers={"content-type": "application/x-www-form-urlencoded"})
    assert_error(form, 415, "unsupported_media_type", "Content-Type")
    body = json.dumps({"model": SCALAR, "items": [{"prompt": "p", "response": "r"}]})
    typed = http.post("/v1/score", content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert typed.status_code == 200, typed.text
