"""Prometheus metrics and drift windows of reward pipelines, labelled by pipeline and
component: each rule's and user function's call time, each served model's call time for
the pipeline, every component value by status, ok values and ensemble spreads, and the
reward per item. A pipeline's drift windows are those of a model named like it: `score` is
the reward, `dim:<component>` a component's ok values (a verifier's 0/1 values make its
mean shift the change of its pass rate, in reference standard deviations).

Value buckets serve both kinds of component: 0 and 1 are edges, so a verifier's values
fall on them exactly (1 - the share at or below 0 is its pass rate), and the rest resolve
a sigmoid in quarters and a raw reward model's logit from -10 to 10. prometheus-client
gives a histogram with negative buckets no `_sum`, so means are the drift windows'
(`rewardserve_drift_window_mean`).
"""

from __future__ import annotations

import logging
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Histogram

from models.heads import RewardOutput
from service.config.pipeline import EnsembleComponent, PythonComponent, RuleComponent
from service.monitoring.metrics import LATENCY_BUCKETS, note_model
from service.pipelines.observer import PipelineObserver
from service.pipelines.pipeline import Pipeline
from service.pipelines.values import PipelineOutput, Status

log = logging.getLogger("rewardserve")

VALUE_BUCKETS = (-10.0, -5.0, -3.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 2.0, 3.0, 5.0, 10.0)
SPREAD_BUCKETS = (0.0, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
STATUSES = get_args(Status)


class PipelineFamilies:
    """The pipeline metric families of one server's registry, shared by its pipelines."""

    def __init__(self, registry: CollectorRegistry):
        r = registry
        self.component_seconds = Histogram(
            "rewardserve_pipeline_component_duration_seconds",
            "Per item: a rule's or user function's call in the worker pool, time-outs and errors included.",
            ["pipeline", "component"], buckets=LATENCY_BUCKETS, registry=r)
        self.model_call_seconds = Histogram(
            "rewardserve_pipeline_model_call_duration_seconds",
            "Per request: a served model scoring the request's items for the pipeline (queueing included).",
            ["pipeline", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.component_calls = Counter(
            "rewardserve_pipeline_component_calls", "Per item: component values by status (ok, timeout, error).",
            ["pipeline", "component", "status"], registry=r)
        self.component_value = Histogram(
            "rewardserve_pipeline_component_value",
            "Per item: a component's value when ok, after its transforms (a verifier's: 0 or 1).",
            ["pipeline", "component"], buckets=VALUE_BUCKETS, registry=r)
        self.spread = Histogram(
            "rewardserve_pipeline_ensemble_spread",
            "Per item: an ensemble's standard deviation across its models' scores.",
            ["pipeline", "component"], buckets=SPREAD_BUCKETS, registry=r)
        self.reward = Histogram(
            "rewardserve_pipeline_reward", "Per item: the pipeline's reward.", ["pipeline"],
            buckets=VALUE_BUCKETS, registry=r)
        self.failed = Counter(
            "rewardserve_pipeline_failed_items", "Items failed because a component did (on_component_error 'fail').",
            ["pipeline"], registry=r)


class PipelineMetrics(PipelineObserver):
    """The hooks of one pipeline: Prometheus, and its drift windows. Every series is made
    up front, so a status that has not happened yet reads 0."""

    def __init__(self, pipeline: Pipeline, families: PipelineFamilies, drift=None):
        name = self.name = pipeline.name
        self.drift = drift
        components = pipeline.config.components
        self._seconds = {c.name: families.component_seconds.labels(name, c.name)
                         for c in components if isinstance(c, (RuleComponent, PythonComponent))}
        self._models = {m: families.model_call_seconds.labels(name, m) for m in pipeline.config.served_models}
        self._calls = {(c.name, s): families.component_calls.labels(name, c.name, s)
                       for c in components for s in STATUSES}
        self._values = {c.name: families.component_value.labels(name, c.name) for c in components}
        self._spreads = {c.name: families.spread.labels(name, c.name)
                         for c in components if isinstance(c, EnsembleComponent)}
        self._reward = families.reward.labels(name)
        self._failed = families.failed.labels(name)

    def component(self, name: str, status: str, value: float | None, seconds: float | None) -> None:
        self._calls[name, status].inc()
        if value is not None:
            self._values[name].observe(value)
        if seconds is not None:
            self._seconds[name].observe(seconds)

    def model_call(self, model: str, seconds: float) -> None:
        self._models[model].observe(seconds)

    def spread(self, name: str, value: float) -> None:
        self._spreads[name].observe(value)

    def scored(self, results: list[PipelineOutput | Exception]) -> None:
        note_model(self.name)  # the request's latency is the pipeline's, not its last model's
        try:
            rewards = [out for out in results if isinstance(out, PipelineOutput)]
            for out in rewards:
                self._reward.observe(out.score)
            if len(rewards) < len(results):
                self._failed.inc(len(results) - len(rewards))
            if self.drift is not None and rewards:
                self.drift.observe(self.name, [drift_view(out) for out in rewards])
        except Exception:
            log.exception("pipeline metrics failed")


def drift_view(out: PipelineOutput) -> RewardOutput:
    """What the drift windows see of an item: its reward, and the values of its components
    that were ok (a default stood in for a failure is not the component's value)."""
    return RewardOutput(score=out.score, num_tokens=out.num_tokens,
                        dimensions={name: v.value for name, v in out.components.items() if v.status == "ok"})
