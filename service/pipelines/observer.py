"""The hooks a `Pipeline` calls as it works. This base does nothing; service.monitoring
installs one that feeds Prometheus and the drift windows. Hooks run on the event loop, so
they must be cheap and must not raise."""

from __future__ import annotations


class PipelineObserver:
    def component(self, name: str, status: str, value: float | None, seconds: float) -> None:
        """One item's value of component `name` (None unless ok); `seconds` the call took
        (a rule's or user function's call; 0 for model components, timed per model call)."""

    def model_call(self, model: str, seconds: float) -> None:
        """A request's items scored by one served model, taking `seconds`."""

    def spread(self, name: str, value: float) -> None:
        """An ensemble component's spread (standard deviation across its models) for one item."""
