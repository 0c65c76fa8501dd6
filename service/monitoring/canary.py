"""Golden-set canary: a few fixed inputs per model, with the scores the model gave them
when they were recorded, re-scored by the served model at start-up, every
`canary.interval_s` seconds and on demand (`POST /v1/admin/canary`).

The set lives beside the model's reward_spec.yaml as `canary.jsonl`, one line per item:

    {"item": {...a /v1/score item...}, "truncate": "left" | "right" | null,
     "expected": {"score": ..., "dimensions": {...}?, "step_rewards": [...]?},
     "revision": "sha256:...", "source": "..."}

written by `rewardserve canary-record [ITEMS.jsonl] --model NAME --write` (without ITEMS it
re-records the expected values of the existing set, after an intended model change).
`.jsonl` files are not part of the model's revision fingerprint, so recording a canary
changes no revision.

A run reports the largest absolute deviation over every number (score, each dimension,
each step reward) and the Spearman rank correlation of the scores with the expected ones;
it passes when the deviation is within the tolerance (`canary.tolerance` for float32 models,
`canary.tolerance_half` for bfloat16 and float16 ones, whose rounding alone moves scores by
about 1e-2) and the correlation is at least `canary.min_spearman`. Items go through the
model's scheduler as `bulk` work (batched with live traffic and counted in the batch
metrics, but never cached and never drift observations).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, TypeAdapter

from models.heads import RewardOutput
from service.core.inputs import item_input
from service.protocol.enums import Priority, Truncate
from service.protocol.scoring import ScoreItem

log = logging.getLogger("rewardserve")

CANARY_FILENAME = "canary.jsonl"
_parse_item = TypeAdapter(ScoreItem).validate_python


class Expected(BaseModel):
    model_config = ConfigDict(extra="forbid")

    score: float
    dimensions: dict[str, float] | None = None
    step_rewards: list[float] | None = None


class CanaryItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item: dict
    truncate: Truncate | None = None
    expected: Expected
    revision: str = ""
    source: str = ""


def read_canary(path: Path) -> list[CanaryItem]:
    items = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                items.append(CanaryItem.model_validate_json(line))
            except ValueError as err:
                raise ValueError(f"{path}:{number}: {err}") from None
    return items


def write_canary(path: Path, items: list[CanaryItem]) -> None:
    path.write_text("".join(item.model_dump_json(exclude_none=True) + "\n" for item in items))


def expected_of(out: RewardOutput) -> Expected:
    return Expected(score=out.score, dimensions=out.dimensions, step_rewards=out.step_rewards)


def spearman(x: list[float], y: list[float]) -> float | None:
    """Rank correlation (average ranks for ties); None when either side is constant."""
    if len(x) < 3:
        return None
    rx, ry = _ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64))
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    """0-based ranks, tied values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    end = np.cumsum(counts)
    return ((end - counts + end - 1) / 2)[inverse]


def deviation(out: RewardOutput, expected: Expected) -> float:
    """The largest absolute difference over every number; inf when the shapes differ
    (another dimension set, another number of steps)."""
    diffs = [abs(out.score - expected.score)]
    if (out.dimensions is None) != (expected.dimensions is None) or (
            expected.dimensions is not None and set(out.dimensions) != set(expected.dimensions)):
        return math.inf
    if expected.dimensions is not None:
        diffs += [abs(out.dimensions[k] - v) for k, v in expected.dimensions.items()]
    if (out.step_rewards is None) != (expected.step_rewards is None) or (
            expected.step_rewards is not None and len(out.step_rewards) != len(expected.step_rewards)):
        return math.inf
    if expected.step_rewards is not None:
        diffs += [abs(a - b) for a, b in zip(out.step_rewards, expected.step_rewards)]
    return max(diffs)


@dataclass
class CanaryResult:
    model: str
    trigger: str  # startup | schedule | manual
    checked_at: float  # unix time
    items: int
    tolerance: float
    max_abs_deviation: float | None  # None when the run failed; inf when shapes differ
    spearman: float | None
    passed: bool
    worst_item: int | None = None
    seconds: float = 0.0
    revision: str = ""
    recorded_revision: str = ""
    error: str | None = None

    def as_json(self) -> dict:
        body = asdict(self)
        if body["max_abs_deviation"] is not None and not math.isfinite(body["max_abs_deviation"]):
            body["max_abs_deviation"] = None
            body["error"] = body["error"] or "outputs differ in shape from the recorded ones"
        return body


