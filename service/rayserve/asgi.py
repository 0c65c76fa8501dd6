"""One HTTP exchange with an ASGI app held in this process, as plain picklable values, so a
request can cross a Ray actor call whole and get the exact bytes the app answers with."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

Headers = list[tuple[bytes, bytes]]


class Call(NamedTuple):
    method: str
    path: str
    query: bytes
    headers: Headers
    body: bytes


class Reply(NamedTuple):
    status: int
    headers: Headers
    body: bytes


async def call(app, request: Call) -> Reply:
    """`request` answered by `app`. The client never disconnects on its own: cancelling
    this coroutine (Ray does, when the caller goes away) cancels the request's work."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "http",
        "method": request.method, "path": request.path, "raw_path": request.path.encode(), "root_path": "",
        "query_string": request.query, "headers": request.headers, "client": None, "server": None,
    }
    delivered = False

    async def receive() -> dict:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await asyncio.Future()  # no disconnect until cancelled

    start: dict = {}
    chunks: list[bytes] = []
    finished = False

    async def send(message: dict) -> None:
        nonlocal finished
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            finished = not message.get("more_body", False)

    try:
        await app(scope, receive, send)
    except Exception:
        if not finished:  # Starlette re-raises what its 500 handler already answered
            raise
    return Reply(start["status"], list(start.get("headers", [])), b"".join(chunks))
