"""Compressed request bodies: `Content-Encoding: gzip` or `deflate` is taken on every route
(JSON, KServe's binary tensors, the compatibility APIs alike), inflated as the route reads
it and never past `max_request_bytes`; any other encoding is 415 naming it, before the body
is read."""

from __future__ import annotations

import zlib

from fastapi import HTTPException

from service.http.content_type import has_body
from service.http.errors import error_response
from service.http.limits import too_large

WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
IDENTITY = ("", "identity")


class Inflater:
    """One body's decompression, fed as it arrives: 413 once the output passes `limit`,
    400 when the bytes are not one whole `encoding` stream."""

    def __init__(self, encoding: str, limit: int):
        self.encoding, self.limit = encoding, limit
        self._stream = zlib.decompressobj(WBITS[encoding])
        self._size = 0

    def feed(self, chunk: bytes) -> bytes:
        try:
            out = self._stream.decompress(chunk, self.limit - self._size + 1)
        except zlib.error as err:
            raise self._invalid(str(err)) from None
        self._size += len(out)
        if self._size > self.limit or self._stream.unconsumed_tail:
            raise too_large(self.limit)
        return out

    def end(self) -> None:
        if not self._stream.eof:
            raise self._invalid("the body ends before the compressed stream does")
        if self._stream.unused_data:
            raise self._invalid(f"{len(self._stream.unused_data)} bytes follow the end of the compressed stream")

    def _invalid(self, why: str) -> HTTPException:
        return HTTPException(400, f"cannot decompress the {self.encoding} body: {why}")


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """A whole compressed `body` inflated (Inflater's bounds and errors)."""
    inflater = Inflater(encoding, limit)
    out = inflater.feed(body)
    inflater.end()
    return out


def content_encoding(headers: list[tuple[bytes, bytes]]) -> str:
    """The request's Content-Encoding, lowercased; several headers are read as one list."""
    return ", ".join(v.decode("latin-1").strip() for k, v in headers if k.lower() == b"content-encoding").lower()


class RequestEncoding:
    """Pure ASGI, in front of every route: the route reads the inflated body, and sees no
    Content-Encoding (nor the compressed Content-Length)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope.get("headers") or []
        encoding = content_encoding(headers)
        if encoding in IDENTITY or not has_body(dict(headers)):
            return await self.app(scope, receive, send)
        if encoding not in WBITS:
            response = error_response(415, "unsupported_media_type", f"Content-Encoding {encoding!r} is not "
                                      "supported: send the body as it is, or gzip or deflate it", "Content-Encoding")
            return await response(scope, receive, send)
        inflater = Inflater(encoding, self.max_bytes)

        async def inflated():
            message = await receive()
            if message["type"] == "http.request":
                body = inflater.feed(message.get("body", b""))
                if not message.get("more_body", False):
                    inflater.end()
                message = {**message, "body": body}
            return message

        plain = [(k, v) for k, v in headers if k.lower() not in (b"content-encoding", b"content-length")]
        await self.app({**scope, "headers": plain}, inflated, send)
