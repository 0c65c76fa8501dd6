"""KServe v2 / Triton gRPC (`inference.GRPCInferenceService`), so unmodified
`tritonclient.grpc` clients can check health, read metadata and configuration, load and
unload models and score.
The service definition is the one tritonclient ships (its generated `service_pb2`). Every
answer is the data plane's (service/kserve/dataplane.py), as over HTTP: this module only
decodes the messages and encodes the answers. Methods beyond health, metadata, config, the
model repository and inference (shared memory, statistics, tracing) answer UNIMPLEMENTED."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from service.core.errors import APIError, status_message
from service.grpc.calls import deadline_ms, serve_concurrently, trailing_metadata
from service.kserve.dataplane import DataPlane, unexpected, wire_status
from service.kserve.tensors import DTYPES, bad_input, from_raw, reshape, to_raw
from service.kserve.types import InferRequest, InferResponse

CONTENTS = {  # datatype -> the InferTensorContents field holding it
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def _parameters(params) -> dict:
    out = {}
    for key, value in params.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is not None:
            out[key] = getattr(value, choice)
    return out


def _tensors(request: service_pb2.ModelInferRequest) -> dict[str, np.ndarray]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise APIError(400, "invalid_request", f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; "
                       "send every input raw or none", "raw_input_contents")
    tensors = {}
    for i, tensor in enumerate(request.inputs):
        name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
        if name in tensors:
            raise bad_input(name, "sent twice")
        if datatype not in CONTENTS:
            raise bad_input(name, f"unsupported datatype {datatype!r}")
        if raw:
            tensors[name] = from_raw(name, datatype, shape, raw[i])
        else:
            values = list(getattr(tensor.contents, CONTENTS[datatype]))
            if datatype == "BYTES":
                array = np.array(values, dtype=np.object_)
            else:
                array = np.array(values, dtype=DTYPES[datatype])
            tensors[name] = reshape(name, array, shape)
    return tensors


def _request(request: service_pb2.ModelInferRequest, context) -> InferRequest:
    return InferRequest(request.model_name, request.model_version, _tensors(request), _parameters(request.parameters),
                        [out.name for out in request.outputs] or None, request.id, deadline_ms(context))


def _response(answer: InferResponse) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(model_name=answer.model_name, model_version=answer.model_version,
                                              id=answer.id)
    for key, value in (answer.parameters or {}).items():
        response.parameters[key].string_param = value
    for spec, array in answer.outputs:
        response.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        response.raw_output_contents.append(to_raw(spec.datatype, array))
    return response


def status_code(err: APIError) -> grpc.StatusCode:
    return grpc.StatusCode[wire_status(err)[1]]


async def abort(context: grpc.aio.ServicerContext, err: APIError) -> None:
    """End the call with the data plane's status for `err` (raises, as context.abort does)."""
    await context.abort(status_code(err), status_message(err), trailing_metadata(err))


class KServeService(service_pb2_grpc.GRPCInferenceServiceServicer):
    NAME = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

    def __init__(self, plane: DataPlane):
        self.plane = plane

    # ---- health and metadata -------------------------------------------------------

    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=self.plane.server_live())

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self.plane.server_ready())

    async def ModelReady(self, request, context):
        try:
            ready = self.plane.model_ready(request.name, request.version)
        except APIError:  # a model or version nobody serves is not ready (as Triton answers it)
            ready = False
        return service_pb2.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request, context):
        return json_format.ParseDict(self.plane.server_metadata(), service_pb2.ServerMetadataResponse())

    async def ModelMetadata(self, request, context):
        try:
            metadata = self.plane.model_metadata(request.name, request.version)
        except APIError as err:
            await abort(context, err)
        # The gRPC message has no `parameters`: the kind and revision are in the config.
        fields = {key: value for key, value in metadata.items() if key != "parameters"}
        return json_format.ParseDict(fields, service_pb2.ModelMetadataResponse())

    async def ModelConfig(self, request, context):
        try:
            config = self.plane.model_config(request.name, request.version)
        except APIError as err:
            await abort(context, err)
        return service_pb2.ModelConfigResponse(config=json_format.ParseDict(config, model_config_pb2.ModelConfig()))

    async def RepositoryIndex(self, request, context):
        index = {"models": self.plane.repository_index(request.ready)}
        return json_format.ParseDict(index, service_pb2.RepositoryIndexResponse())

    async def RepositoryModelLoad(self, request, context):
        try:
            await self.plane.load(request.model_name, _parameters(request.parameters))
        except APIError as err:
            await abort(context, err)
        return service_pb2.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        try:
            await self.plane.unload(request.model_name, _parameters(request.parameters))
        except APIError as err:
            await abort(context, err)
        return service_pb2.RepositoryModelUnloadResponse()

    # ---- inference -----------------------------------------------------------------

    async def ModelInfer(self, request, context):
        try:
            return _response(await self.plane.infer(_request(request, context)))
        except APIError as err:
            await abort(context, err)

    async def ModelStreamInfer(self, requests, context) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        """Each request answered as it finishes; a failed one gets `error_message` (with its
        status code in brackets) and the stream goes on."""
        async def handle(request):
            try:
                answer = await self.plane.infer(_request(request, context))
                return service_pb2.ModelStreamInferResponse(infer_response=_response(answer))
            except Exception as err:  # noqa: BLE001 - one request's failure does not end the stream
                error = err if isinstance(err, APIError) else unexpected(err)
                return service_pb2.ModelStreamInferResponse(
                    error_message=f"[{status_code(error).name}] {status_message(error)}",
                    infer_response=service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id))

        async for response in serve_concurrently(requests, handle):
            yield response


async def _unimplemented(self, request, context):
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "rewardserve does not implement this KServe method")


for _method in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
    if _method.name not in vars(KServeService):
        setattr(KServeService, _method.name, _unimplemented)
