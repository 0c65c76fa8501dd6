"""A server's monitoring, assembled in one place: the Prometheus metrics, each model's
runner hooks and each pipeline's hooks, reward drift, the golden-set canary, shadow scoring's
agreement, and the background tasks that keep drift and canary results current. Transports
only expose what this holds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from pathlib import Path

from models.errors import ModelLoadError
from service.config import Settings
from service.core.shadow import Shadows
from service.engine.registry import ModelRegistry
from service.engine.runner import ModelRunner
from service.monitoring.baseline import BASELINE_FILENAME
from service.monitoring.canary import CanaryMonitor
from service.monitoring.drift import DriftMonitor
from service.monitoring.metrics import Metrics, ModelMetrics, StateCollector
from service.monitoring.pipeline_metrics import PipelineFamilies, PipelineMetrics
from service.monitoring.shadow import ShadowCollector, ShadowMonitor
from service.pipelines.registry import PipelineSet


class Monitoring:
    def __init__(self, registry: ModelRegistry, settings: Settings, pipelines: PipelineSet, shadows: Shadows):
        self.registry = registry
        self.settings = settings
        self.pipelines = pipelines
        self.metrics = Metrics()
        self.drift = DriftMonitor(settings.drift.window, settings.drift.min_samples, settings.drift.thresholds)
        self.canary = CanaryMonitor(registry, settings.canary.tolerance, settings.canary.tolerance_half,
                                    settings.canary.min_spearman)
        for name, runner in registry.runners.items():
            self.follow(name, runner, None)
        registry.watchers.append(self.follow)
        families = PipelineFamilies(self.metrics.registry)
        for name, pipeline in pipelines.pipelines.items():
            baseline = pipeline.config.drift_baseline
            self.drift.add_model(name, baseline and Path(baseline).expanduser(), required=True)
            pipeline.observer = PipelineMetrics(pipeline, families, self.drift)
        self.metrics.registry.register(StateCollector(registry, self.drift, self.canary))
        self.shadow = ShadowMonitor(shadows)
        self.metrics.registry.register(ShadowCollector(self.shadow))
        self._tasks: list[asyncio.Task] = []

    def follow(self, name: str, runner: ModelRunner | None, replaced: ModelRunner | None) -> None:
        """A model put in service, reloaded or unloaded: a new runner gets the hooks, a fresh
        drift window and the baseline of its own directory, and the canary's last result (of
        the revision before) is dropped. The replaced runner's last calls still count in the
        metrics, not in the new revision's drift window."""
        self.canary.results.pop(name, None)
        if replaced is not None:
            replaced.observer = ModelMetrics(name, self.metrics)
        if runner is None:
            self.drift.remove_model(name)
            return
        directory = _model_dir(runner)
        self.drift.add_model(name, directory and directory / BASELINE_FILENAME)
        runner.observer = ModelMetrics(name, self.metrics, self.drift)

    def revision(self, name: str) -> str | None:
        """What a drift window's values come from: the model's revision, or the pipeline's
        (None until it is loaded)."""
        if name in self.pipelines.pipelines:
            return self.pipelines.revision(name) if self.pipelines.status(name) == "ready" else None
        model = self.registry.runners[name].model
        return model.revision if model else None

    def start(self, loading: Awaitable | None) -> None:
        """Drift recomputation and canary runs, on the running event loop."""
        self._tasks = [
            asyncio.create_task(self.drift.run(self.settings.drift.interval_s), name="drift"),
            asyncio.create_task(self.canary.run(loading, self.settings.canary.interval_s), name="canary"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _model_dir(runner) -> Path | None:
    """Where a model's baseline lies: its directory; none for a hub model not in the hub
    cache yet (it is fetched as it loads, after this; a restart reads its baseline)."""
    try:
        return runner.config.resolved_path()
    except ModelLoadError:
        return None
