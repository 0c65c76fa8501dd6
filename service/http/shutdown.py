"""Requests still running when the server stops and its drain grace (`server.drain_grace_s`) ends
are cancelled by uvicorn; each is answered 503 `shutting_down`, which a client retries on
another replica, instead of uvicorn's 500 and a logged traceback."""

from __future__ import annotations

import asyncio

from starlette.datastructures import State

from service.core.errors import APIError
from service.http.errors import error_response


class ShuttingDown:
    """Pure ASGI, outside every middleware a request may be cancelled in. Only once the
    server is stopping (`state.stopping`, set by its drain) is a cancellation answered: a
    request cancelled otherwise (Ray Serve's caller going away) stays cancelled."""

    def __init__(self, app, state: State):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_and_note(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except asyncio.CancelledError:
            if started or not self.state.stopping:
                raise
            asyncio.current_task().uncancel()  # answered here: the request ends, not cancelled
            err = APIError.shutting_down()
            await error_response(err.status, err.code, err.message)(scope, receive, send)
