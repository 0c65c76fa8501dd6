"""on_item_error "item": an item that cannot be scored (bad input, or the model failing on
it) gets its own error in `results` while its batch-mates get the scores an unbatched
reference forward gives them, the same over HTTP, gRPC and both client transports. The
default stays as before: the first bad item fails the request."""

from __future__ import annotations

import grpc
import pytest
from http_helpers import assert_error

from models.inputs import TextPair, TokenIds
from service.client import RewardClient
from service.grpc.proto import rewardserve_pb2 as pb
from service.grpc.proto import rewardserve_pb2_grpc as pb_grpc
from service.protocol.scoring import FailedItem, ItemResult

SCALAR = "llama-scalar"
POISON_ID = 397  # the model "fails" on any batch holding this token id

GOOD = [{"prompt": "What is 2+2?", "response": "4"}, {"input_ids": [5, 6, 7, 8]},
        {"prompt": "Name a colour.", "response": "Blue."}]
# (item, field of its error, http_status): bad input, each a different check, and a model failure
BAD = [({"input_ids": [5, 10**7]}, "items[1].input_ids[1]", 422),
       ({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
        "items[3].messages[0].role", 422),
       ({"input_ids": [9, POISON_ID, 9]}, "items[5]", 500)]
ITEMS = [GOOD[0], BAD[0][0], GOOD[1], BAD[1][0], GOOD[2], BAD[2][0]]
GOOD_AT, BAD_AT = (0, 2, 4), (1, 3, 5)


@pytest.fixture(scope="module")
def live(served):
    """(URL, HTTP client, gRPC port) of a server of SCALAR whose forward fails on POISON_ID."""
    with served([SCALAR], cache={"max_bytes": 0}) as server:
        url, http, app = server.url, server.http, server.app
        model = app.state.registry.runners[SCALAR].model
        real_forward = model.forward

        def forward(batch):
            if any(POISON_ID in enc.input_ids for enc in batch):
                raise RuntimeError("device fault")
            return real_forward(batch)

        model.forward = forward
        try:
            yield url, http, app.state.grpc_port
        finally:
            model.forward = real_forward


@pytest.fixture(scope="module")
def references(load_tiny):
    model = load_tiny(SCALAR)
    inputs = [TextPair(GOOD[0]["prompt"], GOOD[0]["response"]), TokenIds(tuple(GOOD[1]["input_ids"])),
              TextPair(GOOD[2]["prompt"], GOOD[2]["response"])]
    return [model.score([item])[0].score for item in inputs]


def test_the_default_fails_the_request_on_its_first_bad_item(live):
    _, http, _ = live
    assert_error(http.post("/v1/score", json={"items": ITEMS}), 422, "invalid_input", "items[1].input_ids[1]")


def test_http_answers_each_bad_item_beside_its_batch_mates_scores(live, references):
    _, http, _ = live
    response = http.post("/v1/score", json={"items": ITEMS, "on_item_error": "item"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(len(ITEMS)))
    for at, reference in zip(GOOD_AT, references):
        assert results[at]["score"] == pytest.approx(reference, abs=1e-5)
    for at, (_, field, status) in zip(BAD_AT, BAD):
        assert set(results[at]) == {"index", "error"}
        error = results[at]["error"]
        assert (error["field"], error["http_status"]) == (field, status)
        assert error["message"].startswith(field)
    assert results[5]["error"]["code"] == "inference_failed"
    good_tokens = sum(results[at]["num_tokens"] for at in GOOD_AT)
    assert response.json()["usage"]["total_tokens"] == good_tokens


def test_a_request_whose_items_all_fail_is_still_answered_item_by_item(live):
    _, http, _ = live
    response = http.post("/v1/score", json={"items": [bad for bad, _, _ in BAD], "on_item_error": "item"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["error"]["http_status"] for r in body["results"]] == [422, 422, 500]
    assert body["usage"]["total_tokens"] == 0


def test_grpc_answers_each_bad_item_beside_its_batch_mates_scores(live, references):
    _, _, grpc_port = live
    items = []
    for item in ITEMS:
        if "input_ids" in item:
            items.append(pb.Item(tokens=pb.TokensItem(input_ids=item["input_ids"])))
        elif "messages" in item:
            items.append(pb.Item(chat=pb.ChatItem(messages=[pb.Message(**m) for m in item["messages"]])))
        else:
            items.append(pb.Item(text=pb.TextItem(**item)))
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.RewardServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Score(pb.ScoreRequest(items=items), timeout=60)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        response = stub.Score(pb.ScoreRequest(items=items, on_item_error="item"), timeout=60)
    results = list(response.results)
    for at, reference in zip(GOOD_AT, references):
        assert not results[at].HasField("error")
        assert results[at].score == pytest.approx(reference, abs=1e-5)
    for at, (_, field, status) in zip(BAD_AT, BAD):
        error = results[at].error
        assert (results[at].index, error.field, error.http_status) == (at, field, status)
    assert results[1].error.grpc_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert results[5].error.grpc_code == grpc.StatusCode.INTERNAL.value[0]


def test_both_client_transports_give_the_same_per_item_results(live):
    url, _, grpc_port = live
    answers = []
    for target in (url, f"grpc://127.0.0.1:{grpc_port}"):
        with RewardClient(target) as client:
            answers.append(client.score(ITEMS, on_item_error="item").results)
    over_http, over_grpc = answers
    assert [type(r) for r in over_http] == [ItemResult, FailedItem, ItemResult, FailedItem, ItemResult, FailedItem]
    assert [type(r) for r in over_grpc] == [type(r) for r in over_http]
    for a, b in zip(over_http, over_grpc):
        if isinstance(a, FailedItem):
            assert a == b
        else:
            assert (a.index, a.num_tokens) == (b.index, b.num_tokens)
            assert a.score == pytest.approx(b.score, abs=1e-5)
