"""Standard gRPC health checking (`grpc.health.v1.Health`) for grpc.aio, the stock
servicer's interface (`set`, `enter_graceful_shutdown`), written here because the stock aio
servicer forgets the other watchers of a service when one of them leaves: they never hear
another change."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

Status = health_pb2.HealthCheckResponse


class HealthServicer(health_pb2_grpc.HealthServicer):
    """A status per service name (`""`: the whole server). `Check` answers it; `Watch`
    streams it and then each change (a change quickly undone may go unseen, as the
    protocol allows). Once draining, every status stays NOT_SERVING, and a watch ends once it
    has said so."""

    def __init__(self):
        self._statuses: dict[str, int] = {"": Status.SERVING}
        self._changed = asyncio.Condition()
        self._draining = False

    async def Check(self, request, context):
        status = self._statuses.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no service named {request.service!r}")
        return Status(status=status)

    async def Watch(self, request, context):
        sent = None
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda sent=sent: self._status(request.service) != sent)
                sent = self._status(request.service)
            await context.write(Status(status=sent))
            if self._draining:  # the last change: a watch left open would hold the drain for its whole grace
                return

    def _status(self, service: str) -> int:
        return self._statuses.get(service, Status.SERVICE_UNKNOWN)

    async def set(self, service: str, status: int) -> None:
        async with self._changed:
            if not self._draining:
                self._statuses[service] = status
                self._changed.notify_all()

    async def enter_graceful_shutdown(self) -> None:
        async with self._changed:
            self._draining = True
            self._statuses = dict.fromkeys(self._statuses, Status.NOT_SERVING)
            self._changed.notify_all()
