"""Tournament schedules and the Bradley–Terry fit, against preferences drawn from known
strengths: what each schedule asks, and what the fit recovers from the answers."""

from __future__ import annotations

import asyncio
import itertools
import math

import pytest

from service.core.tournament import Game, bradley_terry, play, resolve_schedule, swiss_pairs


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class Judge:
    """P(i ≻ j) = sigmoid(s_i − s_j) for known strengths; records every round it is asked."""

    def __init__(self, strengths: list[float]):
        self.strengths = strengths
        self.rounds: list[list[tuple[int, int]]] = []

    async def __call__(self, pairs: list[tuple[int, int]]) -> list[float]:
        self.rounds.append(pairs)
        return [sigmoid(self.strengths[i] - self.strengths[j]) for i, j in pairs]

    @property
    def pairs(self) -> list[tuple[int, int]]:
        return [p for r in self.rounds for p in r]


STRENGTHS = [0.3, -1.2, 2.0, 0.9, -0.4, 1.5, -2.1, 0.0, 1.1, -0.8, 0.6, -1.6, 2.4, -0.1, 0.2, 1.8]


def run(n, schedule, strengths=STRENGTHS, rounds=None):
    judge = Judge(strengths[:n])
    return asyncio.run(play(n, judge, schedule, rounds)), judge


def test_all_pairs_asks_every_pair_once_in_one_round_and_recovers_the_strengths():
    played, judge = run(8, "all_pairs")
    assert len(judge.rounds) == 1
    assert sorted(judge.pairs) == list(itertools.combinations(range(8), 2))
    truth = [s - sum(STRENGTHS[:8]) / 8 for s in STRENGTHS[:8]]
    assert bradley_terry(8, played.games, precision=0.0) == pytest.approx(truth, abs=1e-8)
    # the weak prior pulls the fit towards 0 by a little only
    assert played.strengths == pytest.approx(truth, abs=0.05)
    assert sum(played.strengths) == pytest.approx(0.0, abs=1e-9)


def test_knockout_plays_n_minus_one_games_and_the_strongest_wins():
    for n in (2, 3, 7, 8, 16):
        played, judge = run(n, "knockout")
        assert len(judge.pairs) == n - 1
        assert len(judge.rounds) == math.ceil(math.log2(n))
        best = max(range(n), key=lambda i: STRENGTHS[i])
        assert max(range(n), key=lambda i: played.strengths[i]) == best
        final = played.games[-1]
        assert final.winner == best


def test_knockout_brackets_in_request_order_with_a_bye_for_the_odd_one():
    _, judge = run(5, "knockout")
    assert judge.rounds[0] == [(0, 1), (2, 3)]
    # 0 beats 1, 2 beats 3, 4 passes: then 0 v 2 and 4 waits again
    assert judge.rounds[1] == [(0, 2)]
    assert judge.rounds[2] == [(2, 4)]


def test_swiss_never_repeats_a_pair_and_ranks_the_top_first():
    played, judge = run(16, "swiss")
    assert len(judge.rounds) == 4
    assert all(len(r) == 8 for r in judge.rounds)
    assert len(set(map(frozenset, judge.pairs))) == len(judge.pairs)
    order = sorted(range(16), key=lambda i: -played.strengths[i])
    assert order[0] == max(range(16), key=lambda i: STRENGTHS[i])
    # far fewer games than every pair, yet a ranking close to the truth
    truth = sorted(range(16), key=lambda i: -STRENGTHS[i])
    assert set(order[:4]) & set(truth[:4]) and len(judge.pairs) == 32 < 120


def test_swiss_rounds_can_be_asked_and_stop_when_everyone_has_met():
    _, judge = run(4, "swiss", rounds=10)
    assert len(judge.pairs) == 6  # every pair of four, then no new pairing is left
    assert len(set(map(frozenset, judge.pairs))) == 6


def test_swiss_pairs_skip_those_who_met_and_leave_one_out_when_odd():
    assert swiss_pairs([3.0, 2.0, 1.0, 0.0], {frozenset((0, 1))}) == [(0, 2), (1, 3)]
    assert swiss_pairs([0.0, 0.0, 0.0], set()) == [(0, 1)]


def test_the_fit_is_finite_when_one_candidate_wins_every_game():
    games = [Game(0, j, 1.0) for j in range(1, 4)] + [Game(1, 2, 0.5), Game(2, 3, 0.5)]
    s = bradley_terry(4, games)
    assert all(math.isfinite(v) for v in s)
    assert s[0] == max(s) and s[0] - s[1] > 3


def test_the_fit_reads_the_soft_outcomes_as_probabilities():
    s = bradley_terry(2, [Game(0, 1, 0.8)], precision=0.0)
    assert sigmoid(s[0] - s[1]) == pytest.approx(0.8, abs=1e-9)
    # the same game asked the other way round says the same
    t = bradley_terry(2, [Game(1, 0, 0.2)], precision=0.0)
    assert t == pytest.approx(s, abs=1e-9)


def test_auto_schedule_is_every_pair_up_to_the_limit_then_swiss():
    assert resolve_schedule("auto", 8, 8) == "all_pairs"
    assert resolve_schedule("auto", 9, 8) == "swiss"
    assert resolve_schedule("knockout", 4, 8) == "knockout"


def test_fewer_than_two_candidates_is_refused():
    with pytest.raises(ValueError, match="at least two"):
        asyncio.run(play(1, Judge([0.0]), "all_pairs"))
