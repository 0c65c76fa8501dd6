"""A KServe v2 inference request and its answer without their wire: the HTTP routes and the
gRPC service decode their messages into an `InferRequest` and encode the `InferResponse`
the data plane gives back. The descriptions (server and model metadata, model config, the
repository index) travel as dicts in the REST API's JSON form, which gRPC transcribes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from service.kserve.tensors import TensorSpec


@dataclass(frozen=True)
class InferRequest:
    model_name: str
    model_version: str | None
    inputs: dict[str, np.ndarray]
    parameters: dict = field(default_factory=dict)
    outputs: list[str] | None = None  # the outputs wanted, in this order (None: every one)
    id: str | None = None
    deadline_ms: float | None = None  # what is left of the call's own deadline (gRPC's), if it has one


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[tuple[TensorSpec, np.ndarray]]
    parameters: dict[str, str] | None = None
    id: str | None = None
