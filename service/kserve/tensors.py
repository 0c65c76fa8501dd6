"""KServe v2 tensors as numpy arrays, and the bytes of Triton's binary tensor data (each
BYTES element a little-endian uint32 length, then its bytes; every other datatype its
little-endian values). Wire-independent: the HTTP routes and the gRPC service both read
their inputs and write their outputs with these."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import numpy as np

from service.core.errors import APIError

DTYPES = {
    "BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}
INTEGER_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}

@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: list[int]

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def deserialize_bytes(name: str, raw: bytes) -> np.ndarray:
    """Triton's BYTES serialization: each element a little-endian uint32 length, then bytes."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise bad_input(name, "binary BYTES data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise bad_input(name, f"binary BYTES element {len(items)} claims {length} bytes past the data's end")
        items.append(raw[offset:offset + length])
        offset += length
    return np.array(items, dtype=np.object_)


def serialize_bytes(values: np.ndarray) -> bytes:
    parts = []
    for value in values.reshape(-1):
        data = value if isinstance(value, bytes) else str(value).encode()
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)


def from_raw(name: str, datatype: str, shape: list[int], raw: bytes) -> np.ndarray:
    if datatype not in DTYPES:
        raise bad_input(name, f"unsupported datatype {datatype!r}")
    if datatype == "BYTES":
        array = deserialize_bytes(name, raw)
    else:
        dtype = np.dtype(DTYPES[datatype]).newbyteorder("<")
        if len(raw) % dtype.itemsize:
            raise bad_input(name, f"{len(raw)} bytes of binary data is not a whole number of {datatype} values")
        array = np.frombuffer(raw, dtype=dtype)
    return reshape(name, array, shape)


def parse_json(text: bytes | str, field: str):
    """JSON from a client, with nesting too deep for the parser refused like any bad JSON."""
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise APIError(400, "invalid_json", f"{field} is not valid JSON: {err}", None if field == "request body"
                       else field) from None
    except RecursionError:
        raise APIError(400, "invalid_json", f"{field} nests too deeply", None if field == "request body"
                       else field) from None


def from_list(name: str, datatype: str, shape: list[int], data) -> np.ndarray:
    """A tensor from JSON data (flat or nested lists)."""
    if datatype not in DTYPES:
        raise bad_input(name, f"unsupported datatype {datatype!r}")
    try:
        flat = list(_flatten(data))
    except RecursionError:
        raise bad_input(name, "data nests too deeply") from None
    if datatype == "BYTES":
        if not all(isinstance(v, (str, bytes)) for v in flat):
            raise bad_input(name, "BYTES data must be strings")
        array = np.array([v.encode() if isinstance(v, str) else v for v in flat], dtype=np.object_)
    else:
        if datatype in INTEGER_TYPES and not all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
            raise bad_input(name, f"{datatype} data must be integers")
        try:
            array = np.array(flat, dtype=DTYPES[datatype])
        except (TypeError, ValueError, OverflowError) as err:
            raise bad_input(name, f"data is not {datatype}: {err}") from None
    return reshape(name, array, shape)


def _flatten(data):
    if isinstance(data, (list, tuple)):
        for value in data:
            yield from _flatten(value)
    else:
        yield data


def reshape(name: str, array: np.ndarray, shape: list[int]) -> np.ndarray:
    shape = [int(d) for d in shape]
    if any(d < 0 for d in shape):
        raise bad_input(name, f"shape {shape} has a negative dimension")
    if array.size != math.prod(shape):
        raise bad_input(name, f"shape {shape} holds {math.prod(shape)} elements but the data has {array.size}")
    return array.reshape(shape)


def bad_input(field: str, message: str) -> APIError:
    """400 about one input (or one element of it: `field` is e.g. `prompt` or `steps_json[2]`)."""
    return APIError(400, "invalid_input", message, field)


def to_raw(datatype: str, array: np.ndarray) -> bytes:
    """An output tensor as binary tensor data."""
    if datatype == "BYTES":
        return serialize_bytes(array)
    return array.astype(array.dtype.newbyteorder("<")).tobytes()
