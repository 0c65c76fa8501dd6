"""The hooks a `Pipeline` calls as it works. This base does nothing; service.monitoring
installs one that feeds Prometheus and the drift windows. Hooks run on the event loop, so
they must be cheap and must not raise."""

from __future__ import annotations

from service.pipelines.values import PipelineOutput


class PipelineObserver:
    def component(self, name: str, status: str, value: float | None, seconds: float | None) -> None:
        """One item's value of component `name` (None unless ok); `seconds` the rule's or user
        function's call took (None for model components: their models' calls are timed)."""

    def model_call(self, model: str, seconds: float) -> None:
        """A request's items scored by one served model, taking `seconds`."""

    def spread(self, name: str, value: float) -> None:
        """An ensemble component's spread (standard deviation across its models) for one item."""

    def scored(self, results: list[PipelineOutput | Exception]) -> None:
        """A request's items done, in order: each its reward and component values, or the
        error it failed with (a component failed under on_component_error 'fail')."""
