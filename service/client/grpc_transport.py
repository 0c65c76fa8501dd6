"""The gRPC transport (rewardserve.v1.RewardService, service/grpc/proto/rewardserve.proto). A
request body in the HTTP API's JSON shape becomes the proto request; the response comes
back in the HTTP API's JSON shape, so it validates into the same pydantic result types;
a failed call becomes the RewardServeError the HTTP API answers for the same input."""

from __future__ import annotations

import types
import typing
from typing import Any

import grpc
from google.protobuf import json_format
from pydantic import BaseModel

from service.client.common import RESULT_TYPES, RewardServeError, retry_hint
from service.grpc.proto import rewardserve_pb2 as pb
from service.grpc.proto import rewardserve_pb2_grpc as pb_grpc
from service.protocol.errors import CODE_KEY, FIELD_KEY, RETRY_AFTER_KEY
from service.protocol.scoring import Context

RPCS = {"score": ("Score", pb.ScoreRequest), "compare": ("Compare", pb.CompareRequest),
        "rerank": ("Rerank", pb.RerankRequest), "steps": ("Steps", pb.StepsRequest),
        "models": ("ListModels", pb.ListModelsRequest)}
# The HTTP status each gRPC status stands for (the server's INVALID_ARGUMENT is its 422 or 400;
# the /v1 API's validation errors are 422).
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 422,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# The server's message size limit, so the large token-id batches it accepts can be sent.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 2**20), ("grpc.max_send_message_length", 64 * 2**20)]
_ZEROS = (bool, int, float, str, list, dict)
CONTEXT = tuple(Context.model_fields)


# ---- requests -------------------------------------------------------------------------


def _item(item: dict) -> dict:
    """A /v1/score JSON item as an Item message, its form told apart as the server does and
    its context (ground_truth, data_source, extra_info) beside the form."""
    context = {key: item[key] for key in CONTEXT if item.get(key) is not None}
    item = {key: value for key, value in item.items() if key not in CONTEXT}
    for key, form in (("messages", "chat"), ("input_ids", "tokens"), ("steps", "steps")):
        if key in item:
            return {form: item, **context}
    return {"text": item, **context}


def _candidate(candidate: Any) -> Any:
    """A response or document to rank (a string, {text}, {steps} or {input_ids}) as a Candidate."""
    if isinstance(candidate, str):
        return {"text": candidate}
    if "steps" in candidate:
        return {"steps": {"steps": candidate["steps"]}}
    if "input_ids" in candidate:
        return {"tokens": candidate}
    return candidate


def to_request(method: str, body: dict | None):
    """The proto request for a JSON body; a body the proto cannot carry is refused as the
    server refuses bad input."""
    fields = {name: value for name, value in (body or {}).items() if value is not None}
    if "items" in fields:
        fields["items"] = [_item(item) for item in fields["items"]]
    for name in ("responses", "documents"):
        if name in fields:
            fields[name] = [_candidate(c) for c in fields[name]]
    try:
        return json_format.ParseDict(fields, RPCS[method][1]())
    except json_format.ParseError as err:
        raise RewardServeError(422, "invalid_request", str(err), grpc_code=grpc.StatusCode.INVALID_ARGUMENT) from None


# ---- responses ------------------------------------------------------------------------


def _shape(value: Any, annotation: Any, order: list[str]) -> Any:
    """A proto JSON value shaped as the HTTP API's JSON for `annotation`: proto3 leaves out
    zeros and unset fields, so a missing field is None where the type allows None (as the
    HTTP API leaves out what does not apply), else its type's zero; maps keyed by
    dimension names come in the model's `order`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {name: _field(value, name, field.annotation, order) for name, field in annotation.model_fields.items()}
    args, origin = typing.get_args(annotation), typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) > 1 and isinstance(value, dict):  # models: the first with every field the value has
            fitting = [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)
                       and set(value) <= set(a.model_fields)]
            inner = fitting[:1] or inner
        return _shape(value, inner[0], order) if len(inner) == 1 else value
    if origin is list:
        return [_shape(v, args[0], order) for v in value]
    if origin is dict:
        keys = sorted(value, key=lambda k: order.index(k) if k in order else len(order))
        return {k: _shape(value[k], args[1], order) for k in keys}
    return value


def _field(data: dict, name: str, annotation: Any, order: list[str]) -> Any:
    if name in data:
        return _shape(data[name], annotation, order)
    if typing.get_origin(annotation) is typing.Literal and len(typing.get_args(annotation)) == 1:
        return typing.get_args(annotation)[0]  # a constant (`object: "list"`), which proto does not carry
    if type(None) in typing.get_args(annotation):
        return None
    zero = typing.get_origin(annotation) or annotation
    return zero() if zero in _ZEROS else None


def to_json(method: str, response, order: list[str]) -> dict:
    """A proto response as the HTTP API's JSON body for the same request."""
    data = json_format.MessageToDict(response, preserving_proto_field_name=True)
    if "pairwise" in data:
        data["pairwise"] = [row.get("values", []) for row in data["pairwise"]]
    return _shape(data, RESULT_TYPES[method], order)


