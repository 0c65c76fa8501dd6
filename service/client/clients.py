"""`RewardClient` (sync) and `AsyncRewardClient` (asyncio): the same methods, arguments
and typed results over HTTP or gRPC, the transport chosen by the URL's scheme, so code
using them does not change with the protocol. Both retry a full queue, a loading model
and an unreachable server with backoff, honouring the server's retry-after hint."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from service.client.common import RESULT_TYPES, Calls, Retry, RewardServeError
from service.client.grpc_transport import AsyncGrpcTransport, GrpcTransport
from service.client.http_transport import AsyncHttpTransport, HttpTransport
from service.core.operations import CompareResponse, RerankResponse, StepsResponse
from service.core.schemas import ModelCard, ScoreResponse

# Errors a retry may cure: the server's 429 / 503 answers (RewardServeError), and HTTP
# connection failures (over gRPC those are UNAVAILABLE, a 503).
_RETRYABLE = (RewardServeError, httpx.TransportError)


def _transport(url: str, timeout_s: float, transport, asynchronous: bool, api_key: str | None):
    """http:// and https:// speak HTTP (through `transport`, if given); grpc://host:port speaks gRPC."""
    parts = urlsplit(url)
    auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
    if parts.scheme in ("http", "https"):
        return (AsyncHttpTransport if asynchronous else HttpTransport)(url, timeout_s, transport, auth)
    if parts.scheme == "grpc" and transport is None:
        return (AsyncGrpcTransport if asynchronous else GrpcTransport)(parts.netloc, timeout_s, auth)
    if parts.scheme == "grpc":
        raise ValueError("an httpx transport applies to http:// and https:// URLs only")
    raise ValueError(f"cannot tell the protocol of {url!r}: use http://, https:// or grpc://")


class RewardClient:
    """`RewardClient("http://127.0.0.1:8000")` or `RewardClient("grpc://127.0.0.1:50051")`.
    `model` is the default for calls that name none; `timeout_s` bounds each attempt (the
    HTTP timeout, or the gRPC deadline); `api_key` is sent with every call, when the server
    wants one."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, model: str | None = None, timeout_s: float = 60.0,
                 retries: int = 5, backoff_s: float = 0.1, max_backoff_s: float = 10.0,
                 transport: httpx.BaseTransport | None = None, api_key: str | None = None):
        self.model = model
        self._transport = _transport(url, timeout_s, transport, asynchronous=False, api_key=api_key)
        self._retry = Retry(retries, backoff_s, max_backoff_s)

    def _call(self, method: str, body: dict | None = None) -> Any:
        if body is not None:
            body.setdefault("model", self.model)
        for attempt in itertools.count():
            try:
                return RESULT_TYPES[method].model_validate(self._transport.call(method, body))
            except _RETRYABLE as err:
                wait = self._retry.delay(attempt, err)
                if wait is None:
                    raise
            time.sleep(wait)

    def score(self, items: Sequence[Any], **options) -> ScoreResponse:
        return self._call(*Calls.score(items, **options))

    def compare(self, prompt: str | None, responses: Sequence[Any], **options) -> CompareResponse:
        return self._call(*Calls.compare(prompt, responses, **options))

    def rerank(self, query: str | None, documents: Sequence[Any], **options) -> RerankResponse:
        return self._call(*Calls.rerank(query, documents, **options))

    def steps(self, items: Sequence[Any], **options) -> StepsResponse:
        return self._call(*Calls.steps(items, **options))

    def models(self) -> list[ModelCard]:
        return self._call("models").models

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncRewardClient:
    """RewardClient's asyncio twin: the same arguments, awaitable methods."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, model: str | None = None, timeout_s: float = 60.0,
                 retries: int = 5, backoff_s: float = 0.1, max_backoff_s: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None, api_key: str | None = None):
        self.model = model
        self._transport = _transport(url, timeout_s, transport, asynchronous=True, api_key=api_key)
        self._retry = Retry(retries, backoff_s, max_backoff_s)

    async def _call(self, method: str, body: dict | None = None) -> Any:
        if body is not None:
            body.setdefault("model", self.model)
        for attempt in itertools.count():
            try:
                return RESULT_TYPES[method].model_validate(await self._transport.call(method, body))
            except _RETRYABLE as err:
                wait = self._retry.delay(attempt, err)
                if wait is None:
                    raise
            await asyncio.sleep(wait)

    async def score(self, items: Sequence[Any], **options) -> ScoreResponse:
        return await self._call(*Calls.score(items, **options))

    async def compare(self, prompt: str | None, responses: Sequence[Any], **options) -> CompareResponse:
        return await self._call(*Calls.compare(prompt, responses, **options))

    async def rerank(self, query: str | None, documents: Sequence[Any], **options) -> RerankResponse:
        return await self._call(*Calls.rerank(query, documents, **options))

    async def steps(self, items: Sequence[Any], **options) -> StepsResponse:
        return await self._call(*Calls.steps(items, **options))

    async def models(self) -> list[ModelCard]:
        return (await self._call("models")).models

    async def aclose(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
