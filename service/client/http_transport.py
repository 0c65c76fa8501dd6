"""The HTTP transport: each method as a JSON request to its /v1 endpoint; error answers
become RewardServeError with the Retry-After hint."""

from __future__ import annotations

import ssl

import httpx

from service.client.common import RewardServeError, retry_hint
from service.protocol.errors import RETRY_AFTER_KEY

PATHS = {"score": "/v1/score", "compare": "/v1/compare", "rerank": "/v1/rerank", "steps": "/v1/steps"}


def _answer(response: httpx.Response) -> dict:
    """The JSON body of a success; an error answer raised as RewardServeError."""
    if response.status_code < 400:
        return response.json()
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        error = {"code": "http_error", "message": response.text}
    raise RewardServeError(response.status_code, error.get("code", ""), error.get("message", ""), error.get("field"),
                           retry_after_s=retry_hint(response.headers.get(RETRY_AFTER_KEY)))


class HttpTransport:
    def __init__(self, base_url: str, timeout_s: float, transport: httpx.BaseTransport | None = None,
                 headers: dict[str, str] | None = None, verify: ssl.SSLContext | bool = True):
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s, transport=transport, headers=headers,
                                  verify=verify)

    def call(self, method: str, body: dict | None) -> dict:
        if method == "models":
            return _answer(self._http.get("/v1/models"))
        return _answer(self._http.post(PATHS[method], json=body))

    def close(self) -> None:
        self._http.close()


class AsyncHttpTransport:
    def __init__(self, base_url: str, timeout_s: float, transport: httpx.AsyncBaseTransport | None = None,
                 headers: dict[str, str] | None = None, verify: ssl.SSLContext | bool = True):
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout_s, transport=transport, headers=headers,
                                       verify=verify)

    async def call(self, method: str, body: dict | None) -> dict:
        if method == "models":
            return _answer(await self._http.get("/v1/models"))
        return _answer(await self._http.post(PATHS[method], json=body))

    async def close(self) -> None:
        await self._http.aclose()
