"""Request latency for every gRPC method, into the server's Prometheus metrics."""

from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager

import grpc

from service.monitoring.metrics import Metrics, task_labels


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
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._unary(handler.unary_unary, method))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=self._unary(handler.stream_unary, method))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._streaming(handler.unary_stream, method))
        return handler._replace(stream_stream=self._streaming(handler.stream_stream, method))

    def _unary(self, behavior, method: str):
        async def timed(request, context):
            with self._timed(method, context):
                return await behavior(request, context)
        return timed

    def _streaming(self, behavior, method: str):
        async def timed(request, context):
            with self._timed(method, context):
                async for response in behavior(request, context):
                    yield response
        return timed

    @contextmanager
    def _timed(self, method: str, context):
        started = time.perf_counter()
        status = "OK"
        labels = task_labels()  # grpc.aio runs each call in a task of its own
        self._in_flight.inc()
        try:
            yield
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
