"""What the clients share whatever the transport: the error they raise, request bodies in
the HTTP API's JSON shape (each transport sends them its own way), and the retry policy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from service.protocol.catalog import ModelList
from service.protocol.errors import led_by_field
from service.protocol.ranking import CompareResponse, RerankResponse, StepsResponse
from service.protocol.scoring import ScoreResponse

if TYPE_CHECKING:
    import grpc

# What each method answers, over either transport.
RESULT_TYPES: dict[str, type[BaseModel]] = {
    "score": ScoreResponse, "compare": CompareResponse, "rerank": RerankResponse, "steps": StepsResponse,
    "models": ModelList,
}
# 429 (queue full), 502 (a load balancer lost its replica) and 503 (model loading, server
# unreachable) pass; other errors do not.
RETRY_STATUSES = frozenset({429, 502, 503})


class RewardServeError(Exception):
    """An error answer from the server, alike over HTTP and gRPC: the HTTP status (over
    gRPC, that of the status code, kept in `grpc_code`), `code`, `message` and the `field`
    it is about; `retry_after_s` is the server's hint on a full queue. The message is led
    by the field, as gRPC statuses carry it, so it reads the same over both."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None, *,
                 grpc_code: grpc.StatusCode | None = None, retry_after_s: float | None = None):
        message = led_by_field(message, field)
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.field = status, code, message, field
        self.grpc_code, self.retry_after_s = grpc_code, retry_after_s


def retry_hint(value: str | None) -> float | None:
    """A Retry-After value in seconds (None when absent or not a number)."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def as_item(item: Any) -> dict:
    """A /v1/score item from a dict, a pydantic item, or a (prompt, response) pair."""
    if isinstance(item, BaseModel):
        return item.model_dump(exclude_none=True)
    if isinstance(item, tuple) and len(item) == 2:
        return {"prompt": item[0], "response": item[1]}
    return dict(item)


def _options(**options) -> dict:
    return {k: v for k, v in options.items() if v is not None}


class Calls:
    """Each method's request as (method, JSON body): the HTTP API's shape, whichever
    transport carries it."""

    @staticmethod
    def score(items: Sequence[Any], **options) -> tuple[str, dict]:
        return "score", {"items": [as_item(i) for i in items], **_options(**options)}

    @staticmethod
    def compare(prompt: str | None, responses: Sequence[Any], **options) -> tuple[str, dict]:
        return "compare", {"prompt": prompt, "responses": list(responses), **_options(**options)}

    @staticmethod
    def rerank(query: str | None, documents: Sequence[Any], **options) -> tuple[str, dict]:
        return "rerank", {"query": query, "documents": list(documents), **_options(**options)}

    @staticmethod
    def steps(items: Sequence[Any], **options) -> tuple[str, dict]:
        return "steps", {"items": [as_item(i) for i in items], **_options(**options)}


class Retry:
    """Exponential backoff, capped; the server's retry-after hint when it gives one."""

    def __init__(self, retries: int, backoff_s: float, max_backoff_s: float):
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s

    def delay(self, attempt: int, error: Exception) -> float | None:
        """Seconds to wait before the next attempt after `error` (an error answer, or an
        HTTP connection failure), or None to give up."""
        if attempt >= self.retries:
            return None
        if isinstance(error, RewardServeError):
            if error.status not in RETRY_STATUSES:
                return None
            if error.retry_after_s is not None:
                return min(error.retry_after_s, self.max_backoff_s)
        return min(self.backoff_s * 2**attempt, self.max_backoff_s)
