"""KServe v2 / Triton gRPC (`inference.GRPCInferenceService`), so unmodified
`tritonclient.grpc` clients can check health, read metadata and configuration and score.
The service definition is the one tritonclient ships (its generated `service_pb2`); the
tensors follow service/kserve/. Methods beyond health, metadata, config, the repository
index and inference (shared memory, statistics, tracing, loading) answer UNIMPLEMENTED."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from service.core.errors import APIError, status_message
from service.core.scoring import Scorer
from service.grpc.calls import (
    abort,
    deadline_ms,
    grpc_code,
    internal_error,
    serve_concurrently,
)
from service.kserve import graph as kserve_graph
from service.kserve import inference, models
from service.kserve.tensors import (
    DTYPES,
    TensorSpec,
    bad_input,
    from_raw,
    reshape,
    to_raw,
)

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


def _response(name: str, request_id: str, outputs: list[tuple[TensorSpec, np.ndarray]],
              parameters: dict[str, str] | None = None) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(model_name=name, model_version=models.VERSION, id=request_id)
    for key, value in (parameters or {}).items():
        response.parameters[key].string_param = value
    for spec, array in outputs:
        response.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        response.raw_output_contents.append(to_raw(spec.datatype, array))
    return response


class KServeService(service_pb2_grpc.GRPCInferenceServiceServicer):
    NAME = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self.registry = scorer.registry

    # ---- health and metadata -------------------------------------------------------

    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self.registry.ready)

    async def ModelReady(self, request, context):
        graph = kserve_graph.find(self.registry, request.name)
        runner = graph.runner if graph else self.registry.runners.get(request.name)
        ready = runner is not None and runner.status == "ready" and request.version in ("", models.VERSION)
        return service_pb2.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(name=models.SERVER_NAME, version=models.server_version(),
                                                  extensions=models.EXTENSIONS)

    async def ModelMetadata(self, request, context):
        try:
            if graph := kserve_graph.find(self.registry, request.name):
                meta = await kserve_graph.metadata(kserve_graph.checked(graph, request.version))
            else:
                meta = models.model_metadata(models.find_runner(self.scorer, request.name, request.version))
        except APIError as err:
            await abort(context, err)
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]], outputs=[tensor(**t) for t in meta["outputs"]])

    async def ModelConfig(self, request, context):
        try:
            if graph := kserve_graph.find(self.registry, request.name):
                config = await kserve_graph.config(kserve_graph.checked(graph, request.version))
            else:
                config = models.model_config(models.find_runner(self.scorer, request.name, request.version))
        except APIError as err:
            await abort(context, err)
        config = json_format.ParseDict(config, model_config_pb2.ModelConfig())
        return service_pb2.ModelConfigResponse(config=config)

    async def RepositoryIndex(self, request, context):
        index = service_pb2.RepositoryIndexResponse.ModelIndex
        entries = [index(name=name, version=models.VERSION, state=models.REPOSITORY_STATES[r.status],
                         reason=r.error or "")
                   for name, r in kserve_graph.repository(self.registry) if not request.ready or r.status == "ready"]
        return service_pb2.RepositoryIndexResponse(models=entries)

    # ---- inference -----------------------------------------------------------------

    async def _infer(self, request: service_pb2.ModelInferRequest, context) -> service_pb2.ModelInferResponse:
        if graph := kserve_graph.find(self.registry, request.model_name):
            return await self._infer_graph(graph, request)
        runner = models.find_runner(self.scorer, request.model_name, request.model_version)
        job, group = inference.score_job_for(runner, _tensors(request), _parameters(request.parameters),
                                          deadline_ms(context))
        try:
            scored = await self.scorer.score(job)
        except APIError as err:
            raise inference.tensor_error(err, group) from None
        outputs = inference.output_tensors(runner, scored, [out.name for out in request.outputs] or None)
        return _response(runner.name, request.id, outputs, inference.response_parameters(scored))

    async def _infer_graph(self, graph: kserve_graph.GraphModel,
                           request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferResponse:
        outputs = await kserve_graph.infer(kserve_graph.checked(graph, request.model_version), _tensors(request),
                                           [out.name for out in request.outputs] or None)
        return _response(graph.name, request.id, outputs)

    async def ModelInfer(self, request, context):
        try:
            return await self._infer(request, context)
        except APIError as err:
            await abort(context, err)
        except Exception as err:  # noqa: BLE001 - reported as INTERNAL
            await abort(context, internal_error(err))

    async def ModelStreamInfer(self, requests, context) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        """Each request answered as it finishes; a failed one gets `error_message` (with its
        status code in brackets) and the stream goes on."""
        async def handle(request):
            try:
                return service_pb2.ModelStreamInferResponse(infer_response=await self._infer(request, context))
            except Exception as err:  # noqa: BLE001 - one request's failure does not end the stream
                error = err if isinstance(err, APIError) else internal_error(err)
                return service_pb2.ModelStreamInferResponse(
                    error_message=f"[{grpc_code(error).name}] {status_message(error)}",
                    infer_response=service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id))

        async for response in serve_concurrently(requests, handle):
            yield response


async def _unimplemented(self, request, context):
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "rewardserve does not implement this KServe method")


for _method in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
    if _method.name not in vars(KServeService):
        setattr(KServeService, _method.name, _unimplemented)
