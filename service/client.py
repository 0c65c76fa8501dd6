"""Python clients for rewardserve: `RewardClient` (sync) and `AsyncRewardClient` (asyncio)
over HTTP, with the same methods (`score`, `compare`, `rerank`, `steps`, `models`) and typed
results, retrying 429 / 503 / connection failures with backoff that honours Retry-After.
`reward_fn` adapts a client into a TRL GRPOTrainer reward function.

    from service.client import RewardClient
    with RewardClient("http://127.0.0.1:8000") as rm:
        print(rm.score([("How are you?", "Fine, thanks.")]).results[0].score)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from service.http_ranking import CompareResponse, RerankResponse, StepsResponse
from service.schemas import ModelCard, ModelList, ScoreResponse

Result = TypeVar("Result", bound=BaseModel)
RETRY_STATUSES = frozenset({429, 503})


class RewardServeError(Exception):
    """An error answer from the server: its status and `{code, message, field}`."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(f"{status} {code}: {message}" + (f" (field {field})" if field else ""))
        self.status, self.code, self.message, self.field = status, code, message, field


def as_item(item: Any) -> dict:
    """A /v1/score item from a dict, a pydantic item, or a (prompt, response) pair."""
    if isinstance(item, BaseModel):
        return item.model_dump(exclude_none=True)
    if isinstance(item, tuple) and len(item) == 2:
        return {"prompt": item[0], "response": item[1]}
    return dict(item)


def _options(**options) -> dict:
    return {k: v for k, v in options.items() if v is not None}


class _Calls:
    """The request for each method as (path, body, result type), shared by both clients."""

    @staticmethod
    def score(items: Sequence[Any], **options) -> tuple[str, dict, type]:
        return "/v1/score", {"items": [as_item(i) for i in items], **_options(**options)}, ScoreResponse

    @staticmethod
    def compare(prompt: str | None, responses: Sequence[Any], **options) -> tuple[str, dict, type]:
        return "/v1/compare", {"prompt": prompt, "responses": list(responses), **_options(**options)}, CompareResponse

    @staticmethod
    def rerank(query: str | None, documents: Sequence[Any], **options) -> tuple[str, dict, type]:
        return "/v1/rerank", {"query": query, "documents": list(documents), **_options(**options)}, RerankResponse

    @staticmethod
    def steps(items: Sequence[Any], **options) -> tuple[str, dict, type]:
        return "/v1/steps", {"items": [as_item(i) for i in items], **_options(**options)}, StepsResponse


class _Retry:
    def __init__(self, retries: int, backoff_s: float, max_backoff_s: float):
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s

    def delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before the next attempt, or None to give up."""
        if attempt >= self.retries:
            return None
        if response is not None and response.status_code not in RETRY_STATUSES:
            return None
        hint = response.headers.get("retry-after") if response is not None else None
        if hint is not None:
            try:
                return min(float(hint), self.max_backoff_s)
            except ValueError:
                pass
        return min(self.backoff_s * 2**attempt, self.max_backoff_s)


def _parse(response: httpx.Response, result: type[Result]) -> Result:
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            error = {"code": "http_error", "message": response.text}
        raise RewardServeError(response.status_code, error.get("code", ""), error.get("message", ""), error.get("field"))
    return result.model_validate(response.json())


class RewardClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, model: str | None = None, timeout_s: float = 60.0,
                 retries: int = 5, backoff_s: float = 0.1, max_backoff_s: float = 10.0,
                 transport: httpx.BaseTransport | None = None):
        self.model = model
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s, transport=transport)
        self._retry = _Retry(retries, backoff_s, max_backoff_s)

    def _call(self, path: str, body: dict, result: type[Result]) -> Result:
        body.setdefault("model", self.model)
        for attempt in range(self._retry.retries + 1):
            try:
                response = self._http.post(path, json=body)
            except httpx.TransportError:
                wait = self._retry.delay(attempt, None)
                if wait is None:
                    raise
            else:
                wait = self._retry.delay(attempt, response)
                if wait is None:
                    return _parse(response, result)
            time.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def score(self, items: Sequence[Any], **options) -> ScoreResponse:
        return self._call(*_Calls.score(items, **options))

    def compare(self, prompt: str | None, responses: Sequence[Any], **options) -> CompareResponse:
        return self._call(*_Calls.compare(prompt, responses, **options))

    def rerank(self, query: str | None, documents: Sequence[Any], **options) -> RerankResponse:
        return self._call(*_Calls.rerank(query, documents, **options))

    def steps(self, items: Sequence[Any], **options) -> StepsResponse:
        return self._call(*_Calls.steps(items, **options))

    def models(self) -> list[ModelCard]:
        return _parse(self._http.get("/v1/models"), ModelList).models

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncRewardClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, model: str | None = None, timeout_s: float = 60.0,
                 retries: int = 5, backoff_s: float = 0.1, max_backoff_s: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.model = model
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout_s, transport=transport)
        self._retry = _Retry(retries, backoff_s, max_backoff_s)

    async def _call(self, path: str, body: dict, result: type[Result]) -> Result:
        body.setdefault("model", self.model)
        for attempt in range(self._retry.retries + 1):
            try:
                response = await self._http.post(path, json=body)
            except httpx.TransportError:
                wait = self._retry.delay(attempt, None)
                if wait is None:
                    raise
            else:
                wait = self._retry.delay(attempt, response)
                if wait is None:
                    return _parse(response, result)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def score(self, items: Sequence[Any], **options) -> ScoreResponse:
        return await self._call(*_Calls.score(items, **options))

    async def compare(self, prompt: str | None, responses: Sequence[Any], **options) -> CompareResponse:
        return await self._call(*_Calls.compare(prompt, responses, **options))

    async def rerank(self, query: str | None, documents: Sequence[Any], **options) -> RerankResponse:
        return await self._call(*_Calls.rerank(query, documents, **options))

    async def steps(self, items: Sequence[Any], **options) -> StepsResponse:
        return await self._call(*_Calls.steps(items, **options))

    async def models(self) -> list[ModelCard]:
        return _parse(await self._http.get("/v1/models"), ModelList).models

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


def _completion_item(prompt: Any, completion: Any) -> dict:
    """TRL passes plain strings, or conversations (lists of {role, content})."""
    if isinstance(prompt, str) and isinstance(completion, str):
        return {"prompt": prompt, "response": completion}
    turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    reply = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
    return {"messages": [*turns, *reply]}


def reward_fn(client: RewardClient, *, model: str | None = None, **options) -> Callable[..., list[float]]:
    """A TRL GRPOTrainer reward function (`reward_funcs=[reward_fn(client)]`): scores each
    (prompt, completion) with the server, as bulk work."""
    options.setdefault("priority", "bulk")

    def rewardserve_reward(prompts: list, completions: list, **_: Any) -> list[float]:
        items = [_completion_item(p, c) for p, c in zip(prompts, completions, strict=True)]
        return [result.score for result in client.score(items, model=model, **options).results]

    return rewardserve_reward
