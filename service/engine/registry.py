"""The set of served models, looked up by name, and the models unloaded from it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

from service.config import ModelConfig, Settings
from service.engine.cache import LRUCache, RedisTier, ResultCache
from service.engine.runner import ModelRunner


class ModelNotFound(LookupError):
    """No served model has this name."""

    def __init__(self, name: str | None, served: list[str]):
        super().__init__(f"no model named {name!r}; served: {served}")
        self.name, self.served = name, served


class ModelNotReady(Exception):
    """The model is still loading, or failed to load."""

    def __init__(self, runner: ModelRunner):
        detail = f": {runner.error}" if runner.error else ""
        super().__init__(f"model {runner.name!r} is {runner.status}{detail}")
        self.runner = runner


class Unloaded(NamedTuple):
    """A model no longer served: how it was configured (a load without a path reuses it) and why."""

    config: ModelConfig
    reason: str


# Told of each change to the set: (name, the runner now serving it or None, the one it replaced or None).
Watcher = Callable[[str, ModelRunner | None, ModelRunner | None], None]


class ModelRegistry:
    def __init__(self, settings: Settings):
        self.default_name = settings.default_model_name
        self.cache = build_cache(settings)
        self.runners = {m.name: ModelRunner(m, settings, self.cache) for m in settings.models}
        self.unloaded: dict[str, Unloaded] = {}
        self.aliases = model_aliases(settings.models)
        self.watchers: list[Watcher] = []
        self.created = int(time.time())

    def put(self, runner: ModelRunner) -> ModelRunner | None:
        """Serves `runner` under its name from now on (one step on the event loop, so every
        lookup after it finds the new runner); the runner it replaces, if any."""
        replaced = self.runners.get(runner.name)
        self.runners[runner.name] = runner
        self.unloaded.pop(runner.name, None)
        self._changed(runner.name, runner, replaced)
        return replaced

    def remove(self, name: str, reason: str) -> ModelRunner:
        """Stops serving `name` (its lookups answer ModelNotFound from now on); its runner."""
        runner = self.runners.pop(name)
        self.unloaded[name] = Unloaded(runner.config, reason)
        self._changed(name, None, runner)
        return runner

    def _changed(self, name: str, runner: ModelRunner | None, replaced: ModelRunner | None) -> None:
        self.aliases = model_aliases([r.config for r in self.runners.values()])
        for watcher in self.watchers:
            watcher(name, runner, replaced)

    def load_all(self) -> None:
        """Blocking, at start-up: every configured model (those a control call adds load on their own)."""
        for runner in list(self.runners.values()):
            runner.load()

    @property
    def ready(self) -> bool:
        return all(r.status == "ready" for r in self.runners.values())

    @property
    def statuses(self) -> dict[str, str]:
        return {name: r.status for name, r in self.runners.items()}

    def find(self, name: str | None) -> ModelRunner:
        """The runner for `name` (the default model when None), in whatever state it is."""
        name = name or self.default_name
        runner = self.runners.get(name) or self.runners.get(self.aliases.get(name, ""))
        if runner is None:
            raise ModelNotFound(name, sorted(self.runners))
        return runner

    def get(self, name: str | None) -> ModelRunner:
        """The runner for `name` (the default model when None), ready to score."""
        runner = self.find(name)
        if runner.status != "ready":
            raise ModelNotReady(runner)
        return runner

    async def close(self) -> None:
        for runner in self.runners.values():
            runner.close()
        if self.cache is not None:
            await self.cache.close()


def model_aliases(models: list[ModelConfig]) -> dict[str, str]:
    """Alias -> model name: each model's aliases, and its configured path where no other
    model has that path and no model or alias is called so (a trainer often names the
    reward model by the path it was configured with)."""
    names = {m.name for m in models}
    aliases = {alias: m.name for m in models for alias in m.aliases}
    paths = [m.path for m in models]
    for m in models:
        if paths.count(m.path) == 1 and m.path not in names and m.path not in aliases:
            aliases[m.path] = m.name
    return aliases


def build_cache(settings: Settings) -> ResultCache | None:
    cache = settings.cache
    lru = LRUCache(cache.max_bytes) if cache.max_bytes > 0 else None
    redis = RedisTier(cache.redis_url, timeout_s=cache.redis_timeout_ms / 1000) if cache.redis_url else None
    return ResultCache(lru, redis) if lru is not None or redis is not None else None
