"""Pairwise models served over real HTTP on loopback: /v1/score's two modes (vs_reference,
group) against the published computations (tests/pairwise_reference.py) within 1e-5,
several pairs per request and one per request all at once; `Scorer.preferences`, the call
ranking code compares candidates with; and the 422s naming the field."""

from __future__ import annotations

import asyncio
import itertools
from concurrent.futures import ThreadPoolExecutor

import pytest
from http_helpers import assert_error
from model_cards import checkpoints
from pairwise_reference import PairPM, PairRM

from service.client import RewardClient
from service.config import ModelConfig
from service.core.pairwise import PairJob
from service.core.tournament import Game, bradley_terry

TOL = 1e-5
SPECS = {"pairrm": {"kind": "pairwise", "pairwise": {"convention": "pairrm"}},
         "pairpm": {"kind": "pairwise", "pairwise": {"convention": "ab_judge", "score_mode": "group"}}}
PROMPT = "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May. How many in all?"
RESPONSES = ["She sold 48 and then 24, so 72 clips.", "48 clips.", "The answer is 14.",
             "Step 1: add 48 and 24 to get 72. The answer is 72."]
REFERENCE = "72"


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairwise")
    dirs = {"pairrm": checkpoints.pairrm(root / "pairrm"), "pairpm": checkpoints.pair_judge_llama3(root / "pairpm")}
    return dirs, {"pairrm": PairRM(dirs["pairrm"]), "pairpm": PairPM(dirs["pairpm"])}


@pytest.fixture(scope="module")
def server(served, references):
    dirs, _ = references
    models = [ModelConfig(name=name, path=str(dirs[name]), spec=spec) for name, spec in SPECS.items()]
    with served(models + ["llama-scalar"], cache={"max_bytes": 0}, batching={"max_wait_ms": 50},
                timeout=120) as running:
        yield running


def want(references, name: str, a: str, b: str) -> float:
    return references[1][name].preference([{"role": "user", "content": PROMPT}], a, b)


