"""Models loaded, reloaded and unloaded while the server runs, whichever transport asks (the
admin routes, KServe's model repository extension over HTTP and gRPC).

A load of a model already served is a reload: the new revision loads and warms up on a
worker thread beside the one serving, then replaces it in one step, so a request gets one
revision or the other and never waits for a load. Requests admitted before the switch
finish on the old runner, which is closed once they have (at most `server.drain_grace_s`).
A load that fails leaves what was served serving and says why. One control call runs at a
time."""

from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError

from service.config import ModelConfig, Settings
from service.core.errors import APIError, validation_error
from service.engine.registry import ModelRegistry
from service.engine.runner import ModelRunner
from service.pipelines.registry import PipelineSet

log = logging.getLogger("rewardserve")


class ModelControl:
    def __init__(self, registry: ModelRegistry, pipelines: PipelineSet, settings: Settings):
        self.registry, self.pipelines, self.settings = registry, pipelines, settings
        self._lock = asyncio.Lock()

    async def load(self, name: str, changes: dict | None = None) -> ModelRunner:
        """Loads `name` (a new model, or an unloaded one again) or reloads it, its configuration
        the one it has (or had) with `changes` on top: ModelConfig fields, such as a new `path`
        or `spec`. A new name needs a `path`."""
        async with self._lock:
            config = self._config(name, changes or {})
            serving = self.registry.runners.get(name)
            runner = ModelRunner(config, self.settings, self.registry.cache)
            if serving is None:
                self.registry.put(runner)  # listed, and answering "loading", while it loads
            await asyncio.to_thread(runner.load)
            if runner.status != "ready":
                runner.close()
                if serving is None:
                    self.registry.remove(name, f"failed to load: {runner.error}")
                kept = f"; it still serves revision {serving.model.revision}" if serving and serving.model else ""
                raise APIError(400, "load_failed", f"model {name!r} failed to load: {runner.error}{kept}")
            if serving is not None:
                self.registry.put(runner)
                await self._retire(serving)
            log.info("model %s serves revision %s", name, runner.model.revision[:19])
            return runner

    async def reload(self, name: str) -> ModelRunner:
        """A served model loaded again from its configuration (its directory read afresh)."""
        if name not in self.registry.runners:
            raise self._not_served(name)
        return await self.load(name)

    async def unload(self, name: str) -> None:
        """Stops serving `name`; requests already admitted finish first. A pipeline's model
        stays (409 naming the pipeline)."""
        async with self._lock:
            if name not in self.registry.runners:
                raise self._not_served(name)
            users = sorted(p for p, c in self.pipelines.configs.items() if name in c.served_models)
            if users:
                raise APIError(409, "model_in_use", f"model {name!r} is used by pipeline {users[0]!r}; "
                               "it cannot be unloaded while that pipeline is configured", "name")
            await self._retire(self.registry.remove(name, "unloaded"))
            log.info("model %s unloaded", name)

    def _config(self, name: str, changes: dict) -> ModelConfig:
        """The configuration to load `name` with (422 naming a field that does not hold up)."""
        if name in self.pipelines.configs:
            raise APIError(409, "name_taken", f"{name!r} is a pipeline's name", "name")
        owner = self.registry.aliases.get(name)
        if owner not in (None, name):
            raise APIError(409, "name_taken", f"{name!r} is an alias of model {owner!r}", "name")
        if changes.get("name", name) != name:
            raise APIError(422, "invalid_request", f"name {changes['name']!r} differs from the model's, {name!r}",
                           "name")
        current = self.registry.runners[name].config if name in self.registry.runners else \
            self.registry.unloaded[name].config if name in self.registry.unloaded else None
        if current is None and "path" not in changes:
            raise APIError(404, "model_not_found", f"no model named {name!r}; to add it, give its `path`", "path")
        base = current.model_dump() if current is not None else {}
        try:
            return ModelConfig.model_validate(base | changes | {"name": name})
        except ValidationError as err:
            raise validation_error(err.errors()) from None

    async def _retire(self, runner: ModelRunner) -> None:
        """Closes a runner no longer served once its calls in flight are answered."""
        if not await runner.drained(self.settings.server.drain_grace_s):
            log.warning("model %s: calls still in flight after %.0fs are cancelled", runner.name,
                        self.settings.server.drain_grace_s)
        runner.close()

    def _not_served(self, name: str) -> APIError:
        return APIError(404, "model_not_found", f"no model named {name!r}; served: {sorted(self.registry.runners)}",
                        "name")
