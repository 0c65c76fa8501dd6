"""The configured pipelines and the worker pool their rules run in: started with the server,
each ready once its models are and its user functions import in a worker."""

from __future__ import annotations

import hashlib
import json
import logging

from service.config import Settings
from service.config.pipeline import PythonComponent
from service.engine.registry import ModelRegistry
from service.pipelines.pipeline import Pipeline, model_calls
from service.pipelines.workers import RulePool
from service.protocol.enums import ModelKind

log = logging.getLogger("rewardserve")


class PipelineSet:
    def __init__(self, settings: Settings, models: ModelRegistry):
        self.models = models
        reads_text = any(c.type in ("rule", "python") for p in settings.pipelines for c in p.components)
        self.pool = RulePool(settings.rules.workers) if reads_text else None
        self.configs = {config.name: config for config in settings.pipelines}
        self.pipelines: dict[str, Pipeline] = {}  # those whose configuration holds up
        self.errors: dict[str, str] = {}
        for config in settings.pipelines:
            try:
                self.pipelines[config.name] = Pipeline(config, self.pool, settings.rules.timeout_s, self.tokenizer_path)
            except ValueError as err:
                self.errors[config.name] = str(err)
        self.started = False
        self._checked: dict[str, tuple] = {}  # pipeline -> the model revisions it was found fit with
        self._revisions: dict[tuple, str] = {}

    def tokenizer_path(self, name: str) -> str:
        """Where the served model `name` loaded its tokenizer from (a rule's worker loads it
        there); any other name is taken for a tokenizer directory."""
        runner = self.models.runners.get(name)
        return runner.model.encoder.tokenizer.name_or_path if runner is not None and runner.model else name

    async def start(self) -> None:
        """Starts the worker pool and resolves every user function in it: a pipeline whose
        pool or function fails is failed, with the reason."""
        if self.pool is not None:
            try:
                await self.pool.start()
            except Exception as err:  # noqa: BLE001 - every pipeline that needs the pool reports it
                self.errors |= {name: f"the rule worker pool did not start: {err}"
                                for name, p in self.pipelines.items() if p.reads_text}
        for name, pipeline in self.pipelines.items():
            for c in pipeline.config.components:
                if isinstance(c, PythonComponent) and name not in self.errors:
                    try:
                        await self.pool.check_python(c.function, c.timeout_s or pipeline.default_timeout_s)
                    except ValueError as err:
                        self.errors[name] = f"component {c.name!r}: {err}"
        for name, error in self.errors.items():
            log.error("pipeline %s failed: %s", name, error)
        self.started = True

    def status(self, name: str) -> str:
        """failed (itself or a model it uses), loading (until it and its models are up), ready
        (once its models, loaded, have what its components read)."""
        models = [self.models.runners[m].status for m in self.configs[name].served_models]
        if name in self.errors or "failed" in models:
            return "failed"
        if not (self.started and all(s == "ready" for s in models)):
            return "loading"
        revisions = self._model_revisions(name)
        if self._checked.get(name) != revisions:  # checked once per set of loaded models
            if (problem := self._unfit_model(name)) is not None:
                self.errors[name] = problem
                log.error("pipeline %s failed: %s", name, problem)
                return "failed"
            self._checked[name] = revisions
        return "ready"

    def _model_revisions(self, name: str) -> tuple[tuple[str, str], ...]:
        return tuple((m, self.models.runners[m].model.revision) for m in sorted(self.configs[name].served_models))

    def _unfit_model(self, name: str) -> str | None:
        """What a loaded model lacks that a component reads of it: a dimension, step rewards
        to aggregate, reference statistics to z-score against."""
        for c in self.configs[name].components:
            for call in model_calls(c):
                model, spec = call.model, self.models.runners[call.model].model.spec
                dims = spec.multi_objective.dimensions if spec.kind == ModelKind.multi_objective else []
                if c.type == "model" and c.dimension is not None and c.dimension not in dims:
                    return f"component {c.name!r}: model {model!r} has no dimension {c.dimension!r} (it has {dims})"
                if c.type == "model" and c.aggregate is not None and spec.kind != ModelKind.process:
                    return f"component {c.name!r}: aggregate is for process models; {model!r} is {spec.kind.value}"
                if call.zscore and spec.reference_stats is None:
                    return (f"component {c.name!r}: model {model!r} has no reference_stats to z-score against "
                            "(`rewardserve calibrate` computes them)")
        return None

    def error(self, name: str) -> str | None:
        if name in self.errors:
            return self.errors[name]
        failed = [m for m in sorted(self.configs[name].served_models)
                  if self.models.runners[m].status == "failed"]
        return f"its model {failed[0]!r} failed to load: {self.models.runners[failed[0]].error}" if failed else None

    def revision(self, name: str) -> str:
        """sha256 over the pipeline's configuration and its models' revisions: a change to
        either (its drift baseline's path aside) is a new revision."""
        key = (name, self._model_revisions(name))
        if key not in self._revisions:
            scoring = self.configs[name].model_dump(mode="json", exclude={"drift_baseline"})  # drift changes no score
            text = json.dumps([scoring, dict(key[1])], sort_keys=True)
            self._revisions[key] = hashlib.sha256(text.encode()).hexdigest()
        return self._revisions[key]

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