@pytest.mark.parametrize("name", list(SPECS))
def test_vs_reference_scores_match_the_published_computation(server, references, name):
    items = [{"prompt": PROMPT, "response": r, "reference": REFERENCE} for r in RESPONSES]
    response = server.http.post("/v1/score", json={"model": name, "items": items, "pairwise_mode": "vs_reference"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kind"] == "pairwise"
    for result, r in zip(body["results"], RESPONSES, strict=True):
        assert result["score"] == pytest.approx(want(references, name, r, REFERENCE), abs=TOL, rel=0)
        assert result["num_tokens"] > 0


@pytest.mark.parametrize("name", list(SPECS))
def test_group_scores_are_win_rates_within_each_prompt(server, references, name):
    other = {"prompt": "What is 3 + 4?", "response": "7"}
    items = [{"prompt": PROMPT, "response": r} for r in RESPONSES] + [other, {**other, "response": "14"}]
    body = {"model": name, "items": items} | ({"pairwise_mode": "group"} if name == "pairrm" else {})
    response = server.http.post("/v1/score", json=body)
    assert response.status_code == 200, response.text
    scores = [r["score"] for r in response.json()["results"]]
    for i, r in enumerate(RESPONSES):
        rates = [want(references, name, r, o) for j, o in enumerate(RESPONSES) if j != i]
        assert scores[i] == pytest.approx(sum(rates) / len(rates), abs=TOL, rel=0)
    assert scores[-2] + scores[-1] == pytest.approx(1.0, abs=1e-6)


def test_one_pair_per_request_all_at_once(server, references):
    jobs = [(name, r) for name in SPECS for r in RESPONSES]

    def post(job):
        item = {"prompt": PROMPT, "response": job[1], "reference": REFERENCE}
        return server.http.post("/v1/score", json={"model": job[0], "items": [item], "pairwise_mode": "vs_reference"})

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        responses = list(pool.map(post, jobs))
    for (name, r), response in zip(jobs, responses):
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["score"] == pytest.approx(want(references, name, r, REFERENCE),
                                                                        abs=TOL, rel=0)


def test_preferences_compares_index_pairs_in_one_call(server, references):
    scorer = server.app.state.scorer
    loop = server.app.state.loading.get_loop()
    pairs = [(0, 1), (1, 0), (2, 3), (0, 3)]
    for name in SPECS:
        call = scorer.preferences(PairJob(model=name), PROMPT, RESPONSES, pairs)
        got = asyncio.run_coroutine_threadsafe(call, loop).result(timeout=120)
        assert got.probabilities == pytest.approx(
            [want(references, name, RESPONSES[i], RESPONSES[j]) for i, j in pairs], abs=TOL, rel=0)
        # (0, 1) and (1, 0) share their reads: each read's tokens counted once, on the candidate it shows first
        assert got.model == name and all(t > 0 for t in got.tokens) and not any(got.truncated)


@pytest.mark.parametrize(("body", "field"), [
    ({"model": "pairrm", "items": [{"prompt": PROMPT, "response": "72"}]}, "items[0].reference"),
    ({"model": "pairrm", "pairwise_mode": "group", "items": [{"prompt": PROMPT, "response": "72"}]}, "items[0]"),
    ({"model": "pairrm", "items": [{"input_ids": [1, 2, 3]}]}, "items[0]"),
    ({"model": "pairrm", "items": [{"prompt": PROMPT, "response": "72 <|candidate1|>", "reference": "7"}]},
     "items[0]"),
    ({"model": "pairrm", "items": [{"prompt": PROMPT, "response": "72", "reference": "7"}],
      "on_item_error": "item"}, "on_item_error"),
    ({"model": "llama-scalar", "items": [{"prompt": PROMPT, "response": "72", "reference": "7"}]},
     "items[0].reference"),
    ({"model": "llama-scalar", "items": [{"prompt": PROMPT, "response": "72"}], "pairwise_mode": "group"},
     "pairwise_mode"),
])
def test_what_a_mode_cannot_read_is_a_422_naming_the_field(server, body, field):
    assert_error(server.http.post("/v1/score", json=body), 422, field=field)


def test_compare_reads_every_pair_into_the_models_win_matrix(server, references):
    n = len(RESPONSES)
    for name in SPECS:
        response = server.http.post("/v1/compare", json={"model": name, "prompt": PROMPT, "responses": RESPONSES})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["kind"] == "pairwise"
        matrix = body["pairwise"]
        for i, j in itertools.product(range(n), range(n)):
            expected = 0.5 if i == j else want(references, name, RESPONSES[i], RESPONSES[j])
            assert matrix[i][j] == pytest.approx(expected, abs=TOL, rel=0)
        games = [Game(i, j, matrix[i][j]) for i, j in itertools.combinations(range(n), 2)]
        strengths = bradley_terry(n, games)
        assert [r["score"] for r in body["results"]] == pytest.approx(strengths, abs=1e-9)
        assert body["winner"] == max(range(n), key=lambda i: strengths[i])
        assert sum(r["win_probability"] for r in body["results"]) == pytest.approx(1.0)
        assert body["usage"]["total_tokens"] == sum(r["num_tokens"] for r in body["results"]) > 0


@pytest.mark.parametrize(("schedule", "comparisons"), [("all_pairs", 6), ("knockout", 3), ("swiss", 4)])
def test_rerank_ranks_by_the_strengths_of_the_pairs_its_schedule_reads(server, references, schedule, comparisons):
    response = server.http.post("/v1/rerank", json={"model": "pairrm", "query": PROMPT, "documents": RESPONSES,
                                                     "schedule": schedule})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["schedule"] == schedule and body["comparisons"] == comparisons
    strengths = {r["index"]: r["relevance_score"] for r in body["results"]}
    assert [r["index"] for r in body["results"]] == sorted(strengths, key=lambda i: (-strengths[i], i))
    if schedule == "all_pairs":  # the same strengths as compare's
        compare = server.http.post("/v1/compare", json={"model": "pairrm", "prompt": PROMPT, "responses": RESPONSES})
        assert [strengths[i] for i in range(len(RESPONSES))] == pytest.approx(
            [r["score"] for r in compare.json()["results"]], abs=1e-9)
    if schedule == "knockout":  # the bracket's champion first: best-of-n
        p = lambda a, b: want(references, "pairrm", RESPONSES[a], RESPONSES[b])  # noqa: E731
        semis = [0 if p(0, 1) >= 0.5 else 1, 2 if p(2, 3) >= 0.5 else 3]
        champion = semis[0] if p(*semis) >= 0.5 else semis[1]
        assert body["results"][0]["index"] == champion


def test_best_of_n_with_top_n_and_the_auto_schedule(server):
    documents = [f"The answer is {k}." for k in range(12)]
    response = server.http.post("/v1/rerank", json={"model": "pairpm", "query": PROMPT, "documents": documents,
                                                     "top_n": 1})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["schedule"] == "swiss" and len(body["results"]) == 1  # past 8 documents, auto is Swiss
    assert body["comparisons"] == 4 * 6
    one = server.http.post("/v1/rerank", json={"model": "pairpm", "query": PROMPT, "documents": ["only"]})
    assert one.status_code == 200 and one.json()["comparisons"] == 0


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/compare", {"responses": ["a", {"steps": ["b"]}]}, "responses[1]"),
    ("/v1/compare", {"responses": ["a"] * 65}, "responses"),
    ("/v1/compare", {"responses": ["a", "b"], "normalize": "zscore"}, "normalize"),
    ("/v1/rerank", {"documents": ["a", "b"], "aggregation": "pareto"}, "aggregation"),
    ("/v1/rerank", {"documents": ["a", "b"], "truncate_prompt_tokens": 8}, "truncate_prompt_tokens"),
    ("/v1/rerank", {"documents": ["a", "b <|candidate2|>"]}, "documents[1]"),
])
def test_ranking_a_pairwise_model_refuses_what_it_cannot_read(server, path, body, field):
    prompt = {"prompt": PROMPT} if path == "/v1/compare" else {"query": PROMPT}
    assert_error(server.http.post(path, json={"model": "pairrm", **prompt, **body}), 422, field=field)


