"""Shadow scoring's agreement statistics against hand computations on known paired values:
Spearman with tied values, the mean shift, the same-prompt pairwise order agreement (ties
agree only with ties; items of other prompts or of no known prompt are never paired), the
drift statistics as service.monitoring.baseline computes them for the candidate against the
live values, and the window's dimensions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from models.heads import RewardOutput
from models.inputs import Chat, StepsInput, TextPair, TokenIds
from service.config.model import ShadowConfig
from service.core.shadow import Mirrored, ShadowLane, mirrored_share, prompt_of
from service.monitoring.agreement import agreement, average_ranks
from service.monitoring.baseline import compare, dimension_baseline
from service.monitoring.shadow import PairWindow

LIVE = np.array([0.5, 1.0, 1.0, -2.0, 3.0, 0.0, 0.25, 2.0])
CANDIDATE = np.array([0.4, 1.5, 0.2, -1.0, 3.0, 0.0, 0.25, 2.5])
PROMPTS = ["a", "a", "a", "b", "b", None, "c", "b"]


def hand_ranks(x: np.ndarray) -> np.ndarray:
    """Each value's rank: 1 + how many are smaller + (how many others equal it) / 2."""
    return np.array([1 + np.sum(x < v) + (np.sum(x == v) - 1) / 2 for v in x])


def test_ranks_share_their_mean_rank_when_tied():
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]
    assert average_ranks(LIVE).tolist() == hand_ranks(LIVE).tolist()


def test_statistics_equal_a_hand_computation():
    report = agreement(LIVE, CANDIDATE, PROMPTS)
    stats = report["statistics"]
    live_ranks, candidate_ranks = hand_ranks(LIVE), hand_ranks(CANDIDATE)
    rho = np.sum((live_ranks - live_ranks.mean()) * (candidate_ranks - candidate_ranks.mean())) / np.sqrt(
        np.sum((live_ranks - live_ranks.mean()) ** 2) * np.sum((candidate_ranks - candidate_ranks.mean()) ** 2))
    assert stats["spearman"] == pytest.approx(rho, abs=1e-12)
    assert stats["mean_shift"] == pytest.approx(np.mean(CANDIDATE) - np.mean(LIVE), abs=1e-12)
    # same-prompt pairs: a (0,1) (0,2) (1,2) and b (3,4) (3,7) (4,7); "c" is alone, None pairs with nothing
    # a: live 0.5<1.0 cand 0.4<1.5 agree; live 0.5<1.0 cand 0.4>0.2 disagree; live tie 1.0=1.0, cand 1.5>0.2 disagree
    # b: -2<3 / -1<3 agree; -2<2 / -1<2.5 agree; 3>2 / 3>2.5 agree
    assert report["order_pairs"] == 6
    assert stats["order_agreement"] == pytest.approx(4 / 6)
    assert report["pairs"] == LIVE.size
    drift = compare(CANDIDATE, dimension_baseline("live", "", "", "", LIVE))
    assert {name: stats[f"drift_{name}"] for name in drift} == pytest.approx(drift)


def test_a_tie_agrees_only_with_a_tie():
    tied = agreement(np.array([1.0, 1.0, 2.0]), np.array([5.0, 5.0, 4.0]), ["p"] * 3)
    # (0,1): tie and tie agree; (0,2) and (1,2): live up, candidate down
    assert (tied["statistics"]["order_agreement"], tied["order_pairs"]) == (pytest.approx(1 / 3), 3)


def test_too_few_pairs_give_no_statistic_rather_than_a_wrong_one():
    report = agreement(np.array([1.0, 2.0]), np.array([2.0, 1.0]), ["x", "y"])
    assert report["statistics"]["spearman"] is None  # fewer than 3 pairs
    assert report["statistics"]["order_agreement"] is None and report["order_pairs"] == 0
    assert report["statistics"]["mean_shift"] == 0.0
    constant = agreement(np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 3.0]), [None] * 3)
    assert constant["statistics"]["spearman"] is None  # the live side has one value only


def test_the_window_pairs_shared_dimensions_and_keeps_the_last_items():
    window = PairWindow(size=4)
    live = [RewardOutput(score=float(i), dimensions={"helpful": float(i), "live_only": 0.0}) for i in range(6)]
    candidate = [RewardOutput(score=2.0 * i, dimensions={"helpful": -float(i)}) for i in range(6)]
    items = [Mirrored(TextPair("same", f"r{i}"), "same", out) for i, out in enumerate(live)]
    window.add(items, candidate)
    report = window.dimensions()
    assert list(report) == ["score", "dim:helpful"]
    kept = np.arange(2.0, 6.0)  # the last 4 of 6
    assert report["score"] == agreement(kept, 2 * kept, ["same"] * 4)
    assert report["dim:helpful"]["statistics"]["spearman"] == pytest.approx(-1.0)
    assert report["dim:helpful"]["statistics"]["order_agreement"] == 0.0
    assert report["score"]["statistics"]["order_agreement"] == 1.0


def test_items_are_picked_by_their_content_and_keep_their_prompt():
    items = [TextPair(f"prompt {i}", f"response {j}") for i, j in itertools.product(range(20), range(10))]
    shares = [mirrored_share(item) for item in items]
    assert shares == [mirrored_share(TextPair(item.prompt, item.response)) for item in items]  # same item, same share
    assert all(0 <= s < 1 for s in shares) and 0.3 < np.mean(np.array(shares) < 0.5) < 0.7
    lane = ShadowLane("live", ShadowConfig(model="candidate", share=0.5, queue_items=1000), None, None)
    lane.offer(items, [RewardOutput(score=0.0)] * len(items))
    assert lane.queue.qsize() == sum(s < 0.5 for s in shares) and lane.dropped == 0
    assert prompt_of(Chat((("user", "q"), ("assistant", "a")))) == (("user", "q"),)
    assert prompt_of(StepsInput("p", ("s1",))) == "p"
    assert prompt_of(TokenIds((1, 2, 3), prompt_length=2)) == (1, 2)
    assert prompt_of(TokenIds((1, 2, 3))) is None
