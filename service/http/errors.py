"""Every HTTP error leaves the server as JSON `{"error": {"code", "message", "field"}}` with
the status that says whose fault it is."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.core.errors import APIError, validation_error
from service.protocol.errors import ErrorBody

log = logging.getLogger("rewardserve")

# The error responses a scoring route may give, for its OpenAPI entry.
ERROR_RESPONSES = {status: {"model": ErrorBody} for status in (400, 404, 422, 429, 500, 503, 504)}


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "field": field}}
    return JSONResponse(status_code=status, content=body, headers=headers)


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
        code = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed",
                413: "request_too_large"}.get(err.status_code, "http_error")
        return error_response(err.status_code, code, str(err.detail), headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(_: Request, err: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", f"{type(err).__name__}: {err}")
