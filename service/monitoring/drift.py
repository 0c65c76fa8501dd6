"""Reward drift: each served model's live score distributions against its frozen baseline
(service.monitoring.baseline: the dimensions, the baseline file, the statistics). A
pipeline is tracked as a model named like it (service.monitoring.pipeline_metrics).

Per model and drift dimension the server keeps a sliding window of the last `drift.window`
live values (a bounded deque, appended to on the request path and nothing more) and, every
`drift.interval_s` seconds in a background task, compares it with the model's baseline.

Each statistic is judged against a limit per model and dimension: the one calibrated into the
baseline (tightened to the live window's size, `window_limits`), or the operator's
`drift.thresholds` for every model when set, or FALLBACK_THRESHOLDS for a baseline without
calibrated limits.

Style bias: the Pearson correlation between the score and the item's length (`num_tokens`,
prompt and response together) over the window, next to the same correlation in the
reference run.

Cache hits count as observations: the window is the distribution of the scores the server
handed out, and a repeated input is a repeated input in the traffic too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.heads import RewardOutput
from service.monitoring.baseline import (
    SCORE,
    DimensionBaseline,
    compare,
    observations,
    pearson,
    read_baseline,
    window_limits,
)

log = logging.getLogger("rewardserve")

# For a baseline without calibrated limits. PSI 0.2 is the usual "significant shift" mark;
# the others sit above the sampling noise of an unshifted window of 200 values against a few
# hundred reference ones.
FALLBACK_THRESHOLDS = {"psi": 0.2, "js_distance": 0.2, "ks": 0.15, "wasserstein": 0.3, "mean_shift": 0.3,
                       "std_shift": 0.3}

# ---- live windows -------------------------------------------------------------------


@dataclass
class DimensionReport:
    observations: int
    live_mean: float | None
    live_std: float | None
    statistics: dict[str, float] | None  # None: no baseline, or fewer than min_samples values
    exceeded: list[str] = field(default_factory=list)
    thresholds: dict[str, float] | None = None  # the limits judged against, with the statistics


@dataclass
class ModelReport:
    model: str
    computed_at: float  # unix time
    window: int  # the window's capacity
    baseline: dict | None  # revision, source, counts; None without a baseline
    dimensions: dict[str, DimensionReport]
    length_correlation: float | None
    reference_length_correlation: float | None

    def as_json(self) -> dict:
        return {
            "model": self.model,
            "computed_at": self.computed_at,
            "window": self.window,
            "baseline": self.baseline,
            "length_correlation": self.length_correlation,
            "reference_length_correlation": self.reference_length_correlation,
            "dimensions": {name: vars(report) for name, report in self.dimensions.items()},
        }


class ModelWindow:
    """The last `size` live values of every dimension of one model, and the (score,
    num_tokens) pairs of the last `size` items. Appends only: O(1) per value."""

    def __init__(self, size: int):
        self.size = size
        self.values: dict[str, deque] = {}
        self.scores: deque = deque(maxlen=size)
        self.lengths: deque = deque(maxlen=size)

    def observe(self, outputs: list[RewardOutput]) -> None:
        for out in outputs:
            self.scores.append(out.score)
            self.lengths.append(out.num_tokens)
            for dim, vals in observations(out).items():
                window = self.values.get(dim)
                if window is None:
                    window = self.values[dim] = deque(maxlen=self.size)
                window.extend(vals)

    def snapshot(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Copies, taken on the thread that appends (the event loop)."""
        return ({dim: np.fromiter(vals, dtype=np.float64, count=len(vals)) for dim, vals in self.values.items()},
                np.fromiter(self.scores, dtype=np.float64, count=len(self.scores)),
                np.fromiter(self.lengths, dtype=np.float64, count=len(self.lengths)))


