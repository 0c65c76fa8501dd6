"""What every gRPC call goes through before its method: latency into the server's Prometheus
metrics, its API key checked, and requests that do not parse refused as INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio
import inspect
import time
from contextlib import asynccontextmanager
from functools import partial

import grpc

from service.core.auth import KeyRing, key_headers, presented_key
from service.core.errors import APIError
from service.grpc.calls import abort
from service.monitoring.metrics import Metrics, task_labels

METHOD_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")  # request_response


def with_behavior(handler, wrap, **changes):
    """`handler` with its method replaced by `wrap(method)`."""
    kind = next(k for k in METHOD_KINDS if getattr(handler, k) is not None)
    return handler._replace(**{kind: wrap(getattr(handler, kind))}, **changes)


def inside(behavior, around):
    """`behavior` run inside `around(request, context)`, an async context manager giving the
    request to pass on; of the same sort as `behavior`, which grpc.aio looks at to run it: a
    coroutine (it answers with its result, or writes a stream with `context.write`, as the
    stock health servicer's Watch does) or an async generator (it yields a stream)."""
    if inspect.isasyncgenfunction(behavior):
        async def streamed(request, context):
            async with around(request, context) as request:
                async for response in behavior(request, context):
                    yield response
        return streamed

    async def awaited(request, context):
        async with around(request, context) as request:
            return await behavior(request, context)
    return awaited


class GrpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Times every gRPC call of a registered method (rewardserve.v1, KServe v2, health),
    labelled with the full method name and the gRPC status code's name. Unknown methods
    never reach a handler, so they never become a label."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self._in_flight = metrics.in_flight.labels("grpc")

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        timed = partial(self._timed, handler_call_details.method)
        return with_behavior(handler, lambda behavior: inside(behavior, timed))

    @asynccontextmanager
    async def _timed(self, method: str, request, context):
        started = time.perf_counter()
        status = "OK"
        labels = task_labels()  # grpc.aio runs each call in a task of its own
        self._in_flight.inc()
        try:
            yield request
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except Exception:
            status = "UNKNOWN"  # what gRPC answers for an exception no handler caught
            raise
        finally:
            code = context.code()
            if isinstance(code, grpc.StatusCode):  # set by abort() or set_code()
                status = code.name
            self._in_flight.dec()
            self.metrics.observe_request("grpc", method, labels.model, status, time.perf_counter() - started)


class _Undecodable:
    """A request whose bytes did not parse as its message."""

    def __init__(self, error: Exception):
        self.error = error


class RequestDecoding(grpc.aio.ServerInterceptor):
    """A request that does not parse as its message (invalid UTF-8 in a string, garbage
    bytes) ends its call with INVALID_ARGUMENT saying so, where grpc.aio would answer
    UNKNOWN; on a stream, at the first such message."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        decode = handler.request_deserializer
        message = getattr(getattr(decode, "__self__", None), "DESCRIPTOR", None)
        expected = message.full_name if message is not None else handler_call_details.method

        def tolerant(data: bytes):
            try:
                return decode(data)
            except Exception as err:  # noqa: BLE001 - DecodeError and whatever else protobuf raises
                return _Undecodable(err)

        async def refuse(request, context) -> None:
            if isinstance(request, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"the request is not a valid {expected}: {request.error}")

        async def checked(requests, context):
            async for request in requests:
                await refuse(request, context)
                yield request

        @asynccontextmanager
        async def decoded(request, context):
            if handler.request_streaming:
                yield checked(request, context)
            else:
                await refuse(request, context)
                yield request

        return with_behavior(handler, lambda behavior: inside(behavior, decoded), request_deserializer=tolerant)


OPEN_METHODS = frozenset({
    "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
    "/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady",
})

ADMIN_METHODS = frozenset({  # what an admin key alone may call, as /v1/admin/* over HTTP
    "/inference.GRPCInferenceService/RepositoryModelLoad", "/inference.GRPCInferenceService/RepositoryModelUnload",
})


class Authentication(grpc.aio.ServerInterceptor):
    """API keys in call metadata (`authorization: Bearer KEY` or `x-api-key: KEY`) on every
    method but health and KServe's server liveness and readiness, admin keys on loading and
    unloading models; a refused call ends with UNAUTHENTICATED (PERMISSION_DENIED for an api
    key on an admin method, INVALID_ARGUMENT for a key entry sent twice) before its method runs."""

    def __init__(self, keys: KeyRing):
        self.keys = keys

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not self.keys.enabled or handler_call_details.method in OPEN_METHODS:
            return handler
        try:
            sent = key_headers(handler_call_details.invocation_metadata or ())
            self.keys.check(presented_key(sent.get("authorization"), sent.get("x-api-key")),
                            admin=handler_call_details.method in ADMIN_METHODS)
        except APIError as err:
            return _refusing(handler, err)
        return handler


def _refusing(handler, err: APIError):
    """`handler` with its method replaced by one that ends the call with `err`'s status (a
    coroutine, which grpc.aio runs for every kind of method)."""
    async def refuse(request, context):
        await abort(context, err)

    return with_behavior(handler, lambda _: refuse)
