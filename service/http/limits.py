"""A bound on the bytes one HTTP request may send (`max_request_bytes`): a body that says it
is larger is refused before it is read, one that turns out larger (chunked) stops being
read at the bound, and a compressed body is never inflated past it."""

from __future__ import annotations

import json
import zlib

from fastapi import HTTPException

WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"the request body is larger than the server's limit of {limit} bytes "
                              "(max_request_bytes)")


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
            return await _refuse(send, too_large(self.max_bytes))
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


async def _refuse(send, err: HTTPException) -> None:
    body = json.dumps({"error": {"code": "request_too_large", "message": err.detail, "field": None}}).encode()
    await send({"type": "http.response.start", "status": err.status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """`body` decompressed (gzip or deflate), refused (413) once the output passes `limit`."""
    inflater = zlib.decompressobj(WBITS[encoding])
    out = inflater.decompress(body, limit + 1)
    if len(out) > limit or inflater.unconsumed_tail:
        raise too_large(limit)
    return out + inflater.flush()
