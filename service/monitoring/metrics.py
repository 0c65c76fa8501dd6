"""Prometheus metrics (`GET /metrics`), all named `rewardserve_*` in base units (seconds,
bytes, tokens, items).

Where they come from:

- request latency, by protocol, route template, model and status: an ASGI middleware for
  every HTTP route (service.http.middleware: the KServe v2 HTTP, ranking and compatibility
  routes included) and a grpc.aio interceptor for every gRPC method
  (service.grpc.interceptor: rewardserve.v1, KServe v2, health). The
  model label is set by the model's runner when a request reaches it, so it is always a
  configured model name or "" (never a string from the request); the endpoint is the route
  template (`/v2/models/{name}/infer`), "unmatched" for paths no route serves, or the gRPC
  method;
- stages, batches, rejections and time-outs: the hooks a ModelRunner calls
  (service.engine.observer), one `ModelMetrics` per served model;
- pipelines' components and rewards: the hooks a Pipeline calls
  (service.monitoring.pipeline_metrics);
- queue depth, model status, cache counters, drift and canary: read when scraped
  (`StateCollector`), so they cost nothing between scrapes.

Buckets (seconds): 100 us to 60 s, roughly x2.5 apart, so one histogram resolves an
in-process cache hit (well under a millisecond), an interactive forward (milliseconds to
tens of milliseconds on a GPU) and a multi-second bulk batch or a CPU forward of long
inputs. Token buckets are powers of two from 16 to 65536 (max_batch_tokens is 16384 by
default); batch sizes powers of two to 512; the padding ratio 0 to 1 in steps of 0.05 to
0.2.

One process per device: a server is one uvicorn process that owns its models, their
schedulers and the in-process cache, so its metrics live in one in-process registry and
prometheus-client's multiprocess mode is not used. Scale out with more processes (one per
GPU, or more replicas), each scraped as its own target.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from models.heads import RewardOutput
from models.inputs import Encoded
from service.engine.forward_thread import ItemFailed
from service.engine.observer import RunnerObserver
from service.engine.scheduler import ItemTimeout
from service.protocol.enums import Priority

log = logging.getLogger("rewardserve")

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = tuple(2.0 ** k for k in range(4, 17))  # 16 .. 65536
BATCH_SIZE_BUCKETS = tuple(2.0 ** k for k in range(10))  # 1 .. 512
RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
DRIFT_GAUGES = {  # statistic (service.monitoring.baseline.compare) -> metric name
    "psi": "rewardserve_drift_psi",
    "js_distance": "rewardserve_drift_js_distance",
    "ks": "rewardserve_drift_ks_statistic",
    "wasserstein": "rewardserve_drift_wasserstein_normalized",
    "mean_shift": "rewardserve_drift_mean_shift",
    "std_shift": "rewardserve_drift_std_shift",
}
UNMATCHED = "unmatched"
MODEL_STATUSES = ("loading", "ready", "failed")


# ---- the request's labels ------------------------------------------------------------


@dataclass
class RequestLabels:
    model: str = ""


_current: ContextVar[RequestLabels | None] = ContextVar("rewardserve_request_labels", default=None)


def note_model(name: str) -> None:
    """Called when a request reaches a model's runner: that model labels its latency."""
    labels = _current.get()
    if labels is not None:
        labels.model = name


def task_labels() -> RequestLabels:
    """Fresh labels for the running task and the tasks it starts, never reset: for a caller
    that runs in a task of its own but may end in another context (a gRPC call's stream
    generator can be closed from elsewhere, where resetting a context variable fails)."""
    labels = RequestLabels()
    _current.set(labels)
    return labels


@contextmanager
def request_scope() -> Iterator[RequestLabels]:
    """The labels `note_model` fills in while inside (tasks started inside share them)."""
    labels = RequestLabels()
    token = _current.set(labels)
    try:
        yield labels
    finally:
        _current.reset(token)


# ---- the metrics ---------------------------------------------------------------------


