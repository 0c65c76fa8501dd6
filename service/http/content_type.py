"""JSON routes take JSON only: a POST with a body of another media type is 415 before any
work. Besides the clear error, it keeps a browser's cross-origin "simple" request (a
`text/plain` form post, sent without a CORS preflight) from starting work such as a canary
run. KServe v2's /v2 routes keep their own formats (binary tensors). Compressed bodies:
service.http.encoding."""

from __future__ import annotations

from service.http.errors import error_response

OWN_FORMATS = ("/v2/",)


def has_body(headers: dict[bytes, bytes]) -> bool:
    return headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers


def is_json(content_type: bytes) -> bool:
    media = content_type.split(b";")[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


class JsonBodies:
    """Pure ASGI, in front of every route."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and not scope["path"].startswith(OWN_FORMATS):
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"content-type", b"")
            if has_body(headers) and not is_json(given):
                message = ("the body must be JSON (Content-Type: application/json), not "
                           f"{given.decode('latin-1') or 'untyped'}")
                response = error_response(415, "unsupported_media_type", message, "Content-Type")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)
