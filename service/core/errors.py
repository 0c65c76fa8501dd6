"""The one error type every transport reports: `APIError`, an HTTP status (which says whose
fault it is), a stable code, a message and the request field it is about. The transports
turn it into their own form (HTTP's `{"error": {...}}`, a gRPC status, KServe's
`{"error": "..."}`, as service.protocol.errors describes them); the functions here name the
field the same way for all of them."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from models.errors import InputError
from service.engine.admission import QueueFull
from service.engine.registry import ModelNotFound, ModelNotReady
from service.engine.runner import ItemError
from service.engine.scheduler import ItemTimeout
from service.protocol.errors import field_path, led_by_field

MAX_MESSAGE_CHARS = 1000  # an error message quoting a huge input says where it was cut


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        if len(message) > MAX_MESSAGE_CHARS:
            message = f"{message[:MAX_MESSAGE_CHARS]}… ({len(message)} characters)"
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers

    @classmethod
    def from_item_error(cls, err: ItemError) -> APIError:
        item = f"items[{err.index}]"
        cause = err.error
        if isinstance(cause, InputError):
            return cls(422, cause.code, cause.message, f"{item}.{cause.field}" if cause.field else item)
        if isinstance(cause, ItemTimeout):
            return cls(504, "deadline_exceeded", f"{item}: {cause}", "timeout_ms")
        return cls(500, "inference_failed", f"{item}: {cause}", item)

    @classmethod
    def from_queue_full(cls, err: QueueFull) -> APIError:
        retry = max(1, math.ceil(err.retry_after_s))
        return cls(429, "queue_full", f"{err}; retry after {retry}s", headers={"Retry-After": str(retry)})

    @classmethod
    def shutting_down(cls) -> APIError:
        """For a call the server stops serving: still running when its drain grace ended."""
        return cls(503, "shutting_down", "the server is shutting down and the call was still running when its "
                                         "drain grace (server.drain_grace_s) ended; retry it on another replica")

    @classmethod
    def from_lookup(cls, err: ModelNotFound | ModelNotReady) -> APIError:
        """404 for a model nobody serves, 503 for one still loading or failed."""
        if isinstance(err, ModelNotFound):
            return cls(404, "model_not_found", str(err), "model")
        return cls(503, f"model_{err.runner.status}", str(err), "model")


def validation_error(errors: list[dict]) -> APIError:
    """The first of pydantic's validation errors as the API reports it, whichever transport
    the request came by: 400 for a body that is not JSON, else 422 naming the field."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        return APIError(400, "invalid_json", f"request body is not valid JSON: {first.get('msg')}")
    field = field_path(tuple(first.get("loc", ())))
    message = first.get("msg", "invalid request")
    return APIError(422, "invalid_request", f"{field}: {message}" if field else message, field)


def status_message(err: APIError) -> str:
    """The error's message, led by the field it is about (unless it already is)."""
    return led_by_field(err.message, err.field)


# ---- naming the request's own fields ----------------------------------------------------

ItemNamer = Callable[[int, str], str]  # (item index, the rest of the field) -> the request's field
_ITEM = re.compile(r"^items\[(\d+)\]")


def renamed(err: APIError, name: ItemNamer, whole: str) -> APIError:
    """`err` with the scoring core's `items[i]...` field (and message) renamed to the
    request's own: `name(i, rest)` for one item, `whole` for the list."""
    field = err.field or ""
    if field == "items":
        err.field = whole
    elif match := _ITEM.match(field):
        index, rest = int(match[1]), field[match.end():]
        err.field = name(index, rest)
        err.message = err.message.replace(match[0], name(index, ""), 1)
    return err


def in_list(list_name: str, shared_prompt: str | None = None) -> ItemNamer:
    """Items named `list_name[i]`. With `shared_prompt` (the request field holding the
    prompt every candidate answers: `prompt`, `query`), errors in the prompt or the
    conversation the candidates share name the request's own field, and an error in an
    item's response names the candidate itself."""
    def name(index: int, rest: str) -> str:
        if shared_prompt is not None:
            if rest.startswith(".messages"):
                return rest[1:]
            if rest == ".prompt":
                return shared_prompt
            if rest == ".response":
                return f"{list_name}[{index}]"
        return f"{list_name}[{index}]{rest}"
    return name


def whole_item(list_name: str) -> ItemNamer:
    """Errors on item i name `list_name[i]` (each item is one string in the request)."""
    return lambda index, rest: f"{list_name}[{index}]"