class Metrics:
    """Every metric of one server, in a registry of its own (several apps may live in
    one process, as in the tests)."""

    def __init__(self):
        disable_created_metrics()  # no *_created series: they double the series count for nothing
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.request_seconds = Histogram(
            "rewardserve_request_duration_seconds",
            "Time from a request arriving to its response being sent, by protocol, route template, model and status.",
            ["protocol", "endpoint", "model", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("rewardserve_requests_in_flight", "Requests being handled.", ["protocol"], registry=r)
        self.queue_wait = Histogram(
            "rewardserve_queue_wait_seconds", "Per item: time queued in the scheduler until its batch formed.",
            ["model", "priority"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokenization = Histogram(
            "rewardserve_tokenization_seconds", "Per request: tokenizing every item.",
            ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.forward = Histogram(
            "rewardserve_forward_seconds",
            "Per batch: the model call on the forward thread, reading scores out of the logits included.",
            ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.postprocess = Histogram(
            "rewardserve_postprocess_seconds",
            "Per request: from the scheduler's results to the outputs in request order (cache writes, drift hand-off).",
            ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.cache_hit = Histogram(
            "rewardserve_cache_hit_seconds",
            "Per request with cache hits: time from reaching the model's runner to its hits being ready "
            "(tokenization and lookup).",
            ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "rewardserve_batch_size", "Items per forward.", ["model", "priority"],
            buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram(
            "rewardserve_batch_padded_tokens", "Padded tokens (longest item x items) per forward.",
            ["model"], buckets=TOKEN_BUCKETS, registry=r)
        self.batch_real_tokens = Counter(
            "rewardserve_batch_real_tokens", "Real (unpadded) tokens forwarded.", ["model"], registry=r)
        self.padding_ratio = Histogram(
            "rewardserve_batch_padding_ratio", "Per forward: 1 - real tokens / padded tokens.",
            ["model"], buckets=RATIO_BUCKETS, registry=r)
        self.input_tokens = Histogram(
            "rewardserve_input_tokens", "Per item: tokens after encoding (cache hits included).",
            ["model"], buckets=TOKEN_BUCKETS, registry=r)
        self.items = Counter(
            "rewardserve_scored_items", "Items answered with a score (cache hits included).", ["model"], registry=r)
        self.rejected = Counter(
            "rewardserve_rejected_requests", "Requests refused because the model's queue was full (429 queue_full).",
            ["model"], registry=r)
        self.timed_out = Counter(
            "rewardserve_timed_out_items", "Items whose deadline passed while queued (504 deadline_exceeded).",
            ["model"], registry=r)
        self.failed = Counter(
            "rewardserve_failed_items", "Items the model raised on (500 inference_failed).", ["model"], registry=r)

    def observe_request(self, protocol: str, endpoint: str, model: str, status: int | str, seconds: float) -> None:
        self.request_seconds.labels(protocol, endpoint, model, str(status)).observe(seconds)


class ModelMetrics(RunnerObserver):
    """The runner hooks of one model: Prometheus, and the model's drift window."""

    def __init__(self, name: str, metrics: Metrics, drift=None):
        self.name, self.metrics, self.drift = name, metrics, drift
        self._tokenization = metrics.tokenization.labels(name)
        self._forward = metrics.forward.labels(name)
        self._postprocess = metrics.postprocess.labels(name)
        self._cache_hit = metrics.cache_hit.labels(name)
        self._batch_tokens = metrics.batch_tokens.labels(name)
        self._real_tokens = metrics.batch_real_tokens.labels(name)
        self._padding = metrics.padding_ratio.labels(name)
        self._input_tokens = metrics.input_tokens.labels(name)
        self._items = metrics.items.labels(name)
        self._rejected = metrics.rejected.labels(name)
        self._timed_out = metrics.timed_out.labels(name)
        self._failed = metrics.failed.labels(name)

    def request(self) -> None:
        note_model(self.name)

    def tokenized(self, encoded: list[Encoded], seconds: float) -> None:
        self._tokenization.observe(seconds)
        for enc in encoded:
            self._input_tokens.observe(enc.num_tokens)

    def cache_hits(self, hits: int, seconds: float) -> None:
        self._cache_hit.observe(seconds)

    def rejected(self, items: int) -> None:
        self._rejected.inc()

    def scheduled(self, results: list) -> None:
        timed_out = sum(isinstance(r, ItemTimeout) for r in results)
        failed = sum(isinstance(r, ItemFailed) for r in results)
        if timed_out:
            self._timed_out.inc(timed_out)
        if failed:
            self._failed.inc(failed)

    def scored(self, outputs: list[RewardOutput], postprocess_seconds: float) -> None:
        self._postprocess.observe(postprocess_seconds)
        self._items.inc(len(outputs))
        if self.drift is not None:
            self.drift.observe(self.name, outputs)

    def batch(self, record) -> None:
        try:  # called from the scheduler's loop: never let a metrics problem stop it
            priority = record.priority.value
            self.metrics.batch_size.labels(self.name, priority).observe(record.size)
            self._batch_tokens.observe(record.padded_tokens)
            self._real_tokens.inc(record.real_tokens)
            self._padding.observe(record.padding_ratio)
            self._forward.observe(record.forward_s)
            queue_wait = self.metrics.queue_wait.labels(self.name, priority)
            for seconds in record.queue_wait_s:
                queue_wait.observe(seconds)
        except Exception:
            log.exception("batch metrics failed")


# ---- read at scrape time -------------------------------------------------------------


class StateCollector:
    """Gauges and counters read from the live objects when Prometheus scrapes."""

    def __init__(self, registry, drift=None, canary=None):
        self.registry, self.drift, self.canary = registry, drift, canary

    def describe(self):
        return []  # collected only at scrape time; nothing to check at registration

    def collect(self):
        yield from self._queues_and_models()
        if self.registry.cache is not None:
            yield from self._cache(self.registry.cache)
        if self.drift is not None:
            yield from self._drift()
        if self.canary is not None:
            yield from self._canary()

    def _queues_and_models(self):
        items = GaugeMetricFamily("rewardserve_queue_items", "Items queued, per model and priority class.",
                                  labels=["model", "priority"])
        tokens = GaugeMetricFamily("rewardserve_queue_tokens", "Tokens queued, per model and priority class.",
                                   labels=["model", "priority"])
        wait = GaugeMetricFamily("rewardserve_queue_wait_estimate_seconds",
                                 "Forward work queued ahead of a new item, per model and priority class, at the "
                                 "measured throughput (what queue.max_wait_s bounds; absent before the first batch).",
                                 labels=["model", "priority"])
        status = GaugeMetricFamily("rewardserve_model_status",
                                   "1 for the model's current status (loading: loading and warming up).",
                                   labels=["model", "status"])
        load = GaugeMetricFamily("rewardserve_model_load_seconds", "Time the model took to load and warm up.",
                                 labels=["model"])
        for name, runner in self.registry.runners.items():
            for priority in Priority:
                n, t = runner.scheduler.admission.depth(priority)
                items.add_metric([name, priority.value], n)
                tokens.add_metric([name, priority.value], t)
                estimate = runner.scheduler.admission.estimated_wait_s(priority)
                if estimate is not None:
                    wait.add_metric([name, priority.value], estimate)
            for state in MODEL_STATUSES:
                status.add_metric([name, state], 1.0 if runner.status == state else 0.0)
            if runner.load_seconds is not None:
                load.add_metric([name], runner.load_seconds)
        yield from (items, tokens, wait, status, load)

    def _cache(self, cache):
        """Per tier: the lookups that reached it and what became of them. The LRU sees
        every lookup; Redis those the LRU missed (all of them without an LRU)."""
        stats = cache.stats
        tiers = [t for t, present in (("lru", cache.lru), ("redis", cache.redis)) if present is not None]
        lookups = sum(stats.hits.values()) + stats.misses
        hits = CounterMetricFamily("rewardserve_cache_hits", "Items answered by a cache tier.", labels=["tier"])
        misses = CounterMetricFamily("rewardserve_cache_misses", "Items a cache tier was asked for and did not hold.",
                                     labels=["tier"])
        errors = CounterMetricFamily("rewardserve_cache_errors", "Cache operations that failed (fail-open), per tier.",
                                     labels=["tier"])
        reached = lookups
        for tier in tiers:
            hits.add_metric([tier], stats.hits[tier])
            misses.add_metric([tier], reached - stats.hits[tier])
            reached -= stats.hits[tier]
        if cache.redis is not None:
            errors.add_metric(["redis"], stats.errors)
        yield CounterMetricFamily("rewardserve_cache_lookups", "Items looked up in the result cache.", value=lookups)
        yield from (hits, misses, errors)
        if cache.lru is not None:
            yield GaugeMetricFamily("rewardserve_cache_lru_bytes", "Bytes held by the in-process LRU.",
                                    value=cache.lru.bytes)
            yield GaugeMetricFamily("rewardserve_cache_lru_entries", "Entries in the in-process LRU.",
                                    value=len(cache.lru))

    def _drift(self):
        drift = self.drift
        stats = {s: GaugeMetricFamily(name, f"Reward drift: {s} of the live window against the baseline.",
                                      labels=["model", "dimension"]) for s, name in DRIFT_GAUGES.items()}
        mean = GaugeMetricFamily("rewardserve_drift_window_mean",
                                 "Mean of the live drift window's values (a pipeline verifier's: its pass rate).",
                                 labels=["model", "dimension"])
        observed = GaugeMetricFamily("rewardserve_drift_window_observations",
                                     "Values in the live drift window (capacity: rewardserve_drift_window_capacity).",
                                     labels=["model", "dimension"])
        capacity = GaugeMetricFamily("rewardserve_drift_window_capacity",
                                     "Values the live drift window keeps per dimension.",
                                     value=drift.window)
        computed = GaugeMetricFamily("rewardserve_drift_last_computed_timestamp_seconds",
                                     "Unix time the drift statistics were last computed.", labels=["model"])
        corr = GaugeMetricFamily("rewardserve_drift_length_correlation",
                                 "Pearson correlation of score and num_tokens over the live window (style bias).",
                                 labels=["model"])
        ref_corr = GaugeMetricFamily("rewardserve_drift_reference_length_correlation",
                                     "The same correlation over the baseline's reference run.", labels=["model"])
        loaded = GaugeMetricFamily("rewardserve_drift_baseline_loaded", "1 when the model has a drift baseline.",
                                   labels=["model"])
        exceeded = GaugeMetricFamily("rewardserve_drift_exceeded",
                                     "1 when the statistic was past its limit, last computed.",
                                     labels=["model", "dimension", "statistic"])
        thresholds = GaugeMetricFamily("rewardserve_drift_threshold",
                                       "The limit each drift statistic of a model's dimension is judged against "
                                       "(calibrated into its baseline and tightened to the window's size, "
                                       "or drift.thresholds).",
                                       labels=["model", "dimension", "statistic"])
        for name in drift.windows:
            loaded.add_metric([name], 1.0 if drift.baselines.get(name) else 0.0)
            report = drift.reports.get(name)
            if report is None:
                continue
            computed.add_metric([name], report.computed_at)
            if report.length_correlation is not None:
                corr.add_metric([name], report.length_correlation)
            if report.reference_length_correlation is not None:
                ref_corr.add_metric([name], report.reference_length_correlation)
            for dim, dim_report in report.dimensions.items():
                observed.add_metric([name, dim], dim_report.observations)
                if dim_report.live_mean is not None:
                    mean.add_metric([name, dim], dim_report.live_mean)
                for s, value in (dim_report.statistics or {}).items():
                    stats[s].add_metric([name, dim], value)
                for s, limit in (dim_report.thresholds or {}).items():
                    thresholds.add_metric([name, dim, s], limit)
                    exceeded.add_metric([name, dim, s], 1.0 if s in dim_report.exceeded else 0.0)
        yield from (*stats.values(), mean, observed, capacity, computed, corr, ref_corr, loaded, exceeded, thresholds)

    def _canary(self):
        canary = self.canary
        dev = GaugeMetricFamily("rewardserve_canary_max_abs_deviation",
                                "Largest |score - expected| over the golden set's numbers at the last run.",
                                labels=["model"])
        rho = GaugeMetricFamily("rewardserve_canary_spearman",
                                "Spearman rank correlation of the golden set's scores with the expected ones.",
                                labels=["model"])
        passed = GaugeMetricFamily("rewardserve_canary_passed", "1 when the last canary run passed.", labels=["model"])
        items = GaugeMetricFamily("rewardserve_canary_items", "Items in the golden set.", labels=["model"])
        tolerance = GaugeMetricFamily("rewardserve_canary_tolerance",
                                      "The largest deviation the model may show (by its dtype).", labels=["model"])
        when = GaugeMetricFamily("rewardserve_canary_last_run_timestamp_seconds", "Unix time of the last canary run.",
                                 labels=["model"])
        runs = CounterMetricFamily("rewardserve_canary_runs",
                                   "Canary runs, by trigger and outcome (pass, fail, error).",
                                   labels=["model", "trigger", "outcome"])
        for name, result in canary.results.items():
            when.add_metric([name], result.checked_at)
            passed.add_metric([name], 1.0 if result.passed else 0.0)
            tolerance.add_metric([name], result.tolerance)
            if result.max_abs_deviation is not None:
                dev.add_metric([name], result.max_abs_deviation)
                items.add_metric([name], result.items)
            if result.spearman is not None:
                rho.add_metric([name], result.spearman)
        for (name, trigger, outcome), count in canary.runs.items():
            runs.add_metric([name, trigger, outcome], count)
        yield from (dev, rho, passed, items, tolerance, when, runs)
