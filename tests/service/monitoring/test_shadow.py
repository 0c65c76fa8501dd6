"""Shadow scoring end to end, over real HTTP and gRPC on loopback: a live multi-objective
model mirrors every item (share 1.0) to a candidate with the same dimensions; once the
candidate has scored them (a bounded wait), /v1/shadow's statistics equal a hand computation
from each model's own unbatched scores of those items, and the live answers are the live
model's own. Under a burst against a tiny queue every live answer still succeeds and every
picked item is either mirrored or dropped (and counted). A real Prometheus scrapes the
counters and agreement gauges, and the dashboard's "Shadow scoring" row runs on them."""

from __future__ import annotations

import itertools
import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import yaml
from doc_examples import blocks
from http_helpers import assert_result_matches, poll, reference
from metrics_helpers import dashboard_queries, scrape
from paths import ROOT
from protocol_helpers import to_request
from replica_helpers import Prometheus, bounded_wait, query, scalar
from tiny_models import HELPSTEER

from service.config import ModelConfig, Settings
from service.config.model import ShadowConfig
from service.grpc.proto import rewardserve_pb2_grpc as pb_grpc
from service.monitoring.baseline import compare, dimension_baseline

LIVE, CANDIDATE = "llama-helpsteer", "llama-gating"
DIMENSIONS = ["score", *(f"dim:{name}" for name in sorted(HELPSTEER))]
METRIC_NAMES = ("rewardserve_shadow_items_total", "rewardserve_shadow_queue_items", "rewardserve_shadow_window_pairs",
                "rewardserve_shadow_agreement")
WAIT_S = 60
PAGE = ROOT / "docs" / "shadow.md"


def models(tiny_model_dirs, **shadow) -> list[ModelConfig]:
    return [ModelConfig(name=LIVE, path=str(tiny_model_dirs[LIVE]), shadow={"model": CANDIDATE, **shadow}),
            ModelConfig(name=CANDIDATE, path=str(tiny_model_dirs[CANDIDATE]))]


def items_for(prompts: range, responses: int, tag: str) -> list[dict]:
    return [{"prompt": f"Question {p} ({tag})?", "response": f"Answer {r}: " + "more words " * r}
            for p, r in itertools.product(prompts, range(responses))]


def settled(server, offered: int) -> dict:
    """/v1/shadow's live model once every offered item is accounted for and none is queued."""
    def done(response) -> bool:
        lane = response.json()["models"][LIVE]
        return lane["queued"] == 0 and sum(lane["items"].values()) == offered

    return poll(lambda: server.http.get("/v1/shadow"), done, timeout=WAIT_S).json()["models"][LIVE]


def values(out, dimension: str) -> float:
    return out.score if dimension == "score" else out.dimensions[dimension.removeprefix("dim:")]


def hand_statistics(live: np.ndarray, candidate: np.ndarray, prompts: list[str]) -> dict:
    """Spearman from argsort ranks (the scores have no ties), the mean shift, the pairwise
    order agreement by looping over same-prompt pairs, and the drift statistics of the
    candidate against the live values' baseline."""
    live_ranks, candidate_ranks = np.argsort(np.argsort(live)), np.argsort(np.argsort(candidate))
    same = [(i, j) for i, j in itertools.combinations(range(live.size), 2) if prompts[i] == prompts[j]]
    alike = [np.sign(live[i] - live[j]) == np.sign(candidate[i] - candidate[j]) for i, j in same]
    drift = compare(candidate, dimension_baseline("live", "", "", "", live))
    return {"spearman": np.corrcoef(live_ranks, candidate_ranks)[0, 1], "mean_shift": np.mean(candidate - live),
            "order_agreement": np.mean(alike), **{f"drift_{name}": value for name, value in drift.items()}}


@pytest.fixture(scope="module")
def server(served, tiny_model_dirs):
    with served(models(tiny_model_dirs, share=1.0)) as server:
        yield server


@pytest.fixture(scope="module")
def mirrored(server, load_tiny) -> list[dict]:
    """Three prompts of four responses over HTTP and one of four over gRPC, every live answer
    checked against the live model's own score; the items, once the candidate has scored them."""
    http_items, grpc_items = items_for(range(3), 4, "http"), items_for(range(3, 4), 4, "grpc")
    live_model = load_tiny(LIVE)
    for start in range(0, len(http_items), 6):
        reply = server.http.post("/v1/score", json={"model": LIVE, "items": http_items[start:start + 6]})
        assert reply.status_code == 200, reply.text
        for result, item in zip(reply.json()["results"], http_items[start:start + 6]):
            assert_result_matches(result, reference(live_model, item))
    with grpc.insecure_channel(server.grpc_target) as channel:
        answer = pb_grpc.RewardServiceStub(channel).Score(to_request({"model": LIVE, "items": grpc_items}),
                                                          timeout=WAIT_S)
    assert [r.score for r in answer.results] == pytest.approx([reference(live_model, i).score for i in grpc_items],
                                                              abs=1e-5)
    items = http_items + grpc_items
    lane = settled(server, len(items))
    assert lane["items"] == {"mirrored": len(items), "dropped": 0, "failed": 0}
    return items


