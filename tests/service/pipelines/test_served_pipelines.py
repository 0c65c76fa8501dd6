"""Pipelines served like models, over a live server: a pipeline of one model component gives
that model's score exactly, ensembles aggregate their members' own scores, transforms,
weights and gates combine as configured, and a failing component is reported per item."""

from __future__ import annotations

import math
import statistics

import pytest
from http_helpers import assert_error, poll

ITEMS = [
    {"prompt": "What is 2 + 3?", "response": "2 + 3 = 5. The answer is \\boxed{5}.", "ground_truth": "5"},
    {"prompt": "What is 7 * 6?", "response": "<think>7 * 6 is 42</think> The answer is 42.", "ground_truth": "42"},
    {"prompt": "Name a colour.", "response": "Blue.", "ground_truth": "red"},
]


def scores(http, model: str, items=ITEMS) -> list[dict]:
    response = http.post("/v1/score", json={"model": model, "items": items})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def component(name: str, kind: str = "model", **fields) -> dict:
    return {"name": name, "type": kind, **fields}


def test_one_model_pipeline_equals_the_models_score(served):
    pipeline = {"name": "rm-only", "components": [component("rm", model="llama-scalar")]}
    with served(["llama-scalar"], pipelines=[pipeline]) as server:
        direct = scores(server.http, "llama-scalar")
        piped = scores(server.http, "rm-only")
    for d, p in zip(direct, piped, strict=True):
        assert p["score"] == d["score"]
        assert p["dimensions"] == {"rm": d["score"]}
        assert p["components"] == {"rm": {"value": d["score"], "status": "ok"}}
        assert p["num_tokens"] == d["num_tokens"]


@pytest.mark.parametrize("aggregate", ["mean", "min", "median", "lcb"])
def test_ensembles_aggregate_their_members_scores(served, aggregate):
    members = ["llama-scalar", "qwen2-scalar", "bert-scalar"]
    pipeline = {"name": "ens", "components": [
        component("ens", "ensemble", models=members, aggregate=aggregate, k=0.5, weight=2.0)]}
    with served(members, pipelines=[pipeline]) as server:
        member_scores = [[r["score"] for r in scores(server.http, m)] for m in members]
        piped = scores(server.http, "ens")
    for i, result in enumerate(piped):
        values = [column[i] for column in member_scores]
        spread = statistics.pstdev(values)
        expected = {"mean": statistics.fmean(values), "min": min(values), "median": statistics.median(values),
                    "lcb": statistics.fmean(values) - 0.5 * spread}[aggregate]
        assert result["components"]["ens"]["value"] == pytest.approx(expected, abs=1e-12)
        assert result["components"]["ens"]["spread"] == pytest.approx(spread, abs=1e-12)
        assert result["score"] == pytest.approx(2.0 * expected, abs=1e-12)
        assert result["uncertainty"] == pytest.approx(2.0 * spread, abs=1e-12)


def test_transforms_weights_and_a_dimension_combine(served):
    pipeline = {"name": "mix", "components": [
        component("sig", model="llama-scalar", transform="sigmoid", weight=0.5),
        component("dim", model="llama-helpsteer", dimension="helpfulness",
                  transform=[{"type": "affine", "scale": 3, "shift": 1}, {"type": "clip", "low": -1, "high": 1}])]}
    with served(["llama-scalar", "llama-helpsteer"], pipelines=[pipeline]) as server:
        scalar = scores(server.http, "llama-scalar")
        multi = scores(server.http, "llama-helpsteer")
        piped = scores(server.http, "mix")
    for s, m, p in zip(scalar, multi, piped, strict=True):
        sig = 1 / (1 + math.exp(-s["score"]))
        dim = min(1.0, max(-1.0, 3 * m["dimensions"]["helpfulness"] + 1))
        assert p["dimensions"] == pytest.approx({"sig": sig, "dim": dim}, abs=1e-12)
        assert p["score"] == pytest.approx(0.5 * sig + dim, abs=1e-12)


def test_pipelines_are_listed_as_models(served):
    pipeline = {"name": "listed", "components": [component("rm", model="llama-scalar"),
                                                 component("len", "rule", rule="repetition", weight=0.1)]}
    with served(["llama-scalar"], pipelines=[pipeline]) as server:
        cards = {c["name"]: c for c in server.http.get("/v1/models").json()["models"]}
        detail = server.http.get("/v1/models/listed").json()
        health = server.http.get("/health/ready").json()
    assert cards["listed"]["kind"] == "pipeline" and cards["listed"]["status"] == "ready"
    assert cards["listed"]["dimensions"] == ["rm", "len"]
    assert len(cards["listed"]["revision"]) == 64
    assert detail["id"] == "listed" and detail["kind"] == "pipeline"
    assert health["models"]["listed"] == "ready"


def test_a_pipeline_refuses_per_request_normalize(served):
    pipeline = {"name": "p", "components": [component("rm", model="llama-scalar")]}
    with served(["llama-scalar"], pipelines=[pipeline]) as server:
        response = server.http.post("/v1/score", json={"model": "p", "items": ITEMS, "normalize": "zscore"})
    assert_error(response, 422, field="normalize")


def test_a_pipeline_whose_rule_params_do_not_fit_fails_and_says_why(served):
    broken = {"name": "broken", "components": [
        component("rm", model="llama-scalar"),
        component("fmt", "rule", rule="format", params={"must_macth": ["x"]})]}
    with served(["llama-scalar"], pipelines=[broken], ready=False) as server:
        poll(lambda: server.http.get("/v1/models/llama-scalar"), lambda r: r.json()["status"] != "loading")
        card = next(c for c in server.http.get("/v1/models").json()["models"] if c["name"] == "broken")
        response = server.http.post("/v1/score", json={"model": "broken", "items": ITEMS})
        direct = server.http.post("/v1/score", json={"model": "llama-scalar", "items": ITEMS})
    assert card["status"] == "failed" and "must_macth" in card["error"] and "'fmt'" in card["error"]
    assert_error(response, 503, "model_failed", "model")
    assert "must_macth" in response.json()["error"]["message"]
    assert direct.status_code == 200
