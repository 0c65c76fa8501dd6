"""The gRPC transport: rewardserve.v1.RewardService (service/proto/rewardserve.proto), the
KServe v2 GRPCInferenceService (service/kserve_grpc.py) and standard gRPC health checking,
on one grpc.aio server that runs on the HTTP server's event loop, so every protocol shares
the models, their schedulers and the result cache.

Requests are validated by the HTTP API's own request model and scored by the same
`Scorer`, so a gRPC call gets the numbers and the errors an HTTP request gets; an
`APIError` becomes the matching gRPC status (see `GRPC_CODES`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import ValidationError

from models.heads import RewardOutput
from service import http_ranking
from service.errors import APIError, validation_error
from service.metrics import GrpcMetricsInterceptor
from service.proto import rewardserve_pb2 as pb
from service.proto import rewardserve_pb2_grpc as pb_grpc
from service.schemas import ModelCard, ScoreRequest
from service.scoring import Scored
from service.transport import parse_score_request, score_job, status_message

log = logging.getLogger("rewardserve")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RewardService"].full_name
# Messages up to this size are accepted and sent (RL batches of token ids are large).
MAX_MESSAGE_BYTES = 64 * 2**20
# Requests of one stream being scored at once; past it the server stops reading the stream
# (flow control pushes back on the client) until one finishes.
STREAM_MAX_IN_FLIGHT = 64
SHUTDOWN_GRACE_S = 5.0

GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


# ---- errors ---------------------------------------------------------------------------


def grpc_code(err: APIError) -> grpc.StatusCode:
    return GRPC_CODES.get(err.status) or (
        grpc.StatusCode.INVALID_ARGUMENT if err.status < 500 else grpc.StatusCode.INTERNAL)


def retry_after(err: APIError) -> str | None:
    return (err.headers or {}).get("Retry-After")


def trailing_metadata(err: APIError) -> tuple[tuple[str, str], ...]:
    metadata = [("rewardserve-error-code", err.code), ("rewardserve-error-field", err.field or "")]
    if retry_after(err) is not None:
        metadata.append(("retry-after", retry_after(err)))
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


# ---- requests and results -------------------------------------------------------------


def _item_body(index: int, item: pb.Item) -> dict:
    form = item.WhichOneof("form")
    if form == "text":
        return {"prompt": item.text.prompt, "response": item.text.response}
    if form == "chat":
        return {"messages": [{"role": m.role, "content": m.content} for m in item.chat.messages]}
    if form == "tokens":
        body = {"input_ids": list(item.tokens.input_ids)}
        if item.tokens.HasField("prompt_length"):
            body["prompt_length"] = item.tokens.prompt_length
        return body
    if form == "steps":
        return {"prompt": item.steps.prompt, "steps": list(item.steps.steps)}
    raise APIError(422, "invalid_request", "an item must set one of text, chat, tokens or steps", f"items[{index}]")


def _options(request) -> dict:
    """The request options a message sets, as HTTP body fields (empty strings: not set)."""
    fields = request.DESCRIPTOR.fields_by_name
    body = {name: getattr(request, name) for name in _OPTIONS if name in fields and getattr(request, name)}
    if request.HasField("timeout_ms"):
        body["timeout_ms"] = request.timeout_ms
    return body


_OPTIONS = ("model", "truncate", "aggregate", "normalize", "priority", "cache")


def score_request(request: pb.ScoreRequest) -> ScoreRequest:
    """The HTTP API's request model for a gRPC ScoreRequest, validated by the same rules
    (so the same input gets the same error)."""
    return parse_score_request({"items": [_item_body(i, item) for i, item in enumerate(request.items)],
                                **_options(request)})


def item_result(index: int, out: RewardOutput) -> pb.ItemResult:
    result = pb.ItemResult(index=index, score=out.score, num_tokens=out.num_tokens, truncated=out.truncated,
                           cached=getattr(out, "cached", False))
    if out.dimensions is not None:
        result.dimensions.update(out.dimensions)
    if out.gating_weights is not None:
        result.gating_weights.extend(out.gating_weights)
    if out.step_rewards is not None:
        result.step_rewards.extend(out.step_rewards)
    return result


def score_response(scored: Scored) -> pb.ScoreResponse:
    return pb.ScoreResponse(
        model=scored.model, revision=scored.revision, kind=scored.kind.value,
        results=[item_result(i, out) for i, out in enumerate(scored.outputs)],
        usage=pb.Usage(total_tokens=scored.total_tokens), normalized=getattr(scored, "normalized", False),
    )


def error_message(err: APIError) -> pb.Error:
    retry = retry_after(err)
    return pb.Error(grpc_code=grpc_code(err).value[0], http_status=err.status, code=err.code,
                    message=status_message(err), field=err.field or "", retry_after_s=float(retry) if retry else 0.0)


def model_card(card: ModelCard) -> pb.ModelCard:
    fields = card.model_dump(mode="json", exclude_none=True)
    return pb.ModelCard(**{name: value for name, value in fields.items() if name in pb.ModelCard.DESCRIPTOR.fields_by_name})


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


# ---- ranking: the HTTP handlers themselves, so HTTP and gRPC rank alike ------------------


class _HandlerRequest:
    """What the HTTP ranking handlers read from their Starlette request: the app, and
    receive(), on which they wait for a disconnect. That never comes here: a cancelled
    gRPC call cancels the handler itself, which drops its queued items the same way."""

    def __init__(self, app):
        self.app = app

    async def receive(self) -> dict:
        await asyncio.get_running_loop().create_future()
        return {"type": "http.disconnect"}


def _candidate(index: int, candidate: pb.Candidate, list_name: str) -> dict:
    form = candidate.WhichOneof("form")
    if form == "text":
        return {"text": candidate.text}
    if form == "steps":
        return {"steps": list(candidate.steps.steps)}
    if form == "tokens":
        return _item_body(index, pb.Item(tokens=candidate.tokens))
    raise APIError(422, "invalid_request", "a candidate must set one of text, steps or tokens",
                   f"{list_name}[{index}]")


def _ranking_body(request, deadline: float | None, **fields) -> dict:
    """An HTTP ranking body from a gRPC request: its options, the shared `prompt`/`query` and
    `messages` when set, and `fields`; the call's deadline bounds timeout_ms."""
    body = _options(request)
    for name in ("prompt", "query"):
        if name in request.DESCRIPTOR.fields_by_name and request.HasField(name):
            body[name] = getattr(request, name)
    if "messages" in request.DESCRIPTOR.fields_by_name and request.messages:
        body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
    given = body.get("timeout_ms")
    if deadline is not None and (given is None or 0 < deadline < given):
        body["timeout_ms"] = max(deadline, 0.001)
    return {**body, **fields}


