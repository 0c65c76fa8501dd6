"""The ranking semantics (service/core/ranking.py) and normalization
(service/core/normalize.py) as pure functions, against expectations computed by hand:
Bradley–Terry and Plackett–Luce probabilities, winners and ties, the three rerank
aggregations, Pareto fronts, first step below a threshold, z-scores and the reference
statistics they use."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from models.heads import RewardOutput
from models.spec import ModelKind, RewardSpec, StepAggregate
from service.core.errors import APIError
from service.core.inputs import split_steps
from service.core.normalize import compute_reference_stats, reference_stats_for, zscore
from service.core.ranking import (
    best,
    compare,
    first_below,
    pareto_ranks,
    rerank,
    sigmoid,
    softmax,
)

LN2 = math.log(2)


def out(score: float, **dims: float) -> RewardOutput:
    return RewardOutput(score=score, dimensions=dims or None, num_tokens=3)


def api_error(call, field: str, status: int = 422) -> APIError:
    with pytest.raises(APIError) as info:
        call()
    assert (info.value.status, info.value.field) == (status, field), (info.value.status, info.value.field)
    return info.value


# ---- probabilities -----------------------------------------------------------------------


def test_sigmoid_and_softmax_by_hand():
    assert sigmoid(0.0) == 0.5
    assert sigmoid(LN2) == pytest.approx(2 / 3)
    assert sigmoid(-LN2) == pytest.approx(1 / 3)
    assert sigmoid(1000.0) == 1.0 and sigmoid(-1000.0) == 0.0  # no overflow
    assert softmax([0.0, LN2, LN2]) == pytest.approx([0.2, 0.4, 0.4])
    assert softmax([1000.0, 1000.0]) == pytest.approx([0.5, 0.5])


def test_compare_two_responses_is_bradley_terry():
    """For two responses the Plackett–Luce first choice equals sigmoid(r_a - r_b)."""
    result = compare([out(1.0), out(0.0)])
    e = math.e
    assert result.pairwise[0] == pytest.approx([0.5, e / (1 + e)])
    assert result.pairwise[1] == pytest.approx([1 / (1 + e), 0.5])
    assert result.win_probability == pytest.approx([e / (1 + e), 1 / (1 + e)])
    assert result.win_probability[0] == pytest.approx(result.pairwise[0][1])
    assert (result.overall.winner, result.overall.tied) == (0, [])
    assert result.dimensions is None
    assert result.scores == [1.0, 0.0]


def test_compare_three_with_a_tie_at_the_top():
    result = compare([out(0.0), out(LN2), out(LN2)])
    assert result.win_probability == pytest.approx([0.2, 0.4, 0.4])
    assert result.pairwise[1][0] == pytest.approx(2 / 3) and result.pairwise[0][2] == pytest.approx(1 / 3)
    assert result.pairwise[1][2] == 0.5
    assert (result.overall.winner, result.overall.tied) == (None, [1, 2])


def test_tie_margin():
    assert best([1.0, 0.95, 0.5], tie_margin=0.1) == best([1.0, 1.0, 0.5])
    assert (best([1.0, 0.95, 0.5], tie_margin=0.1).winner, best([1.0, 0.95, 0.5]).winner) == (None, 0)
    assert best([0.2, 0.9, 0.3]).winner == 1


def test_compare_multi_objective_winner_per_dimension():
    result = compare([out(1.0, helpful=3.0, safe=2.0, brief=0.0), out(2.0, helpful=1.0, safe=2.0, brief=1.0)])
    assert (result.overall.winner, result.overall.tied) == (1, [])
    winners = {name: (v.winner, v.tied) for name, v in result.dimensions.items()}
    assert winners == {"helpful": (0, []), "safe": (None, [0, 1]), "brief": (1, [])}


def test_compare_needs_two():
    with pytest.raises(ValueError):
        compare([out(1.0)])


# ---- rerank --------------------------------------------------------------------------


def test_rerank_by_model_score_with_top_n_and_stable_ties():
    outputs = [out(0.1), out(0.5), out(0.3), out(0.5)]
    ranking = rerank(outputs)
    assert [r.index for r in ranking.results] == [1, 3, 2, 0]
    assert [r.value for r in ranking.results] == [0.5, 0.5, 0.3, 0.1]
    assert ranking.aggregation == "model" and ranking.pareto_front is None
    assert all(r.pareto_rank is None for r in ranking.results)
    assert [r.index for r in rerank(outputs, top_n=2).results] == [1, 3]
    assert [r.index for r in rerank(outputs, top_n=0).results] == [1, 3, 2, 0]  # 0: all
    assert [r.index for r in rerank(outputs, top_n=10).results] == [1, 3, 2, 0]


def test_rerank_by_caller_weights():
    outputs = [out(9.0, a=1.0, b=4.0), out(0.0, a=3.0, b=1.0), out(5.0, a=2.0, b=2.0)]
    ranking = rerank(outputs, weights={"a": 2.0, "b": -0.5})
    # 2*1 - 0.5*4 = 0; 2*3 - 0.5*1 = 5.5; 2*2 - 0.5*2 = 3
    assert [(r.index, r.value) for r in ranking.results] == [(1, 5.5), (2, 3.0), (0, 0.0)]
    assert ranking.aggregation == "weights" and ranking.weights == {"a": 2.0, "b": -0.5}
    only_b = rerank(outputs, aggregation="weights", weights={"b": 1.0})  # dimensions not named weigh 0
    assert [r.index for r in only_b.results] == [0, 2, 1]


def test_pareto_ranks_are_successive_fronts():
    vectors = [[3, 1], [1, 3], [2, 2], [1, 1], [0, 0], [2, 2], [0, 3]]
    # front 0: (3,1) (1,3) (2,2) (2,2): nobody beats them everywhere; equal vectors do not dominate
    # front 1: (1,1) is dominated by (3,1); (0,3) by (1,3). front 2: (0,0) by (1,1)
    assert pareto_ranks(vectors) == [0, 0, 0, 1, 2, 0, 1]
    assert pareto_ranks([[1.0]]) == [0]
    assert pareto_ranks([[1, 2], [1, 2]]) == [0, 0]


def test_rerank_pareto_orders_fronts_then_aggregate():
    outputs = [out(0.0, a=3, b=1), out(0.5, a=1, b=3), out(0.2, a=1, b=1), out(0.9, a=0, b=0), out(0.7, a=2, b=2)]
    ranking = rerank(outputs, aggregation="pareto")
    assert [(r.index, r.pareto_rank) for r in ranking.results] == [(4, 0), (1, 0), (0, 0), (2, 1), (3, 2)]
    assert ranking.pareto_front == [0, 1, 4]
    with_weights = rerank(outputs, aggregation="pareto", weights={"a": 1.0})  # tie-break by a
    assert [r.index for r in with_weights.results] == [0, 4, 1, 2, 3]
    assert [r.value for r in with_weights.results] == [3, 2, 1, 1, 0]


def test_rerank_refuses_what_does_not_fit_the_model():
    scalar = [out(1.0), out(2.0)]
    multi = [out(1.0, a=1.0, b=0.0)]
    api_error(lambda: rerank(scalar, weights={"a": 1.0}), "weights")
    api_error(lambda: rerank(scalar, aggregation="pareto"), "aggregation")
    error = api_error(lambda: rerank(multi, weights={"a": 1.0, "zzz": 2.0}), "weights.zzz")
    assert "'zzz'" in error.message and "['a', 'b']" in error.message
    api_error(lambda: rerank(multi, aggregation="weights"), "weights")
    api_error(lambda: rerank(multi, aggregation="model", weights={"a": 1.0}), "weights")


# ---- steps ---------------------------------------------------------------------------


def test_first_below_is_strict_and_none_when_no_step_is():
    assert first_below([0.9, 0.4, 0.3], 0.5) == 1
    assert first_below([0.9, 0.5, 0.6], 0.5) is None
    assert first_below([0.1], 0.5) == 0


@pytest.mark.parametrize("text, steps", [
    ("a <m> b <m>", ("a", "b")),
    ("a <m> b <m> final", ("a", "b", "final")),
    ("First.\n\nSecond.\n \nThird.", ("First.", "Second.", "Third.")),
    ("one step only", ("one step only",)),
    ("  \n\n ", ()),
])
def test_split_steps_at_marker_else_blank_lines(text, steps):
    assert split_steps(text, "<m>") == steps


# ---- normalization -------------------------------------------------------------------

MO = {"kind": "multi_objective", "multi_objective": {"dimensions": ["a", "b"], "weights": {"a": 1.0}}}
STATS = {
    "score": {"mean": 1.0, "std": 2.0},
    "dimensions": {"a": {"mean": 0.0, "std": 0.5}, "b": {"mean": 1.0, "std": 1.0}},
    "count": 10,
    "source": "test",
}
PRM = {"kind": "process", "process": {"convention": "separator", "marker": "<m>", "aggregate": "min"}}


def test_zscore_by_hand():
    spec = RewardSpec.model_validate({**MO, "reference_stats": STATS})
    z = zscore(RewardOutput(score=3.0, dimensions={"a": 1.0, "b": 0.0}, gating_weights=[0.3, 0.7], num_tokens=5),
               reference_stats_for(spec))
    assert (z.score, z.dimensions, z.gating_weights, z.num_tokens) == (1.0, {"a": 2.0, "b": -1.0}, [0.3, 0.7], 5)


def test_reference_stats_for_refuses_without_stats_or_for_another_aggregate():
    api_error(lambda: reference_stats_for(RewardSpec.model_validate(MO)), "normalize")
    prm = RewardSpec.model_validate({**PRM, "reference_stats": {**STATS, "dimensions": {}, "aggregate": "min"}})
    assert reference_stats_for(prm).aggregate == StepAggregate.min
    assert reference_stats_for(prm, StepAggregate.min).count == 10
    error = api_error(lambda: reference_stats_for(prm, StepAggregate.mean), "normalize")
    assert "'min'" in error.message and "'mean'" in error.message


def test_compute_reference_stats_uses_population_std():
    stats = compute_reference_stats([1.0, 2.0, 3.0, 4.0], {"a": [0.0, 0.0, 1.0, 1.0]}, None, "four")
    assert stats.score.mean == 2.5 and stats.score.std == pytest.approx(math.sqrt(1.25))
    assert (stats.dimensions["a"].mean, stats.dimensions["a"].std) == (0.5, 0.5)
    assert (stats.count, stats.source, stats.aggregate) == (4, "four", None)
    with pytest.raises(ValueError, match="at least 2"):
        compute_reference_stats([1.0])
    with pytest.raises(ValueError, match="standard deviation is 0"):
        compute_reference_stats([1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="dimension 'a'"):
        compute_reference_stats([1.0, 2.0], {"a": [3.0, 3.0]})


def test_spec_validates_reference_stats_and_keeps_old_revisions():
    plain = RewardSpec.model_validate(MO)
    assert "reference_stats" not in plain.canonical_json()  # specs without stats hash as before
    assert "reference_stats" in RewardSpec.model_validate({**MO, "reference_stats": STATS}).canonical_json()
    for bad in (
        {**MO, "reference_stats": {**STATS, "dimensions": {"a": STATS["dimensions"]["a"]}}},  # a dimension missing
        {"kind": "scalar", "reference_stats": STATS},  # dimensions on a scalar model
        {**PRM, "reference_stats": {**STATS, "dimensions": {}}},  # process without aggregate
        {**MO, "reference_stats": {**STATS, "score": {"mean": 0.0, "std": 0.0}}},  # std must be > 0
    ):
        with pytest.raises(ValidationError):
            RewardSpec.model_validate(bad)
    assert RewardSpec.model_validate({"kind": "scalar"}).kind == ModelKind.scalar