class DriftMonitor:
    """Windows and baselines of every served model, and the latest report of each."""

    def __init__(self, window: int, min_samples: int, thresholds: dict[str, float] | None):
        self.window = window
        self.min_samples = min_samples
        self.thresholds = thresholds  # the operator's, for every model; None: per model and dimension
        self.windows: dict[str, ModelWindow] = {}
        self.baselines: dict[str, dict[str, DimensionBaseline]] = {}
        self.reports: dict[str, ModelReport] = {}
        self.baseline_errors: dict[str, str] = {}

    def add_model(self, name: str, baseline_file: Path | None, required: bool = False) -> None:
        """A model's (or pipeline's) window and baseline; `required`: a baseline file that is
        not there is an error (one the operator named), not a model without a baseline.
        A model added again starts afresh."""
        self.remove_model(name)
        self.windows[name] = ModelWindow(self.window)
        try:
            if required and baseline_file is not None and not baseline_file.is_file():
                raise OSError(f"{baseline_file}: no such file")
            self.baselines[name] = read_baseline(baseline_file) if baseline_file is not None else {}
        except (OSError, ValueError) as err:  # a bad baseline must not stop serving
            self.baselines[name] = {}
            self.baseline_errors[name] = str(err)
            log.error("drift baseline of %s not loaded: %s", name, err)

    def remove_model(self, name: str) -> None:
        for held in (self.windows, self.baselines, self.reports, self.baseline_errors):
            held.pop(name, None)

    def observe(self, model: str, outputs: list[RewardOutput]) -> None:
        self.windows[model].observe(outputs)

    def snapshot(self) -> dict[str, tuple]:
        return {name: window.snapshot() for name, window in self.windows.items()}

    def compute(self, snapshots: dict[str, tuple], now: float | None = None) -> dict[str, ModelReport]:
        """Reports from snapshots; pure numpy, safe to run off the event loop."""
        now = time.time() if now is None else now
        reports = {}
        for name, (values, scores, lengths) in snapshots.items():
            baseline = self.baselines.get(name, {})
            dims = {}
            for dim in sorted(set(values) | set(baseline)):
                live = values.get(dim, np.empty(0))
                report = DimensionReport(int(live.size), float(live.mean()) if live.size else None,
                                         float(live.std()) if live.size else None, None)
                if dim in baseline and live.size >= self.min_samples:
                    report.statistics = compare(live, baseline[dim])
                    report.thresholds = self.limits(baseline[dim], live.size)
                    report.exceeded = [s for s, limit in report.thresholds.items()
                                       if abs(report.statistics.get(s, 0.0)) > limit]
                dims[dim] = report
            score_ref = baseline.get(SCORE)
            reports[name] = ModelReport(
                model=name, computed_at=now, window=self.window,
                baseline=self.baseline_summary(name),
                dimensions=dims,
                length_correlation=pearson(scores, lengths) if scores.size >= self.min_samples else None,
                reference_length_correlation=score_ref.length_correlation if score_ref else None,
            )
        return reports

    def limits(self, baseline: DimensionBaseline, size: int) -> dict[str, float]:
        """The limits a dimension's window of `size` values is judged against (see the
        module's docstring)."""
        if self.thresholds is not None:
            return self.thresholds
        return window_limits(baseline, size) if baseline.thresholds is not None else FALLBACK_THRESHOLDS

    async def refresh(self) -> dict[str, ModelReport]:
        now = time.time()  # before the snapshot: a report covers what was observed until computed_at
        snapshots = self.snapshot()
        self.reports = await asyncio.to_thread(self.compute, snapshots, now)
        return self.reports

    async def run(self, interval_s: float) -> None:
        """The periodic task: recompute every `interval_s` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("drift computation failed")

    def as_json(self) -> dict:
        return {
            "window": self.window,
            "min_samples": self.min_samples,
            "thresholds": self.thresholds,
            "models": {name: self._model_json(name) for name in self.windows},
        }

    def baseline_summary(self, name: str) -> dict | None:
        """Where the model's baseline came from; None without one."""
        score_ref = self.baselines.get(name, {}).get(SCORE)
        if score_ref is None:
            return None
        return {"revision": score_ref.revision, "source": score_ref.source, "count": score_ref.count}

    def _model_json(self, name: str) -> dict:
        report = self.reports.get(name)
        body = report.as_json() if report is not None else {
            "model": name, "computed_at": None, "window": self.window, "baseline": self.baseline_summary(name)}
        if name in self.baseline_errors:
            body["baseline_error"] = self.baseline_errors[name]
        return body
