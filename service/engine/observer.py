"""The hooks a `ModelRunner` calls as a request goes through it. This base does nothing;
service.monitoring.metrics installs one that feeds Prometheus and the drift windows. Every hook runs
on the event loop (`batch` from the scheduler's task, once the forward thread has handed
the batch back), so hooks must be cheap and must not raise."""

from __future__ import annotations

from models.heads import RewardOutput
from models.inputs import Encoded


class RunnerObserver:
    def request(self) -> None:
        """A request reached this model (before tokenization)."""

    def tokenized(self, encoded: list[Encoded], seconds: float) -> None:
        """Every item of a request tokenized, taking `seconds`."""

    def cache_hits(self, hits: int, seconds: float) -> None:
        """`hits` items of a request were answered by the cache, `seconds` after the
        request reached the runner."""

    def rejected(self, items: int) -> None:
        """The scheduler refused a request's `items` items (queue full: 429)."""

    def scheduled(self, results: list) -> None:
        """Per item the scheduler answered: an output or the exception that stopped it."""

    def scored(self, outputs: list[RewardOutput], postprocess_seconds: float) -> None:
        """A request's outputs in order (cache hits included, the model's own step
        aggregate, before per-request options), `postprocess_seconds` after the
        scheduler handed the results back."""

    def batch(self, record) -> None:
        """One forward finished (a service.engine.scheduler.BatchRecord)."""