def needs_order(response) -> bool:
    """Multi-objective and pipeline results carry dimension (and component) maps, which proto
    maps do not keep in order."""
    return getattr(response, "kind", "") in ("multi_objective", "pipeline")


def dimension_orders(listed: pb.ListModelsResponse) -> dict[str, list[str]]:
    return {card.name: list(card.dimensions) for card in listed.models}


def to_error(err: grpc.RpcError) -> RewardServeError:
    """A failed call as the HTTP API's error, the code, field and retry hint read from the
    trailing metadata (a status from elsewhere, like an unreachable server, is coded by its
    name)."""
    code = err.code()
    metadata = dict(err.trailing_metadata() or ())
    return RewardServeError(HTTP_STATUS.get(code, 500), metadata.get(CODE_KEY) or code.name.lower(),
                            err.details() or code.name, metadata.get(FIELD_KEY) or None,
                            grpc_code=code, retry_after_s=retry_hint(metadata.get(RETRY_AFTER_KEY)))


# ---- channels -------------------------------------------------------------------------


class GrpcTransport:
    """Over grpc's sync channel; the client timeout is each call's deadline."""

    def __init__(self, target: str, timeout_s: float, metadata: dict[str, str] | None = None,
                 credentials: grpc.ChannelCredentials | None = None):
        self._channel = (grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS) if credentials is not None
                         else grpc.insecure_channel(target, options=CHANNEL_OPTIONS))
        self._stub = pb_grpc.RewardServiceStub(self._channel)
        self._timeout_s = timeout_s
        self._metadata = tuple((metadata or {}).items())
        self._dimensions: dict[str, list[str]] = {}

    def _rpc(self, name: str, request):
        try:
            return getattr(self._stub, name)(request, timeout=self._timeout_s, metadata=self._metadata)
        except grpc.RpcError as err:
            raise to_error(err) from None

    def call(self, method: str, body: dict | None) -> dict:
        response = self._rpc(RPCS[method][0], to_request(method, body))
        if needs_order(response) and response.model not in self._dimensions:
            self._dimensions.update(dimension_orders(self._rpc("ListModels", pb.ListModelsRequest())))
        return to_json(method, response, self._dimensions.get(getattr(response, "model", ""), []))

    def close(self) -> None:
        self._channel.close()


class AsyncGrpcTransport:
    """Over grpc.aio; the channel opens on the first call, on the event loop that makes it."""

    def __init__(self, target: str, timeout_s: float, metadata: dict[str, str] | None = None,
                 credentials: grpc.ChannelCredentials | None = None):
        self._target, self._timeout_s, self._credentials = target, timeout_s, credentials
        self._metadata = tuple((metadata or {}).items())
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.RewardServiceStub | None = None
        self._dimensions: dict[str, list[str]] = {}

    async def _rpc(self, name: str, request):
        if self._channel is None:
            self._channel = (
                grpc.aio.secure_channel(self._target, self._credentials, options=CHANNEL_OPTIONS)
                if self._credentials is not None else grpc.aio.insecure_channel(self._target, options=CHANNEL_OPTIONS))
            self._stub = pb_grpc.RewardServiceStub(self._channel)
        try:
            return await getattr(self._stub, name)(request, timeout=self._timeout_s, metadata=self._metadata)
        except grpc.RpcError as err:
            raise to_error(err) from None

    async def call(self, method: str, body: dict | None) -> dict:
        response = await self._rpc(RPCS[method][0], to_request(method, body))
        if needs_order(response) and response.model not in self._dimensions:
            self._dimensions.update(dimension_orders(await self._rpc("ListModels", pb.ListModelsRequest())))
        return to_json(method, response, self._dimensions.get(getattr(response, "model", ""), []))

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
