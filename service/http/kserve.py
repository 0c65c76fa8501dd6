"""KServe v2 / Triton HTTP routes (`/v2/...`), so unmodified `tritonclient.http` clients can
check health, read model metadata and score. Tensors per service/kserve/; JSON tensor
data and Triton's binary tensor extension (the `Inference-Header-Content-Length` header:
a JSON header, then the raw tensors) both ways. Errors are KServe's `{"error": "..."}`."""

from __future__ import annotations

import json

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from service.core.errors import APIError, status_message
from service.http.disconnect import unless_disconnected
from service.kserve import graph as kserve_graph
from service.kserve import inference, models
from service.kserve.tensors import bad_input, from_list, from_raw, parse_json, to_raw

class KServeError(BaseModel):
    error: str


# What a /v2 route may answer besides 200, for its OpenAPI entry (KServe's error body).
KSERVE_ERRORS = {status: {"model": KServeError} for status in (400, 404, 429, 499, 500, 503, 504)}
router = APIRouter(prefix="/v2", tags=["KServe v2"], responses=KSERVE_ERRORS)
HEADER_LENGTH = "Inference-Header-Content-Length"


def kserve_error(err: APIError) -> JSONResponse:
    status = 400 if err.status == 422 else err.status
    return JSONResponse({"error": status_message(err)}, status_code=status, headers=err.headers)


@router.get("")
async def server_metadata():
    return {"name": models.SERVER_NAME, "version": models.server_version(), "extensions": models.EXTENSIONS}


@router.get("/health/live")
@router.head("/health/live", include_in_schema=False)
async def server_live():
    return {"live": True}


@router.get("/health/ready")
@router.head("/health/ready", include_in_schema=False)
async def server_ready(request: Request):
    ready = request.app.state.registry.ready
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
@router.head("/models/{name}/ready", include_in_schema=False)
@router.head("/models/{name}/versions/{version}/ready", include_in_schema=False)
async def model_ready(name: str, request: Request, version: str | None = None):
    try:
        if graph := kserve_graph.find(request.app.state.registry, name):
            ready = graph.ready and version in (None, "", models.VERSION)
        else:
            ready = models.find_runner(request.app.state.scorer, name, version, ready=False).status == "ready"
    except APIError as err:
        return kserve_error(err)
    return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(name: str, request: Request, version: str | None = None):
    try:
        if graph := kserve_graph.find(request.app.state.registry, name):
            return await kserve_graph.metadata(kserve_graph.checked(graph, version))
        return models.model_metadata(models.find_runner(request.app.state.scorer, name, version))
    except APIError as err:
        return kserve_error(err)


@router.get("/models/{name}/config")
@router.get("/models/{name}/versions/{version}/config")
async def model_config(name: str, request: Request, version: str | None = None):
    try:
        if graph := kserve_graph.find(request.app.state.registry, name):
            return await kserve_graph.config(kserve_graph.checked(graph, version))
        return models.model_config(models.find_runner(request.app.state.scorer, name, version))
    except APIError as err:
        return kserve_error(err)


@router.post("/repository/index")
async def repository_index(request: Request):
    out = []
    for name, runner in kserve_graph.repository(request.app.state.registry):
        entry = {"name": name, "version": models.VERSION, "state": models.REPOSITORY_STATES[runner.status]}
        if runner.error:
            entry["reason"] = runner.error
        out.append(entry)
    return out


@router.post("/models/{name}/infer")
@router.post("/models/{name}/versions/{version}/infer")
async def infer(name: str, request: Request, version: str | None = None):
    if graph := kserve_graph.find(request.app.state.registry, name):
        return await _infer_graph(graph, request, version)
    try:
        runner = models.find_runner(request.app.state.scorer, name, version)
        header, tensors, binary_out = _decode(*await _body(request))
        job, group = inference.score_job_for(runner, tensors, header.get("parameters") or {})
        try:
            scored = await unless_disconnected(request, request.app.state.scorer.score(job))
        except APIError as err:
            raise inference.tensor_error(err, group) from None
        requested = [out["name"] for out in header["outputs"]] if header.get("outputs") else None
        outputs = inference.output_tensors(runner, scored, requested)
    except APIError as err:
        return kserve_error(err)
    return _encode(header, runner.name, inference.response_parameters(scored), outputs, binary_out)


