"""Requests in the wire forms of the gRPC API and of KServe v2 (through the real Triton
clients), shared by the gRPC, KServe and protocol-parity tests."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from http_helpers import sample_items

from service.grpc.proto import rewardserve_pb2 as pb

# How a test talks to the server: (client module, binary tensor data over HTTP)
TRANSPORTS = {"http-binary": (triton_http, True), "http-json": (triton_http, False), "grpc": (triton_grpc, None)}


def infer(clients, transport: str, model: str, tensors: dict[str, np.ndarray], outputs: list[str] | None = None,
          **options):
    """One inference through a real Triton client; the InferResult."""
    module, binary = TRANSPORTS[transport]
    inputs = []
    for name, array in tensors.items():
        datatype = "BYTES" if array.dtype == np.object_ else {"int64": "INT64", "float32": "FP32"}[str(array.dtype)]
        tensor = module.InferInput(name, list(array.shape), datatype)
        if module is triton_http:
            tensor.set_data_from_numpy(array, binary_data=binary)
        else:
            tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    requested = None
    if outputs is not None:
        requested = [module.InferRequestedOutput(name, binary_data=binary) if module is triton_http
                     else module.InferRequestedOutput(name) for name in outputs]
    elif module is triton_http and binary is False:  # JSON out as well: name every output, none binary
        metadata = clients[module].get_model_metadata(model)
        requested = [module.InferRequestedOutput(o["name"], binary_data=False) for o in metadata["outputs"]]
    return clients[module].infer(model, inputs, outputs=requested, **options)


def texts(values: list[str]) -> np.ndarray:
    return np.array([v.encode() for v in values], dtype=np.object_)


def text_items(model) -> list[dict]:
    return [item for item in sample_items(model) if "response" in item]


def step_items(model) -> list[dict]:
    return [item for item in sample_items(model) if "steps" in item]


# ---- the gRPC API's messages ---------------------------------------------------------


def to_item(item: dict) -> pb.Item:
    """A /v1/score JSON item as a gRPC Item."""
    if "messages" in item:
        return pb.Item(chat=pb.ChatItem(messages=[pb.Message(**m) for m in item["messages"]]))
    if "input_ids" in item:
        return pb.Item(tokens=pb.TokensItem(**item))
    if "steps" in item:
        return pb.Item(steps=pb.StepsItem(**item))
    return pb.Item(text=pb.TextItem(**item))


def to_request(body: dict) -> pb.ScoreRequest:
    return pb.ScoreRequest(items=[to_item(item) for item in body["items"]],
                           **{k: v for k, v in body.items() if k != "items"})
