"""The interceptors every gRPC call goes through (latency, API keys, undecodable requests),
for every kind of method (unary or streaming requests and responses) and every sort of
handler grpc.aio runs: a coroutine that returns its answer or writes its stream with
`context.write` (as the stock health servicer's Watch), or an async generator. Each sort
sits on the real GrpcServer, on a loopback port, and each call must end as its handler
meant it to, be refused without a key or with bytes that are not its message, and be
timed under its method and status."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1.health_pb2 import HealthCheckRequest as Message  # one string field, `service`
from metrics_helpers import Scrape
from prometheus_client import generate_latest

from service.config import ModelConfig, Settings
from service.core.auth import KeyRing
from service.core.scoring import Scorer
from service.engine.registry import ModelRegistry
from service.grpc.server import GrpcServer
from service.monitoring.metrics import Metrics

KEY = "k-interceptors"
KEYED = (("x-api-key", KEY),)
SERVICE = "rewardserve.test.Echo"
WAIT_S = 30
UNDECODABLE = b"\x0a\x02\xff\xfe"  # field 1, a string, holding invalid UTF-8


async def answer(request: Message, context) -> Message:
    """`request` echoed, or the call ended as its `service` says: "abort" with
    FAILED_PRECONDITION, "raise" with an exception nothing catches."""
    if request.service == "abort":
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to abort")
    if request.service == "raise":
        raise RuntimeError("asked to raise")
    return request


async def unary_coroutine(request, context):
    return await answer(request, context)


async def unary_stream_coroutine(request, context):
    for _ in range(2):
        await context.write(await answer(request, context))


async def unary_stream_generator(request, context):
    for _ in range(2):
        yield await answer(request, context)


async def stream_unary_coroutine(requests, context):
    return Message(service="+".join([(await answer(r, context)).service async for r in requests]))


async def stream_stream_coroutine(requests, context):
    async for request in requests:
        await context.write(await answer(request, context))


async def stream_stream_generator(requests, context):
    async for request in requests:
        yield await answer(request, context)


HANDLERS = {  # method name -> (handler, whether requests stream, whether responses stream)
    "UnaryCoroutine": (unary_coroutine, False, False),
    "UnaryStreamCoroutine": (unary_stream_coroutine, False, True),
    "UnaryStreamGenerator": (unary_stream_generator, False, True),
    "StreamUnaryCoroutine": (stream_unary_coroutine, True, False),
    "StreamStreamCoroutine": (stream_stream_coroutine, True, True),
    "StreamStreamGenerator": (stream_stream_generator, True, True),
}
EXPECTED = {  # method name -> the `service` of each response to "a", "b" (just "a" where requests are unary)
    "UnaryCoroutine": ["a"], "UnaryStreamCoroutine": ["a", "a"], "UnaryStreamGenerator": ["a", "a"],
    "StreamUnaryCoroutine": ["a+b"], "StreamStreamCoroutine": ["a", "b"], "StreamStreamGenerator": ["a", "b"],
}
KIND = {(False, False): "unary_unary", (False, True): "unary_stream", (True, False): "stream_unary",
        (True, True): "stream_stream"}


def method_handler(handler, request_streaming: bool, response_streaming: bool):
    make = getattr(grpc, f"{KIND[request_streaming, response_streaming]}_rpc_method_handler")
    return make(handler, request_deserializer=Message.FromString, response_serializer=Message.SerializeToString)


@pytest.fixture(scope="module")
def echo():
    """A GrpcServer with the echo methods beside its own services, on its own event loop
    (a thread); (port, its metrics, a runner of coroutines on that loop)."""
    settings = Settings(models=[ModelConfig(name="m", path="/nonexistent")], auth={"api_keys": [KEY]})
    metrics = Metrics()
    loop = asyncio.new_event_loop()

    async def start() -> GrpcServer:
        server = GrpcServer(Scorer(ModelRegistry(settings), settings), metrics, KeyRing(settings.auth), "127.0.0.1", 0,
                            handshake_timeout_s=settings.tls.handshake_timeout_s)
        server.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            SERVICE, {name: method_handler(*spec) for name, spec in HANDLERS.items()})])
        await server.start()
        return server

    server = loop.run_until_complete(start())
    try:
        yield server.port, metrics, loop.run_until_complete
    finally:
        loop.run_until_complete(server.stop(0))
        loop.close()


async def outcome(channel, name: str, requests: list, metadata=KEYED,
                  half_close: bool = False) -> tuple[grpc.StatusCode, list[str]]:
    """(status, the `service` of each response) of one call of `name` sending `requests`
    (messages, or raw bytes). On a client stream they are written one by one, and the
    stream is half-closed only with `half_close`: no write may race the server ending the
    call, as a grpc.aio client then may report INTERNAL, not the server's status
    (grpc/grpc#36066)."""
    _, request_streaming, response_streaming = HANDLERS[name]
    stub = getattr(channel, KIND[request_streaming, response_streaming])(
        f"/{SERVICE}/{name}", request_serializer=lambda r: r if isinstance(r, bytes) else r.SerializeToString(),
        response_deserializer=Message.FromString)
    if request_streaming:
        call = stub(metadata=metadata, timeout=WAIT_S)
        for request in requests:
            await call.write(request)
        if half_close:
            await call.done_writing()
    else:
        call = stub(requests[0], metadata=metadata, timeout=WAIT_S)
    responses = []
    try:
        if response_streaming:
            async for response in call:
                responses.append(response.service)
        else:
            responses.append((await call).service)
    except grpc.aio.AioRpcError:
        pass
    return await call.code(), responses


@pytest.mark.parametrize("name", list(HANDLERS))
def test_every_kind_and_sort_of_handler(echo, name):
    port, metrics, run = echo
    streaming = HANDLERS[name][1]
    first = [Message(service="a")]

    async def main() -> dict[str, tuple]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return {
                "ok": await outcome(channel, name, first + [Message(service="b")], half_close=True),
                "abort": await outcome(channel, name, [Message(service="abort")]),
                "raise": await outcome(channel, name, [Message(service="raise")]),
                "undecodable": await outcome(channel, name, (first if streaming else []) + [UNDECODABLE]),
                "keyless": await outcome(channel, name, [] if streaming else first, metadata=()),
            }

    seen = run(main())
    assert seen["ok"] == (grpc.StatusCode.OK, EXPECTED[name])
    assert seen["abort"][0] == grpc.StatusCode.FAILED_PRECONDITION
    assert seen["raise"][0] == grpc.StatusCode.UNKNOWN
    assert seen["undecodable"][0] == grpc.StatusCode.INVALID_ARGUMENT
    assert seen["keyless"] == (grpc.StatusCode.UNAUTHENTICATED, [])

    scrape = Scrape(generate_latest(metrics.registry).decode())
    for status in ("OK", "FAILED_PRECONDITION", "UNKNOWN", "INVALID_ARGUMENT", "UNAUTHENTICATED"):
        assert scrape.value("rewardserve_request_duration_seconds_count", protocol="grpc",
                            endpoint=f"/{SERVICE}/{name}", status=status) == 1, status
    assert scrape.value("rewardserve_requests_in_flight", protocol="grpc") == 0
