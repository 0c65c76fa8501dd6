"""Ranking candidates with a pairwise preference model, which scores pairs, not responses:
which pairs to ask it about (the schedule) and one scalar per candidate from its answers (a
Bradley–Terry fit). Pure functions of the answers: the model is reached through `prefer`,
an async call giving P(i ≻ j) for a list of index pairs, so each round is one batch.

- `all_pairs`: every pair, n(n−1)/2 of them: the full win matrix, the best estimate.
- `knockout`: single elimination in request order (an odd one out passes the round): n − 1
  pairs in ⌈log₂ n⌉ rounds; the last one standing is the best-of-n pick.
- `swiss`: ⌈log₂ n⌉ rounds (or as asked) of ⌊n/2⌋ pairs, each round pairing candidates of
  close standing (expected wins so far) that have not met: n/2·log₂ n pairs, a full ranking.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

Schedule = Literal["all_pairs", "knockout", "swiss"]
Prefer = Callable[[list[tuple[int, int]]], Awaitable[list[float]]]

PRIOR_PRECISION = 0.01  # a N(0, 100) prior on each log-strength: finite when one candidate wins every game


@dataclass(frozen=True)
class Game:
    first: int
    second: int
    p_first: float  # P(first ≻ second), as the model says

    @property
    def winner(self) -> int:
        """The first on a dead heat, so a schedule is the same every time."""
        return self.first if self.p_first >= 0.5 else self.second


@dataclass(frozen=True)
class Played:
    schedule: Schedule
    games: list[Game]
    strengths: list[float]  # Bradley–Terry log-strengths, mean 0: P(i ≻ j) = sigmoid(s_i − s_j)


def resolve_schedule(asked: Schedule | Literal["auto"], n: int, all_pairs_max: int) -> Schedule:
    """`auto`: every pair while there are at most `all_pairs_max` candidates, else Swiss."""
    if asked != "auto":
        return asked
    return "all_pairs" if n <= all_pairs_max else "swiss"


def rounds_for(n: int) -> int:
    return max(1, math.ceil(math.log2(n))) if n > 1 else 0


async def play(n: int, prefer: Prefer, schedule: Schedule, rounds: int | None = None) -> Played:
    """The games `schedule` calls for among n candidates, each round's pairs asked of
    `prefer` at once, and the strengths they imply."""
    if n < 2:
        raise ValueError("a tournament needs at least two candidates")
    games: list[Game] = []

    async def round_of(pairs: list[tuple[int, int]]) -> list[Game]:
        played = [Game(i, j, float(p)) for (i, j), p in zip(pairs, await prefer(pairs), strict=True)]
        games.extend(played)
        return played

    if schedule == "all_pairs":
        await round_of([(i, j) for i in range(n) for j in range(i + 1, n)])
    elif schedule == "knockout":
        standing = list(range(n))
        while len(standing) > 1:
            played = await round_of(list(zip(standing[0::2], standing[1::2])))
            standing = [g.winner for g in played] + (standing[-1:] if len(standing) % 2 else [])
    else:
        met: set[frozenset[int]] = set()
        for _ in range(rounds or rounds_for(n)):
            pairs = swiss_pairs(expected_wins(n, games), met)
            if not pairs:
                break
            met.update(frozenset(p) for p in pairs)
            await round_of(pairs)
    return Played(schedule, games, bradley_terry(n, games))


def expected_wins(n: int, games: list[Game]) -> list[float]:
    wins = [0.0] * n
    for g in games:
        wins[g.first] += g.p_first
        wins[g.second] += 1.0 - g.p_first
    return wins


def swiss_pairs(standing: list[float], met: set[frozenset[int]]) -> list[tuple[int, int]]:
    """Candidates ordered by standing (request order on ties), each paired with the next
    one below it that it has not met; one left without a partner passes the round."""
    waiting = sorted(range(len(standing)), key=lambda i: (-standing[i], i))
    pairs = []
    while len(waiting) > 1:
        top = waiting.pop(0)
        partner = next((c for c in waiting if frozenset((top, c)) not in met), None)
        if partner is None:
            continue
        waiting.remove(partner)
        pairs.append((top, partner))
    return pairs


def bradley_terry(n: int, games: list[Game], precision: float = PRIOR_PRECISION) -> list[float]:
    """Log-strengths s maximising Σ p·log σ(s_i − s_j) + (1 − p)·log σ(s_j − s_i) over the
    games (the model's probabilities as soft outcomes) under a weak Gaussian prior, by
    Newton's method on this concave objective; centred on 0."""
    s = np.zeros(n)
    if not games:
        return s.tolist()
    first = np.array([g.first for g in games])
    second = np.array([g.second for g in games])
    p = np.array([g.p_first for g in games], dtype=np.float64)
    for _ in range(100):
        q = 1.0 / (1.0 + np.exp(-(s[first] - s[second])))
        residual = p - q
        gradient = np.bincount(first, residual, n) - np.bincount(second, residual, n) - precision * s
        w = q * (1.0 - q)  # curvature: the objective's negative Hessian, positive definite
        curvature = np.diag(np.bincount(first, w, n) + np.bincount(second, w, n) + precision)
        np.add.at(curvature, (first, second), -w)
        np.add.at(curvature, (second, first), -w)
        step = np.linalg.lstsq(curvature, gradient, rcond=None)[0]  # without a prior, defined up to a shift
        s += step
        if np.abs(step).max() < 1e-10:
            break
    return (s - s.mean()).tolist()