def _validated(model, body: dict):
    try:
        return model.model_validate(body)
    except ValidationError as err:
        raise validation_error(err.errors()) from None


def _to_message(response, message_type, **replace):
    """An HTTP response model as the gRPC message of the same shape."""
    data = {**response.model_dump(mode="json"), **replace}
    return json_format.ParseDict(data, message_type(), ignore_unknown_fields=True)


async def compare(app, request: pb.CompareRequest, deadline: float | None) -> pb.CompareResponse:
    responses = [_candidate(i, c, "responses") for i, c in enumerate(request.responses)]
    body = _validated(http_ranking.CompareRequest, _ranking_body(request, deadline, responses=responses,
                                                         tie_margin=request.tie_margin))
    response = await http_ranking.compare_responses(body, _HandlerRequest(app))
    return _to_message(response, pb.CompareResponse, pairwise=[{"values": row} for row in response.pairwise])


async def rerank(app, request: pb.RerankRequest, deadline: float | None) -> pb.RerankResponse:
    fields = {"documents": [_candidate(i, c, "documents") for i, c in enumerate(request.documents)]}
    if request.top_n:
        fields["top_n"] = request.top_n
    if request.HasField("return_documents"):
        fields["return_documents"] = request.return_documents
    if request.aggregation:
        fields["aggregation"] = request.aggregation
    if request.weights:
        fields["weights"] = dict(request.weights)
    body = _validated(http_ranking.RerankRequest, _ranking_body(request, deadline, **fields))
    return _to_message(await http_ranking.rerank_documents(body, _HandlerRequest(app)), pb.RerankResponse)


async def steps(app, request: pb.StepsRequest, deadline: float | None) -> pb.StepsResponse:
    fields = {"items": [_item_body(i, item) for i, item in enumerate(request.items)]}
    if request.HasField("threshold"):
        fields["threshold"] = request.threshold
    body = _validated(http_ranking.StepsRequest, _ranking_body(request, deadline, **fields))
    return _to_message(await http_ranking.score_steps(body, _HandlerRequest(app)), pb.StepsResponse)


