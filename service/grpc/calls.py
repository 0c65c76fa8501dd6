"""What every gRPC method shares, whichever service it belongs to (rewardserve.v1 or
KServe v2): the metadata an `APIError` ends a call with (and, for rewardserve.v1, its
status; KServe v2's come from its data plane's table), the call's deadline, and
bidirectional streams answered concurrently."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from service.core.errors import APIError, status_message
from service.protocol.errors import CODE_KEY, FIELD_KEY, RETRY_AFTER_KEY

log = logging.getLogger("rewardserve")

# Requests of one stream being scored at once; past it the server stops reading the stream
# (flow control pushes back on the client) until one finishes.
STREAM_MAX_IN_FLIGHT = 64

GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code(err: APIError) -> grpc.StatusCode:
    return GRPC_CODES.get(err.status) or (
        grpc.StatusCode.INVALID_ARGUMENT if err.status < 500 else grpc.StatusCode.INTERNAL)


def retry_after(err: APIError) -> str | None:
    return (err.headers or {}).get("Retry-After")


def trailing_metadata(err: APIError) -> tuple[tuple[str, str], ...]:
    metadata = [(CODE_KEY, err.code), (FIELD_KEY, err.field or "")]
    if retry_after(err) is not None:
        metadata.append((RETRY_AFTER_KEY, retry_after(err)))
    return tuple(metadata)


async def abort(context: grpc.aio.ServicerContext, err: APIError, message: str | None = None) -> None:
    """End the call with the status for `err` (raises, as context.abort does)."""
    await context.abort(grpc_code(err), message or status_message(err), trailing_metadata(err))


def internal_error(err: Exception) -> APIError:
    log.error("unhandled error in a gRPC call", exc_info=err)
    return APIError(500, "internal_error", f"{type(err).__name__}: {err}")


def deadline_ms(context: grpc.aio.ServicerContext) -> float | None:
    """What is left of the call's gRPC deadline, in ms (None without one)."""
    remaining = context.time_remaining()
    return None if remaining is None else max(remaining, 0.0) * 1000


async def serve_concurrently(requests: AsyncIterator, handle: Callable[[object], Awaitable[object]],
                             max_in_flight: int = STREAM_MAX_IN_FLIGHT) -> AsyncIterator:
    """For a bidirectional stream: `handle` every request as it arrives, at most
    `max_in_flight` at once, and yield each response as soon as it is ready (so not in
    request order). Ends once the client has half-closed and every request is answered;
    if the caller is cancelled (the client went away), every pending request is cancelled,
    which drops its queued items. `handle` must not raise."""
    answers: asyncio.Queue = asyncio.Queue()
    slots = asyncio.Semaphore(max_in_flight)
    pending: set[asyncio.Task] = set()
    done = object()

    async def answer(request) -> None:
        try:
            answers.put_nowait(await handle(request))
        finally:
            slots.release()

    async def read() -> None:
        try:
            async for request in requests:
                await slots.acquire()
                task = asyncio.create_task(answer(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.wait(set(pending))
        finally:
            answers.put_nowait(done)

    reader = asyncio.create_task(read())
    try:
        while (response := await answers.get()) is not done:
            yield response
        reader.result()  # a failed read ends the call with its error
    finally:
        reader.cancel()
        for task in list(pending):
            task.cancel()
