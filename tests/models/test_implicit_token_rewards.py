"""An implicit model's per-token rewards on request (`token_rewards: true`), served over HTTP
and gRPC and read by the light client: each response token's id and reward, the response's
start among the item's tokens, the terms whose sum is the score; cached apart from the
results without them; refused, naming the field, where there are none."""

from __future__ import annotations

import grpc
import pytest
import torch
from test_implicit import BETA, ITEMS, RewardBench, dirs, specs  # noqa: F401 - dirs is a fixture

from service.client import RewardClient
from service.config import ModelConfig
from service.grpc.proto import rewardserve_pb2 as pb
from service.grpc.proto import rewardserve_pb2_grpc as pb_grpc
from service.protocol.errors import FIELD_KEY

TOL = 1e-5
PAIRS = [item for item in ITEMS if "prompt" in item]


@pytest.fixture(scope="module")
def server(served, dirs):  # noqa: F811 - the imported fixture
    models = [ModelConfig(name=name, path=str(dirs["policy"]), spec=specs(dirs)[name]) for name in ("dpo", "free-avg")]
    scalar = {"kind": "scalar", "reward_logit_index": 0}  # the same LM read as a scalar model
    models.append(ModelConfig(name="scalar", path=str(dirs["policy"]), spec=scalar))
    with served(models, batching={"max_wait_ms": 20}, timeout=300) as live:
        yield live


@pytest.fixture(scope="module")
def rewardbench(dirs) -> RewardBench:  # noqa: F811 - the imported fixture
    return RewardBench(dirs)


def _score(server, **body) -> dict:
    response = server.http.post("/v1/score", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_token_rewards_are_the_response_tokens_terms_of_the_score(server, rewardbench):
    body = _score(server, model="dpo", items=ITEMS, token_rewards=True, cache="bypass")
    for item, result in zip(ITEMS, body["results"], strict=True):
        dense = result["token_rewards"]
        ids, start = rewardbench.ids_and_start(item)
        assert dense["start"] == start and dense["token_ids"] == ids[0, start:].tolist()
        assert sum(dense["values"]) == pytest.approx(result["score"], rel=TOL, abs=TOL)
        with torch.no_grad():
            terms = BETA * (rewardbench.response_logps(rewardbench.policy, ids, start)
                            - rewardbench.response_logps(rewardbench.reference, ids, start))
        assert dense["values"] == pytest.approx(terms.tolist(), abs=TOL)
    reference_free = _score(server, model="free-avg", items=PAIRS, token_rewards=True)["results"]
    for result in reference_free:  # avg: their mean is the score
        values = result["token_rewards"]["values"]
        assert sum(values) / len(values) == pytest.approx(result["score"], rel=TOL, abs=TOL)


def test_the_cache_answers_each_with_what_it_asked(server):
    items = [{"prompt": "Cache me?", "response": "Only with my token rewards."}]
    plain = _score(server, model="dpo", items=items)["results"][0]
    assert "token_rewards" not in plain and not plain.get("cached")
    dense = _score(server, model="dpo", items=items, token_rewards=True)["results"][0]
    assert not dense.get("cached") and dense["token_rewards"]["values"]  # a plain entry does not answer it
    again = _score(server, model="dpo", items=items, token_rewards=True)["results"][0]
    assert again["cached"] and again["token_rewards"] == dense["token_rewards"] and again["score"] == dense["score"]
    plain_again = _score(server, model="dpo", items=items)["results"][0]
    assert plain_again["cached"] and "token_rewards" not in plain_again


@pytest.mark.parametrize(("body", "reason"), [
    ({"model": "scalar"}, "implicit models only, not to a scalar model"),
    ({"model": "dpo", "normalize": "zscore"}, "without normalize"),
])
def test_refused_where_there_are_none_naming_the_field(server, body, reason):
    response = server.http.post("/v1/score", json={**body, "items": PAIRS[:1], "token_rewards": True})
    assert response.status_code == 422 and reason in response.text
    assert response.json()["error"]["field"] == "token_rewards"
    with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.RewardServiceStub(channel).Score(pb.ScoreRequest(
            items=[pb.Item(text=pb.TextItem(**PAIRS[0]))], token_rewards=True, **body), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason in caught.value.details()
    assert dict(caught.value.trailing_metadata())[FIELD_KEY] == "token_rewards"


def test_grpc_and_the_client_carry_them(server):
    want = _score(server, model="dpo", items=PAIRS, token_rewards=True)["results"]
    with grpc.insecure_channel(server.grpc_target) as channel:
        reply = pb_grpc.RewardServiceStub(channel).Score(pb.ScoreRequest(
            model="dpo", items=[pb.Item(text=pb.TextItem(**item)) for item in PAIRS], token_rewards=True), timeout=60)
    for result, expected in zip(reply.results, want, strict=True):
        dense = result.token_rewards
        assert (dense.start, list(dense.token_ids), list(dense.values)) == tuple(
            expected["token_rewards"][key] for key in ("start", "token_ids", "values"))
    for url in (server.url, f"grpc://{server.grpc_target}"):
        with RewardClient(url, model="dpo") as client:
            results = client.score(PAIRS, token_rewards=True).results
            assert [r.token_rewards.model_dump() for r in results] == [r["token_rewards"] for r in want]
            assert all(r.token_rewards is None for r in client.score(PAIRS).results)
