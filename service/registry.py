"""The set of served models, looked up by name."""

from __future__ import annotations

from service.cache import LRUCache, RedisTier, ResultCache
from service.config import Settings
from service.errors import APIError
from service.runner import ModelRunner


class ModelRegistry:
    def __init__(self, settings: Settings):
        self.default_name = settings.default_model_name
        self.cache = build_cache(settings)
        self.runners = {m.name: ModelRunner(m, settings, self.cache) for m in settings.models}

    def load_all(self) -> None:
        for runner in self.runners.values():
            runner.load()

    @property
    def ready(self) -> bool:
        return all(r.status == "ready" for r in self.runners.values())

    @property
    def statuses(self) -> dict[str, str]:
        return {name: r.status for name, r in self.runners.items()}

    def get(self, name: str | None) -> ModelRunner:
        """The runner for `name` (default model when None), ready to score."""
        runner = self.runners.get(name or self.default_name)
        if runner is None:
            raise APIError(404, "model_not_found", f"no model named {name!r}; served: {sorted(self.runners)}", "model")
        if runner.status != "ready":
            detail = f": {runner.error}" if runner.error else ""
            raise APIError(503, f"model_{runner.status}", f"model {runner.name!r} is {runner.status}{detail}", "model")
        return runner

    async def close(self) -> None:
        for runner in self.runners.values():
            runner.close()
        if self.cache is not None:
            await self.cache.close()


def build_cache(settings: Settings) -> ResultCache | None:
    lru = LRUCache(settings.cache_max_bytes) if settings.cache_max_bytes > 0 else None
    redis = RedisTier(settings.redis_url, timeout_s=settings.redis_timeout_ms / 1000) if settings.redis_url else None
    return ResultCache(lru, redis) if lru is not None or redis is not None else None
