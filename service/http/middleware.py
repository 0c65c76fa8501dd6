"""Request latency for every HTTP route, into the server's Prometheus metrics."""

from __future__ import annotations

import time

from service.monitoring.metrics import UNMATCHED, Metrics, request_scope


class MetricsMiddleware:
    """Pure ASGI (no body buffering, disconnects reach the routes untouched): times every
    HTTP request and labels it with the route template the router matched."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics
        self._in_flight = metrics.in_flight.labels("http")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500  # unless a response starts: an exception escaped every handler
        started = time.perf_counter()

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self._in_flight.inc()
        with request_scope() as labels:
            try:
                await self.app(scope, receive, send_and_note)
            finally:
                self._in_flight.dec()
                route = scope.get("route")
                endpoint = getattr(route, "path_format", None) or UNMATCHED  # `{name}`, not `{name:path}`
                self.metrics.observe_request("http", endpoint, labels.model, status, time.perf_counter() - started)