def canary_file(runner) -> Path:
    return runner.config.resolved_path() / CANARY_FILENAME


async def score_canary(runner, items: list[CanaryItem]) -> list[RewardOutput]:
    """The canary items scored by the served model, through its scheduler (no cache)."""
    def encode():
        return [runner.model.encode(item_input(_parse_item(c.item)), c.truncate) for c in items]

    encoded = await asyncio.to_thread(encode)
    results = await runner.scheduler.submit(encoded, Priority.bulk)
    for index, result in enumerate(results):
        if isinstance(result, BaseException):
            raise RuntimeError(f"canary item {index}: {type(result).__name__}: {result}")
    return results


HALF_PRECISION = ("bfloat16", "float16")


class CanaryMonitor:
    def __init__(self, registry, tolerance: float, tolerance_half: float, min_spearman: float):
        self.registry = registry
        self.tolerance = tolerance
        self.tolerance_half = tolerance_half
        self.min_spearman = min_spearman
        self.results: dict[str, CanaryResult] = {}
        self.runs: dict[tuple[str, str, str], int] = {}  # (model, trigger, outcome) -> count
        self._lock = asyncio.Lock()

    def models(self) -> list[str]:
        """The served models that have a canary set."""
        return [name for name, runner in self.registry.runners.items() if canary_file(runner).is_file()]

    def tolerance_for(self, runner) -> float:
        half = runner.model is not None and runner.model.info.dtype in HALF_PRECISION
        return self.tolerance_half if half else self.tolerance

    async def check(self, name: str, trigger: str) -> CanaryResult:
        runner = self.registry.runners[name]
        started = time.perf_counter()
        result = CanaryResult(name, trigger, time.time(), 0, self.tolerance_for(runner), None, None, False,
                              revision=runner.model.revision if runner.model else "")
        try:
            if runner.status != "ready":
                raise RuntimeError(f"model is {runner.status}")
            items = await asyncio.to_thread(read_canary, canary_file(runner))
            if not items:
                raise ValueError(f"{canary_file(runner)} holds no items")
            outputs = await score_canary(runner, items)
            deviations = [deviation(out, c.expected) for out, c in zip(outputs, items)]
            worst = int(np.argmax(deviations))
            result.items, result.worst_item, result.max_abs_deviation = len(items), worst, float(deviations[worst])
            result.recorded_revision = items[0].revision
            result.spearman = spearman([o.score for o in outputs], [c.expected.score for c in items])
            result.passed = result.max_abs_deviation <= result.tolerance and (
                result.spearman is None or result.spearman >= self.min_spearman)
        except Exception as err:  # noqa: BLE001 - a failed canary is a result, not a crash
            result.error = f"{type(err).__name__}: {err}"
            log.error("canary of %s failed: %s", name, result.error)
        result.seconds = time.perf_counter() - started
        outcome = "error" if result.error and result.max_abs_deviation is None else "pass" if result.passed else "fail"
        self.runs[(name, trigger, outcome)] = self.runs.get((name, trigger, outcome), 0) + 1
        self.results[name] = result
        if outcome == "fail":
            log.warning("canary of %s failed: max |deviation| %.3g (tolerance %.3g), spearman %s",
                        name, result.max_abs_deviation, result.tolerance, result.spearman)
        return result

    async def check_all(self, trigger: str, names: list[str] | None = None) -> dict[str, CanaryResult]:
        async with self._lock:  # one run at a time: a manual run waits for a scheduled one
            return {name: await self.check(name, trigger) for name in (names or self.models())}

    async def run(self, loading, interval_s: float) -> None:
        """The background task: once every model has loaded, then every `interval_s`
        seconds (0: start-up only)."""
        if loading is not None:
            await asyncio.shield(loading)  # cancelling this task must not cancel the loading
        await self.check_all("startup")
        while interval_s > 0:
            await asyncio.sleep(interval_s)
            try:
                await self.check_all("schedule")
            except Exception:
                log.exception("scheduled canary failed")

    def as_json(self) -> dict:
        return {
            "tolerance": self.tolerance,
            "tolerance_half": self.tolerance_half,
            "min_spearman": self.min_spearman,
            "models": {name: result.as_json() for name, result in self.results.items()},
        }
