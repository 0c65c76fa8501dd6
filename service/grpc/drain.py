"""gRPC calls still running when the server's drain grace (`server.drain_grace_s`) ends: left to
grpc.aio, they would be cancelled with UNAVAILABLE "Cancelling all calls" and no error code;
they end UNAVAILABLE with the service's `shutting_down` error instead (its message and
`rewardserve-error-code`, as HTTP's 503 body has them), which clients retry elsewhere."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import grpc

from service.core.errors import APIError
from service.grpc.calls import abort
from service.grpc.interceptor import inside, with_behavior


class CallsInFlight(grpc.aio.ServerInterceptor):
    """Knows the task of every call running, so that `end()` can stop them all."""

    def __init__(self):
        self.tasks: set[asyncio.Task] = set()
        self.ended = False

    def end(self) -> None:
        """Cancel every call still running; each ends UNAVAILABLE `shutting_down`."""
        self.ended = True
        for task in self.tasks:
            task.cancel()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return with_behavior(handler, lambda behavior: inside(behavior, self._tracked))

    @asynccontextmanager
    async def _tracked(self, request, context: grpc.aio.ServicerContext):
        task = asyncio.current_task()  # grpc.aio runs each call in a task of its own
        self.tasks.add(task)
        try:
            yield request
        except asyncio.CancelledError:
            if not self.ended:  # the client went away
                raise
            task.uncancel()  # answered here: the call ends with a status, not cancelled
            await abort(context, APIError.shutting_down())
        finally:
            self.tasks.discard(task)
