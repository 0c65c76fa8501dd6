"""`RewardClient` (sync) and `AsyncRewardClient` (asyncio): the same methods, arguments
and typed results over HTTP or gRPC, the transport chosen by the URL's scheme, so code
using them does not change with the protocol. Both retry a full queue, a loading model
and an unreachable server with backoff, honouring the server's retry-after hint."""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack
from urllib.parse import urlsplit

import grpc
import httpx

from service.client.common import RESULT_TYPES, Calls, Retry, RewardServeError
from service.client.grpc_transport import AsyncGrpcTransport, GrpcTransport
from service.client.http_transport import AsyncHttpTransport, HttpTransport
from service.client.options import CompareOptions, RerankOptions, ScoreOptions, StepsOptions
from service.protocol.catalog import ModelCard
from service.protocol.ranking import CompareResponse, RerankResponse, StepsResponse
from service.protocol.scoring import ScoreResponse

# Errors a retry may cure: the server's 429 / 503 answers (RewardServeError), and HTTP
# connection failures (over gRPC those are UNAVAILABLE, a 503).
_RETRYABLE = (RewardServeError, httpx.TransportError)


def _transport(url: str, timeout_s: float, transport, asynchronous: bool, api_key: str | None, tls: Tls):
    """http:// and https:// speak HTTP (through `transport`, if given); grpc://host:port and
    grpcs://host:port (TLS) speak gRPC."""
    parts = urlsplit(url)
    auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
    if parts.scheme in ("http", "https"):
        verify = tls.ssl_context() if parts.scheme == "https" else True
        return (AsyncHttpTransport if asynchronous else HttpTransport)(url, timeout_s, transport, auth, verify)
    if parts.scheme in ("grpc", "grpcs") and transport is None:
        credentials = tls.grpc_credentials() if parts.scheme == "grpcs" else None
        return (AsyncGrpcTransport if asynchronous else GrpcTransport)(parts.netloc, timeout_s, auth, credentials)
    if parts.scheme in ("grpc", "grpcs"):
        raise ValueError("an httpx transport applies to http:// and https:// URLs only")
    raise ValueError(f"cannot tell the protocol of {url!r}: use http://, https://, grpc:// or grpcs://")


@dataclass(frozen=True)
class Tls:
    """For https:// and grpcs://: the CA that signed the server's certificate (default: the
    system's), and for mutual TLS this client's certificate and key (PEM files)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None
        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))


class RewardClient:
    """`RewardClient("http://127.0.0.1:8000")` or `RewardClient("grpc://127.0.0.1:50051")`.
    `model` is the default for calls that name none; `timeout_s` bounds each attempt (the
    HTTP timeout, or the gRPC deadline); `api_key` is sent with every call, when the server
    wants one. Over https:// and grpcs://, `tls_ca_file` is the CA of the server's certificate
    (default: the system's) and `tls_cert_file`/`tls_key_file` this client's, for mutual TLS."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        model: str | None = None,
        timeout_s: float = 60.0,
        retries: int = 5,
        backoff_s: float = 0.1,
        max_backoff_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        api_key: str | None = None,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
    ):
        self.model = model
        self._transport = _transport(url, timeout_s, transport, asynchronous=False, api_key=api_key,
                                     tls=Tls(tls_ca_file, tls_cert_file, tls_key_file))
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

    def score(self, items: Sequence[Any], **options: Unpack[ScoreOptions]) -> ScoreResponse:
        return self._call(*Calls.score(items, **options))

    def compare(
        self, prompt: str | None, responses: Sequence[Any], **options: Unpack[CompareOptions]
    ) -> CompareResponse:
        return self._call(*Calls.compare(prompt, responses, **options))

    def rerank(self, query: str | None, documents: Sequence[Any], **options: Unpack[RerankOptions]) -> RerankResponse:
        return self._call(*Calls.rerank(query, documents, **options))

    def steps(self, items: Sequence[Any], **options: Unpack[StepsOptions]) -> StepsResponse:
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

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        model: str | None = None,
        timeout_s: float = 60.0,
        retries: int = 5,
        backoff_s: float = 0.1,
        max_backoff_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        api_key: str | None = None,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
    ):
        self.model = model
        self._transport = _transport(url, timeout_s, transport, asynchronous=True, api_key=api_key,
                                     tls=Tls(tls_ca_file, tls_cert_file, tls_key_file))
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

    async def score(self, items: Sequence[Any], **options: Unpack[ScoreOptions]) -> ScoreResponse:
        return await self._call(*Calls.score(items, **options))

    async def compare(self, prompt: str | None, responses: Sequence[Any],
                      **options: Unpack[CompareOptions]) -> CompareResponse:
        return await self._call(*Calls.compare(prompt, responses, **options))

    async def rerank(self, query: str | None, documents: Sequence[Any],
                     **options: Unpack[RerankOptions]) -> RerankResponse:
        return await self._call(*Calls.rerank(query, documents, **options))

    async def steps(self, items: Sequence[Any], **options: Unpack[StepsOptions]) -> StepsResponse:
        return await self._call(*Calls.steps(items, **options))

    async def models(self) -> list[ModelCard]:
        return (await self._call("models")).models

    async def aclose(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
