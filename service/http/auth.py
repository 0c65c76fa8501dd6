"""API keys on every HTTP route but the open ones (probes, the scrape: `auth_open_paths`);
/v1/admin/* needs an admin key (service.core.auth)."""

from __future__ import annotations

from collections import Counter

from service.core.auth import KeyRing, presented_key
from service.core.errors import APIError
from service.http.errors import error_response

ADMIN_PREFIX = "/v1/admin/"
KEY_HEADERS = {"authorization": "Authorization", "x-api-key": "x-api-key"}


class ApiKeyAuth:
    """Pure ASGI, in front of every route, so a refused request costs no work."""

    def __init__(self, app, keys: KeyRing):
        self.app = app
        self.keys = keys

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.keys.enabled and scope["path"] not in self.keys.open_paths:
            try:
                headers = key_headers(scope.get("headers") or [])
                key = presented_key(headers.get("authorization"), headers.get("x-api-key"))
                self.keys.check(key, admin=scope["path"].startswith(ADMIN_PREFIX))
            except APIError as err:
                response = error_response(err.status, err.code, err.message, err.field, err.headers)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def key_headers(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The headers that may carry a key; one sent twice is 400 naming it, as which of the
    two was meant cannot be told (and proxies disagree on which one they pass on)."""
    names = [name.decode("latin-1").lower() for name, _ in headers]
    for name, count in Counter(names).items():
        if name in KEY_HEADERS and count > 1:
            raise APIError(400, "invalid_request", f"the {KEY_HEADERS[name]} header is sent {count} times; send "
                           "one key once", KEY_HEADERS[name])
    return {name: value.decode("latin-1") for name, (_, value) in zip(names, headers) if name in KEY_HEADERS}
