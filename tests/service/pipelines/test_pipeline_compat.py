"""A pipeline behind the compatibility endpoints: OpenRLHF's /get_reward (each model
component given the inputs /get_reward gives that model alone, the rules reading the
response against `labels`, every component in extra_logs) and vLLM's /classify and /score."""

from __future__ import annotations

import math

import pytest
from http_helpers import assert_error
from pipeline_helpers import ACCURACY, DEFAULT, FORMAT, ITEMS, MEMBERS, NAME, pipeline

PROMPTS = [item["prompt"] for item in ITEMS]
RESPONSES = [" " + item["response"] for item in ITEMS]
LABELS = [item["ground_truth"] for item in ITEMS]
CHECKED = "checked"  # a model's score plus a format rule: no ground truth needed


@pytest.fixture(scope="module")
def server(served, tmp_path_factory):
    config = pipeline(tmp_path_factory.mktemp("functions"))
    checked = {"name": CHECKED, "components": [
        {"name": "rm", "type": "model", "model": "llama-scalar"},
        {"name": "fmt", "type": "rule", "rule": "format", "params": {"must_match": ["\\\\boxed\\{"]}}]}
    with served(MEMBERS, grpc=False, pipelines=[config, checked]) as server:
        yield server


@pytest.fixture(scope="module")
def eos(load_tiny) -> str:
    return load_tiny("llama-scalar").encoder.tokenizer.eos_token


def ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def expected_rewards(rm: list[float], members: list[list[float]]) -> list[float]:
    ens = [sum(column) / len(column) for column in zip(*members, strict=True)]
    return [0.5 * r + 0.25 * e + f + 2.0 * a for r, e, f, a in zip(rm, ens, FORMAT, ACCURACY, strict=True)]


@pytest.mark.parametrize("mode", ["serve_rm", "split"])
def test_get_reward_scores_a_pipeline_as_its_models_and_rules(server, eos, mode):
    queries = [p + r + eos for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    body = {"query": queries, "prompts": PROMPTS, "labels": LABELS, "mode": mode}
    alone = {m: ok(server.http.post("/get_reward", json={**body, "model": m}))["scores"] for m in MEMBERS}
    got = ok(server.http.post("/get_reward", json={**body, "model": NAME}))
    assert got["rewards"] == got["scores"]
    assert got["scores"] == pytest.approx(expected_rewards(alone["llama-scalar"], list(alone.values())), abs=1e-6)
    logs = got["extra_logs"]
    assert set(logs) == {f"pipeline/{c}" for c in ("rm", "ens", "fmt", "acc", "user")}
    assert logs["pipeline/rm"] == pytest.approx(alone["llama-scalar"], abs=1e-6)
    assert logs["pipeline/fmt"] == FORMAT and logs["pipeline/acc"] == ACCURACY
    assert logs["pipeline/user"] == [DEFAULT] * len(ITEMS)


def test_get_reward_rules_read_the_query_without_prompts(server, eos):
    """Without prompts the rules read the whole query, its padding and EOS stripped."""
    queries = ["Q: 2 + 3? A: \\boxed{5}" + eos * 3, "no box here" + eos]
    got = ok(server.http.post("/get_reward", json={"query": queries, "labels": ["5", "5"], "model": NAME}))
    assert got["extra_logs"]["pipeline/fmt"] == [1.0, 0.0]
    assert got["extra_logs"]["pipeline/acc"] == [1.0, 0.0]


def test_get_reward_pipeline_default_from_the_query_string(server):
    response = server.http.post(f"/get_reward?model={NAME}", json={"query": ["\\boxed{5}"], "labels": ["5"]})
    assert ok(response)["extra_logs"]["pipeline/acc"] == [1.0]


@pytest.mark.parametrize(("body", "field"), [
    ({"query": ["a", "b"], "labels": ["1"]}, "labels"),
    ({"query": ["\\boxed{1}"]}, "labels[0]"),
    ({"query": ["\\boxed{1}"], "labels": ["1"], "normalize": "zscore"}, "normalize"),
    ({"query": ["Hi there", "Yo"], "prompts": ["Hi", "Hey"], "labels": ["1", "1"]}, "query[1]"),
])
def test_get_reward_pipeline_errors_name_the_field(server, body, field):
    assert_error(server.http.post("/get_reward", json={**body, "model": NAME}), 422, field=field)


def test_classify_a_pipeline(server):
    inputs = [p + r for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    body = {"input": inputs, "use_activation": False}
    alone = [d["probs"][0] for d in ok(server.http.post("/classify", json={**body, "model": "llama-scalar"}))["data"]]
    got = ok(server.http.post("/classify", json={**body, "model": CHECKED}))
    assert got["model"] == CHECKED
    assert [d["probs"][0] for d in got["data"]] == pytest.approx([rm + f for rm, f in zip(alone, FORMAT, strict=True)],
                                                                 abs=1e-6)
    activated = ok(server.http.post("/classify", json={"input": inputs, "model": CHECKED}))["data"]
    assert [d["probs"][0] for d in activated] == pytest.approx(
        [1 / (1 + math.exp(-d["probs"][0])) for d in got["data"]], abs=1e-12)


def test_vllm_score_a_pipeline(server):
    body = {"text_1": PROMPTS, "text_2": RESPONSES}
    alone = [d["score"] for d in ok(server.http.post("/score", json={**body, "model": "llama-scalar"}))["data"]]
    got = ok(server.http.post("/score", json={**body, "model": CHECKED}))["data"]
    assert [d["score"] for d in got] == pytest.approx([rm + f for rm, f in zip(alone, FORMAT, strict=True)], abs=1e-6)


@pytest.mark.parametrize(("body", "field"), [
    ({"model": CHECKED, "input": [[1, 2, 3]]}, "input[0]"),  # token ids carry no text for the rules
    ({"model": NAME, "input": ["\\boxed{5}"]}, "input[0]"),  # math_verify needs a ground truth
])
def test_classify_pipeline_errors_name_the_input(server, body, field):
    assert_error(server.http.post("/classify", json=body), 422, field=field)
