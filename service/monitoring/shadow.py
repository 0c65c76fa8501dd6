"""Shadow scoring's agreement: per live model and its candidate, a bounded window of the
recent mirrored items' (live, candidate) values per dimension, the statistics
(service.monitoring.agreement) over it, and both read out: `GET /v1/shadow` (`as_json`) and
Prometheus (`ShadowCollector`, read when scraped).

Dimensions: `score`, and `dim:<name>` for each named dimension both models give (a process
model's `score` is its step aggregate). The statistics are recomputed only when new pairs
have come since they were last read."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from models.heads import RewardOutput
from service.core.shadow import Mirrored, ShadowLane, ShadowObserver, Shadows
from service.monitoring.agreement import agreement
from service.monitoring.baseline import SCORE, dimension_label

log = logging.getLogger("rewardserve")
OUTCOMES = ("mirrored", "dropped", "failed")


def paired_values(live: RewardOutput, candidate: RewardOutput) -> dict[str, tuple[float, float]]:
    """One item's (live, candidate) value per dimension both models give."""
    values = {SCORE: (live.score, candidate.score)}
    shared = (live.dimensions or {}).keys() & (candidate.dimensions or {}).keys()
    for name in sorted(shared):
        values[dimension_label(name)] = (live.dimensions[name], candidate.dimensions[name])
    return values


class PairWindow:
    """The last `size` mirrored items of one live model: each one's prompt and paired values."""

    def __init__(self, size: int):
        self.items: deque[tuple[object, dict[str, tuple[float, float]]]] = deque(maxlen=size)
        self.version = 0  # items appended, ever: statistics are stale when it moved
        self._report: tuple[int, dict] | None = None

    def add(self, items: Sequence[Mirrored], outputs: Sequence[RewardOutput]) -> None:
        for item, out in zip(items, outputs):
            self.items.append((item.prompt, paired_values(item.live, out)))
        self.version += len(items)

    def dimensions(self) -> dict[str, dict]:
        """Per dimension, the statistics of its pairs in the window (cached until new pairs come)."""
        if self._report is not None and self._report[0] == self.version:
            return self._report[1]
        names = sorted({dim for _, values in self.items for dim in values}, key=lambda d: (d != SCORE, d))
        report = {}
        for dim in names:
            rows = [(prompt, values[dim]) for prompt, values in self.items if dim in values]
            pairs = np.array([pair for _, pair in rows], dtype=np.float64)
            report[dim] = agreement(pairs[:, 0], pairs[:, 1], [prompt for prompt, _ in rows])
        self._report = (self.version, report)
        return report


class ShadowMonitor(ShadowObserver):
    """Every lane's window; installed as the lanes' observer."""

    def __init__(self, shadows: Shadows):
        self.shadows = shadows
        self.windows = {live: PairWindow(lane.window) for live, lane in shadows.lanes.items()}
        shadows.observe(self)

    def paired(self, live: str, candidate: str, items: Sequence[Mirrored], outputs: Sequence[RewardOutput]) -> None:
        try:
            self.windows[live].add(items, outputs)
        except Exception:
            log.exception("shadow statistics of %s failed", live)

    def as_json(self) -> dict:
        """Per live model: its candidate, the lane's settings and counts, and per dimension
        the statistics of the window."""
        return {"models": {live: self._lane_json(lane) for live, lane in self.shadows.lanes.items()}}

    def _lane_json(self, lane: ShadowLane) -> dict:
        window = self.windows[lane.live]
        return {"candidate": lane.candidate, "share": lane.share, "window": lane.window,
                "queue_items": lane.queue.maxsize, "queued": lane.queue.qsize(),
                "items": {outcome: getattr(lane, outcome) for outcome in OUTCOMES},
                "dimensions": window.dimensions()}


class ShadowCollector:
    """Shadow scoring's counters and agreement gauges, read from the lanes and windows when
    Prometheus scrapes."""

    def __init__(self, monitor: ShadowMonitor):
        self.monitor = monitor

    def describe(self):
        return []  # collected only at scrape time

    def collect(self):
        labels = ["model", "candidate"]
        items = CounterMetricFamily("rewardserve_shadow_items",
                                    "Live items picked for the shadow candidate, by outcome (mirrored: scored by it; "
                                    "dropped: its queue was full; failed: it could not score them).",
                                    labels=[*labels, "outcome"])
        queued = GaugeMetricFamily("rewardserve_shadow_queue_items", "Mirrored items waiting for the candidate.",
                                   labels=labels)
        pairs = GaugeMetricFamily("rewardserve_shadow_window_pairs",
                                  "(live, candidate) pairs in the agreement window, per dimension.",
                                  labels=[*labels, "dimension"])
        stats = GaugeMetricFamily("rewardserve_shadow_agreement",
                                  "Agreement of the candidate with the live model over the window, per dimension "
                                  "(spearman, mean_shift, order_agreement, drift_*: docs/shadow.md).",
                                  labels=[*labels, "dimension", "statistic"])
        for live, lane in self.monitor.shadows.lanes.items():
            for outcome in OUTCOMES:
                items.add_metric([live, lane.candidate, outcome], getattr(lane, outcome))
            queued.add_metric([live, lane.candidate], lane.queue.qsize())
            for dim, report in self.monitor.windows[live].dimensions().items():
                pairs.add_metric([live, lane.candidate, dim], report["pairs"])
                for name, value in report["statistics"].items():
                    if value is not None:
                        stats.add_metric([live, lane.candidate, dim, name], value)
        yield from (items, queued, pairs, stats)
