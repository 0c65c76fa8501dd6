"""A pipeline's combination on given model outputs: weights, gates in order (below and above),
failures under each on_component_error, and the uncertainty of several ensembles."""

from __future__ import annotations

import asyncio
import math
import statistics

import pytest

from models.heads import RewardOutput
from service.config import PipelineConfig
from service.pipelines.pipeline import Pipeline
from service.pipelines.values import ComponentFailed

SCORES = {"a": [1.0, -2.0, 0.5], "b": [3.0, 0.0, 0.5], "c": [-1.0, 4.0, 2.0]}


def run(config: dict, failing: dict[str, set[int]] | None = None) -> list:
    failing = failing or {}

    async def score_model(call):
        return [ValueError(f"{call.model} failed on {i}") if i in failing.get(call.model, ()) else
                RewardOutput(score=s, num_tokens=10) for i, s in enumerate(SCORES[call.model])]

    pipeline = Pipeline(PipelineConfig.model_validate({"name": "p", **config}), None, 1.0)
    return asyncio.run(pipeline.run([None] * 3, score_model))


def model(name: str, **fields) -> dict:
    return {"name": name, "type": "model", "model": name, **fields}


def test_the_reward_is_the_weighted_sum_and_the_first_closing_gate_wins():
    gates = [{"component": "a", "below": 0, "reward": -5.0}, {"component": "c", "above": 1.5, "reward": 7.0}]
    out = run({"components": [model("a", weight=2.0), model("b", weight=0.5), model("c", weight=0)],
               "gates": gates})
    assert out[0].score == 2.0 * 1.0 + 0.5 * 3.0
    assert out[1].score == -5.0  # a below 0, before c's gate
    assert out[2].score == 7.0
    assert out[0].dimensions == {"a": 1.0, "b": 3.0, "c": -1.0}
    assert out[0].num_tokens == 30


def test_a_failed_model_fails_the_item_or_takes_the_default():
    failed = run({"components": [model("a"), model("b")]}, failing={"b": {1}})
    assert isinstance(failed[1], ComponentFailed) and failed[1].component == "b"
    assert "b failed on 1" in failed[1].message and isinstance(failed[1].cause, ValueError)
    assert failed[0].score == 4.0
    defaulted = run({"components": [model("a"), model("b")], "on_component_error": "default",
                     "default_value": -1.0}, failing={"b": {1}})
    assert defaulted[1].score == -2.0 + -1.0
    assert defaulted[1].components["b"].status == "error" and defaulted[1].components["b"].value == -1.0
    assert defaulted[1].num_tokens == 10  # the model that answered


def test_uncertainty_adds_weighted_ensemble_spreads_in_quadrature():
    out = run({"components": [
        {"name": "e1", "type": "ensemble", "models": ["a", "b"], "weight": 2.0},
        {"name": "e2", "type": "ensemble", "models": ["b", "c"], "aggregate": "lcb", "k": 2.0, "weight": 1.0}]})
    for i, item in enumerate(out):
        s1 = statistics.pstdev([SCORES["a"][i], SCORES["b"][i]])
        s2 = statistics.pstdev([SCORES["b"][i], SCORES["c"][i]])
        assert item.uncertainty == pytest.approx(math.hypot(2.0 * s1, s2))
        lcb = statistics.fmean([SCORES["b"][i], SCORES["c"][i]]) - 2.0 * s2
        assert item.components["e2"].value == pytest.approx(lcb)
