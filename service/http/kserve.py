"""KServe v2 / Triton HTTP routes (`/v2/...`), so unmodified `tritonclient.http` clients can
check health, read model metadata and score. Every answer is the data plane's
(service/kserve/dataplane.py), as over gRPC: these routes only decode the requests, with
JSON tensor data or Triton's binary tensor extension (the `Inference-Header-Content-Length`
header: a JSON header, then the raw tensors), and encode the answers the same two ways.
Errors are KServe's `{"error": "..."}`."""

from __future__ import annotations

import json

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from service.core.errors import APIError, status_message
from service.http.disconnect import unless_disconnected
from service.kserve.dataplane import STATUSES, DataPlane, wire_status
from service.kserve.tensors import bad_input, from_list, from_raw, parse_json, to_raw
from service.kserve.types import InferRequest, InferResponse


class KServeError(BaseModel):
    error: str


# What a /v2 route may answer besides 200, for its OpenAPI entry (KServe's error body).
KSERVE_ERRORS = {status: {"model": KServeError} for status in sorted({http for http, _ in STATUSES.values()})}
router = APIRouter(prefix="/v2", tags=["KServe v2"], responses=KSERVE_ERRORS)
HEADER_LENGTH = "Inference-Header-Content-Length"


def kserve_error(err: APIError) -> JSONResponse:
    return JSONResponse({"error": status_message(err)}, status_code=wire_status(err)[0], headers=err.headers)


def plane(request: Request) -> DataPlane:
    return DataPlane(request.app.state.scorer)  # stateless: as cheap as a lookup


@router.get("")
async def server_metadata(request: Request):
    return plane(request).server_metadata()


@router.get("/health/live")
@router.head("/health/live", include_in_schema=False)
async def server_live(request: Request):
    return {"live": plane(request).server_live()}


@router.get("/health/ready")
@router.head("/health/ready", include_in_schema=False)
async def server_ready(request: Request):
    ready = plane(request).server_ready()
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
@router.head("/models/{name}/ready", include_in_schema=False)
@router.head("/models/{name}/versions/{version}/ready", include_in_schema=False)
async def model_ready(name: str, request: Request, version: str | None = None):
    try:
        ready = plane(request).model_ready(name, version)
    except APIError as err:
        return kserve_error(err)
    return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(name: str, request: Request, version: str | None = None):
    try:
        return plane(request).model_metadata(name, version)
    except APIError as err:
        return kserve_error(err)


@router.get("/models/{name}/config")
@router.get("/models/{name}/versions/{version}/config")
async def model_config(name: str, request: Request, version: str | None = None):
    try:
        return plane(request).model_config(name, version)
    except APIError as err:
        return kserve_error(err)


@router.post("/repository/index")
async def repository_index(request: Request):
    """The body, optional, is KServe's `{"ready": true}` (only the models ready)."""
    try:
        body = await request.body()
        options = _object(parse_json(body, "request body"), "request body") if body.strip() else {}
        ready = options.get("ready", False)
        if not isinstance(ready, bool):
            raise APIError(400, "invalid_request", "must be true or false", "ready")
        return plane(request).repository_index(ready)
    except APIError as err:
        return kserve_error(err)


@router.post("/repository/models/{name}/load")
async def load_model(name: str, request: Request):
    """Triton's load (or reload): the optional body is `{"parameters": {"config": "{...}"}}`,
    the model's configuration fields as a JSON string (service.kserve.dataplane)."""
    try:
        await plane(request).load(name, await _parameters(request))
    except APIError as err:
        return kserve_error(err)
    return {}


@router.post("/repository/models/{name}/unload")
async def unload_model(name: str, request: Request):
    try:
        await plane(request).unload(name, await _parameters(request))
    except APIError as err:
        return kserve_error(err)
    return {}


async def _parameters(request: Request) -> dict:
    """The `parameters` of a repository call's optional JSON body."""
    body = await request.body()
    options = _object(parse_json(body, "request body"), "request body") if body.strip() else {}
    return _object(options.get("parameters"), "parameters")


@router.post("/models/{name}/infer")
@router.post("/models/{name}/versions/{version}/infer")
async def infer(name: str, request: Request, version: str | None = None):
    try:
        header, tensors, binary_out = _decode(*await _body(request))
        requested = [out["name"] for out in header["outputs"]] if header.get("outputs") else None
        call = InferRequest(name, version, tensors, _object(header.get("parameters"), "parameters"), requested,
                            header.get("id"))
        answer = await unless_disconnected(request, plane(request).infer(call))
    except APIError as err:
        return kserve_error(err)
    return _encode(answer, "id" in header, binary_out)


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


def _encode(answer: InferResponse, echo_id: bool, binary_out: dict[str, bool]) -> Response:
    body: dict = {"model_name": answer.model_name, "model_version": answer.model_version}
    if echo_id:
        body["id"] = answer.id
    if answer.parameters is not None:
        body["parameters"] = answer.parameters
    chunks: list[bytes] = []
    tensors = []
    for spec, array in answer.outputs:
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