# ---- the service ----------------------------------------------------------------------


class RewardService(pb_grpc.RewardServiceServicer):
    def __init__(self, app):
        self.app = app
        self.state = app.state

    async def _score(self, request: pb.ScoreRequest, context) -> pb.ScoreResponse:
        job = score_job(score_request(request), deadline_ms(context))
        return score_response(await self.state.scorer.score(job))

    async def Score(self, request: pb.ScoreRequest, context) -> pb.ScoreResponse:
        try:
            return await self._score(request, context)
        except APIError as err:
            await abort(context, err)
        except Exception as err:  # noqa: BLE001 - reported as INTERNAL, like HTTP's 500
            await abort(context, internal_error(err))

    async def ScoreStream(self, requests, context) -> AsyncIterator[pb.ScoreStreamResponse]:
        async def handle(request: pb.ScoreRequest) -> pb.ScoreStreamResponse:
            try:
                response = await self._score(request, context)
            except APIError as err:
                return pb.ScoreStreamResponse(request_id=request.request_id, error=error_message(err))
            except Exception as err:  # noqa: BLE001 - one request's failure does not end the stream
                return pb.ScoreStreamResponse(request_id=request.request_id, error=error_message(internal_error(err)))
            return pb.ScoreStreamResponse(request_id=request.request_id, response=response)

        async for response in serve_concurrently(requests, handle):
            yield response

    async def _unary(self, work, request, context):
        try:
            return await work(self.app, request, deadline_ms(context))
        except APIError as err:
            await abort(context, err)
        except Exception as err:  # noqa: BLE001 - reported as INTERNAL, like HTTP's 500
            await abort(context, internal_error(err))

    async def Compare(self, request: pb.CompareRequest, context) -> pb.CompareResponse:
        return await self._unary(compare, request, context)

    async def Rerank(self, request: pb.RerankRequest, context) -> pb.RerankResponse:
        return await self._unary(rerank, request, context)

    async def Steps(self, request: pb.StepsRequest, context) -> pb.StepsResponse:
        return await self._unary(steps, request, context)

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        runners = self.state.registry.runners.values()
        return pb.ListModelsResponse(models=[model_card(ModelCard.build(r.name, r.status, r.info)) for r in runners])


# ---- the server -----------------------------------------------------------------------


class GrpcServer:
    """The grpc.aio server of one app: started in the app's lifespan, on its event loop."""

    def __init__(self, app, port: int):
        from tritonclient.grpc import service_pb2_grpc

        from service.kserve_grpc import KServeService

        self.app = app
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ], interceptors=[GrpcMetricsInterceptor(app.state.monitoring.metrics)])
        pb_grpc.add_RewardServiceServicer_to_server(RewardService(app), self.server)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(KServeService(app), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.services = ["", SERVICE_NAME, KServeService.NAME]
        host = app.state.settings.host
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError as err:
            raise RuntimeError(f"cannot listen for gRPC on {address} ({err}); set grpc_port "
                               "(REWARDSERVE_GRPC_PORT) to a free port, or 0 to turn gRPC off") from err
        self._watch: asyncio.Task | None = None

    async def start(self, loading: Awaitable | None = None) -> None:
        for service in self.services:
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        self._watch = asyncio.create_task(self._serving_when_loaded(loading))
        log.info("gRPC listening on port %d", self.port)

    async def _serving_when_loaded(self, loading: Awaitable | None) -> None:
        """SERVING (overall and per service) once every model is ready, as /health/ready."""
        if loading is not None:
            await asyncio.shield(loading)
        ready = self.app.state.registry.ready
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in self.services:
            await self.health.set(service, status)

    async def stop(self, grace: float = SHUTDOWN_GRACE_S) -> None:
        if self._watch is not None:
            self._watch.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_grpc(app) -> GrpcServer | None:
    """Start the app's gRPC server on `settings.grpc_port` (None when that is 0)."""
    port = app.state.settings.grpc_port
    if not port:
        return None
    server = GrpcServer(app, port)
    await server.start(getattr(app.state, "loading", None))
    app.state.grpc_port = server.port
    return server
