"""Every error leaves the server as JSON `{"error": {"code", "message", "field"}}` with
the status that says whose fault it is."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.errors import InputError
from service.runner import ItemError
from service.scheduler import ItemTimeout, QueueFull
from service.schemas import ITEM_FORMS

log = logging.getLogger("rewardserve")


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
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


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "field": field}}
    return JSONResponse(status_code=status, content=body, headers=headers)


def field_path(loc: tuple) -> str | None:
    """('body', 'items', 0, 'tokens', 'input_ids', 3) -> 'items[0].input_ids[3]'. The item
    form tag pydantic puts at the start of an item's location is dropped, but not a field
    of the same name: ('items', 0, 'steps', 'steps') -> 'items[0].steps'."""
    loc = loc[1:] if loc and loc[0] == "body" else loc
    parts: list[str] = []
    for i, part in enumerate(loc):
        item_start = i == 0 or (i >= 2 and loc[i - 2] == "items" and isinstance(loc[i - 1], int))
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif not (item_start and part in ITEM_FORMS):
            parts.append(f".{part}" if parts else str(part))
    return "".join(parts) or None


def validation_error(errors: list[dict]) -> APIError:
    """The first of pydantic's validation errors as the API reports it, whichever transport
    the request came by: 400 for a body that is not JSON, else 422 naming the field."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        return APIError(400, "invalid_json", f"request body is not valid JSON: {first.get('msg')}")
    field = field_path(tuple(first.get("loc", ())))
    message = first.get("msg", "invalid request")
    return APIError(422, "invalid_request", f"{field}: {message}" if field else message, field)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, err: APIError):
        return error_response(err.status, err.code, err.message, err.field, err.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, err: RequestValidationError):
        error = validation_error(err.errors())
        return error_response(error.status, error.code, error.message, error.field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return error_response(err.status_code, code, str(err.detail))

    @app.exception_handler(Exception)
    async def _internal(_: Request, err: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", f"{type(err).__name__}: {err}")