async def _infer_graph(graph: kserve_graph.GraphModel, request: Request, version: str | None) -> Response:
    try:
        header, tensors, binary_out = _decode(*await _body(request))
        requested = [out["name"] for out in header["outputs"]] if header.get("outputs") else None
        work = kserve_graph.infer(kserve_graph.checked(graph, version), tensors, requested)
        outputs = await unless_disconnected(request, work)
    except APIError as err:
        return kserve_error(err)
    return _encode(header, graph.name, None, outputs, binary_out)


async def _body(request: Request) -> tuple[bytes, int]:
    """The body (inflated already: service.http.encoding) and the length of its JSON header."""
    body = await request.body()
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return body, len(body)
    try:
        length = int(value)
    except ValueError:
        raise APIError(400, "invalid_request", f"{HEADER_LENGTH} {value!r} is not an integer") from None
    if not 0 < length <= len(body):
        raise APIError(400, "invalid_request", f"{HEADER_LENGTH} {length} does not fit the {len(body)}-byte body")
    return body, length


def _decode(body: bytes, length: int) -> tuple[dict, dict[str, np.ndarray], dict[str, bool]]:
    """The JSON header, every input as an array, and which outputs go back as binary."""
    header = parse_json(bytes(body[:length]), "request body")
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise APIError(400, "invalid_request", "the request must be an object with a list of 'inputs'", "inputs")
    binary = memoryview(body)[length:]
    offset = 0
    tensors: dict[str, np.ndarray] = {}
    for i, spec in enumerate(header["inputs"]):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise APIError(400, "invalid_request", f"inputs[{i}] must be an object with a 'name'", f"inputs[{i}]")
        name = spec["name"]
        datatype, shape = spec.get("datatype"), spec.get("shape")
        if not isinstance(datatype, str) or not isinstance(shape, list) or \
                not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise bad_input(name, "needs a 'datatype' string and a 'shape' list of integers")
        if name in tensors:
            raise bad_input(name, "sent twice")
        size = _object(spec.get("parameters"), f"inputs[{i}].parameters").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise bad_input(name, f"binary_data_size {size} runs past the end of the binary data")
            tensors[name] = from_raw(name, datatype, shape, bytes(binary[offset:offset + size]))
            offset += size
        elif "data" in spec:
            tensors[name] = from_list(name, datatype, shape, spec["data"])
        else:
            raise bad_input(name, "has neither 'data' nor binary data (parameters.binary_data_size)")
    if offset != len(binary):
        raise APIError(400, "invalid_request", f"{len(binary) - offset} bytes of binary data belong to no input")
    all_binary = bool(_object(header.get("parameters"), "parameters").get("binary_data_output", False))
    outputs = header.get("outputs") or []
    if not isinstance(outputs, list):
        raise APIError(400, "invalid_request", "'outputs' must be a list of objects with a 'name'", "outputs")
    binary_out = {}
    for i, out in enumerate(outputs):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise APIError(400, "invalid_request", "each of 'outputs' must be an object with a 'name'", f"outputs[{i}]")
        binary_out[out["name"]] = bool(_object(out.get("parameters"), f"outputs[{i}].parameters").get(
            "binary_data", all_binary))
    binary_out[""] = all_binary  # the default for outputs not listed
    return header, tensors, binary_out


def _object(value, field: str) -> dict:
    """A KServe `parameters` object (absent: empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise APIError(400, "invalid_request", f"must be an object, not {type(value).__name__}", field)
    return value


def _encode(header: dict, name: str, parameters: dict | None, outputs, binary_out: dict[str, bool]) -> Response:
    body: dict = {"model_name": name, "model_version": models.VERSION}
    if "id" in header:
        body["id"] = header["id"]
    if parameters is not None:
        body["parameters"] = parameters
    chunks: list[bytes] = []
    tensors = []
    for spec, array in outputs:
        tensor = spec.metadata()
        if binary_out.get(spec.name, binary_out[""]):
            raw = to_raw(spec.datatype, array)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = array.reshape(-1).tolist()
        tensors.append(tensor)
    body["outputs"] = tensors
    text = json.dumps(body).encode()  # NaN (step_rewards padding) is written as NaN, which Triton clients read
    if not chunks:
        return Response(text, media_type="application/json")
    return Response(text + b"".join(chunks), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(text))})
