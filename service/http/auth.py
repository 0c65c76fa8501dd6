"""API keys on every HTTP route but the open ones (probes, the scrape: `auth.open_paths`);
/v1/admin/* and loading or unloading a model over KServe need an admin key (service.core.auth)."""

from __future__ import annotations

from service.core.auth import KeyRing, key_headers, presented_key
from service.core.errors import APIError
from service.http.errors import error_response

ADMIN_PREFIXES = ("/v1/admin/", "/v2/repository/models/")


class ApiKeyAuth:
    """Pure ASGI, in front of every route, so a refused request costs no work."""

    def __init__(self, app, keys: KeyRing):
        self.app = app
        self.keys = keys

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.keys.enabled and scope["path"] not in self.keys.open_paths:
            try:
                headers = key_headers((name.decode("latin-1"), value.decode("latin-1"))
                                      for name, value in scope.get("headers") or [])
                key = presented_key(headers.get("authorization"), headers.get("x-api-key"))
                self.keys.check(key, admin=scope["path"].startswith(ADMIN_PREFIXES))
            except APIError as err:
                response = error_response(err.status, err.code, err.message, err.field, err.headers)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)