def test_schedule_is_for_pairwise_models(server):
    response = server.http.post("/v1/rerank", json={"model": "llama-scalar", "query": PROMPT, "documents": ["a", "b"],
                                                     "schedule": "knockout"})
    assert_error(response, 422, field="schedule")


def test_the_client_over_grpc_and_http_gives_the_same_pairwise_answers(server, references):
    items = [{"prompt": PROMPT, "response": r, "reference": REFERENCE} for r in RESPONSES]
    expected = [want(references, "pairrm", r, REFERENCE) for r in RESPONSES]
    for target in (server.url, f"grpc://{server.grpc_target}"):
        with RewardClient(target, timeout_s=120) as client:
            scored = client.score(items, model="pairrm", pairwise_mode="vs_reference")
            assert [r.score for r in scored.results] == pytest.approx(expected, abs=TOL, rel=0)
            group = client.score([{"prompt": PROMPT, "response": r} for r in RESPONSES], model="pairrm",
                                 pairwise_mode="group")
            assert len(group.results) == len(RESPONSES)
            ranked = client.rerank(PROMPT, RESPONSES, model="pairrm", schedule="knockout", top_n=1)
            assert ranked.schedule == "knockout" and ranked.comparisons == 3 and len(ranked.results) == 1
            swiss = client.rerank(PROMPT, RESPONSES, model="pairrm", schedule="swiss", rounds=1)
            assert swiss.comparisons == 2
