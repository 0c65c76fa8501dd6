"""A bound on the bytes one HTTP request may send (`server.max_request_bytes`): a body that says it
is larger is refused before it is read, and one that turns out larger (chunked) stops being
read at the bound (a compressed body is never inflated past it either: service.http.encoding)."""

from __future__ import annotations

from fastapi import HTTPException

from service.http.errors import error_response


def too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"the request body is larger than the server's limit of {limit} bytes "
                              "(server.max_request_bytes)")


class BodyLimit:
    """Pure ASGI, so a refused body costs nothing beyond its headers."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            response = error_response(413, "request_too_large", too_large(self.max_bytes).detail,
                                      headers={"connection": "close"})  # the unread body ends the connection
            return await response(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise too_large(self.max_bytes)
            return message

        await self.app(scope, counted, send)