def test_shadow_statistics_equal_a_hand_computation(server, mirrored, load_tiny):
    lane = server.http.get("/v1/shadow").json()["models"][LIVE]
    assert (lane["candidate"], lane["share"], lane["window"]) == (CANDIDATE, 1.0, 1000)
    assert list(lane["dimensions"]) == DIMENSIONS
    live_outs = [reference(load_tiny(LIVE), item) for item in mirrored]
    candidate_outs = [reference(load_tiny(CANDIDATE), item) for item in mirrored]
    prompts = [item["prompt"] for item in mirrored]
    for dimension in DIMENSIONS:
        live = np.array([values(out, dimension) for out in live_outs])
        candidate = np.array([values(out, dimension) for out in candidate_outs])
        report = lane["dimensions"][dimension]
        assert (report["pairs"], report["order_pairs"]) == (16, 4 * 6)
        expected = hand_statistics(live, candidate, prompts)
        assert report["statistics"] == pytest.approx(expected, abs=1e-4), dimension


def test_metrics_carry_the_counts_and_statistics(server, mirrored):
    scraped = scrape(server.http)
    lane = server.http.get("/v1/shadow").json()["models"][LIVE]
    for outcome, count in lane["items"].items():
        assert scraped.value("rewardserve_shadow_items_total", model=LIVE, candidate=CANDIDATE,
                             outcome=outcome) == count
    for dimension, report in lane["dimensions"].items():
        assert scraped.value("rewardserve_shadow_window_pairs", model=LIVE, dimension=dimension) == report["pairs"]
        for name, value in report["statistics"].items():
            assert scraped.value("rewardserve_shadow_agreement", model=LIVE, candidate=CANDIDATE, dimension=dimension,
                                 statistic=name) == pytest.approx(value, rel=1e-12)


def test_a_full_queue_drops_items_never_the_live_answers(served, tiny_model_dirs):
    """Eight concurrent requests of eight items against a queue of two: every answer 200, the
    overflow dropped, and mirrored + dropped is every item offered."""
    requests = [items_for(range(r, r + 1), 8, "burst") for r in range(8)]
    with served(models(tiny_model_dirs, share=1.0, queue_items=2), grpc=False) as server, \
            ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(lambda items: server.http.post("/v1/score", json={"model": LIVE, "items": items}),
                                requests))
        assert [reply.status_code for reply in replies] == [200] * len(requests)
        lane = settled(server, 64)
        assert lane["items"]["failed"] == 0 and lane["items"]["dropped"] > 0
        assert lane["items"]["mirrored"] + lane["items"]["dropped"] == 64
        assert lane["dimensions"]["score"]["pairs"] == lane["items"]["mirrored"]


def shape(value):
    """A JSON value's keys, nested, with every leaf left out."""
    return {key: shape(v) for key, v in value.items()} if isinstance(value, dict) else None


def test_the_pages_examples_are_a_valid_config_and_the_served_shape(server, mirrored):
    (config,), (shown,) = ([text for lang, text in blocks(PAGE) if lang == kind] for kind in ("yaml", "json"))
    settings = Settings(**yaml.safe_load(config))
    shadow = settings.models[0].shadow
    defaults = ShadowConfig(model=shadow.model)
    assert (shadow.model, shadow.share, shadow.queue_items, shadow.window) == \
        ("rm-v4", defaults.share, defaults.queue_items, defaults.window)  # the page shows the defaults
    (example,) = json.loads(shown)["models"].values()
    lane = server.http.get("/v1/shadow").json()["models"][LIVE]
    served = shape(lane) | {"dimensions": {"score": shape(lane["dimensions"]["score"])}}
    assert shape(example) == served


needs_prometheus = pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed")


@pytest.mark.e2e  # outside programs: prometheus
@needs_prometheus
def test_prometheus_scrapes_the_shadow_metrics_and_the_dashboard_row_runs(server, mirrored, tmp_path):
    lane = server.http.get("/v1/shadow").json()["models"][LIVE]
    with Prometheus([str(server.http.base_url).removeprefix("http://")], [], tmp_path) as prometheus:
        api = prometheus.api
        mirrored_total = f'rewardserve_shadow_items_total{{model="{LIVE}", outcome="mirrored"}}'
        bounded_wait(lambda: scalar(api, mirrored_total) == lane["items"]["mirrored"], "a scrape of the shadow counts")
        spearman = scalar(api, f'rewardserve_shadow_agreement{{model="{LIVE}", candidate="{CANDIDATE}", '
                               'dimension="score", statistic="spearman"}')
        assert spearman == pytest.approx(lane["dimensions"]["score"]["statistics"]["spearman"], rel=1e-9)
        row = dashboard_queries("Shadow scoring")
        assert {name for expr in row for name in METRIC_NAMES if name in expr} == set(METRIC_NAMES)
        for expr in row:
            promql = expr.replace("$__rate_interval", "1m").replace("$model", ".*")
            query(api, promql)  # a syntax or type error is a 400
        assert query(api, 'max by (model, candidate, dimension) (rewardserve_shadow_agreement{model=~".*", '
                          'statistic="order_agreement"})')
