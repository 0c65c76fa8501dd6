"""The Triton engine: a reward model's graph (the file `rewardserve export-onnx` writes) run by
a Triton Inference Server, or any KServe v2 server serving that graph, reached with
tritonclient over HTTP or gRPC. Each padded batch goes out as the graph's named int64 inputs
and its named float32 outputs come back, so tokenization, heads, batching and the cache stay
here, exactly as with the local engines. The server should not batch again (its model config
has max_batch_size 0): the scheduler here already formed the batch.

The model is checked when it loads (server live, model ready, its inputs and outputs those of
this model directory's graph), so a wrong deployment fails at start-up, not on the first
request. The remote version is pinned at load: the revision names it, and every request asks
for it, so scores never silently move to a version loaded later."""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from models.errors import ModelLoadError
from models.graph import AXES

INPUT_DATATYPE = "INT64"
OUTPUT_DATATYPE = "FP32"


@dataclass(frozen=True)
class TritonTarget:
    """Where the graph runs: `url` is host:port (Triton's 8000 for HTTP, 8001 for gRPC),
    `version` '' means the newest version the server has ready, and `timeout_s` bounds
    every call (connecting, metadata, one batch's inference)."""

    url: str
    model: str
    protocol: Literal["http", "grpc"] = "grpc"
    version: str = ""
    timeout_s: float = 60.0

    def __str__(self) -> str:
        version = f" version {self.version}" if self.version else ""
        return f"model {self.model!r}{version} on Triton server {self.protocol}://{self.url}"


class TritonError(RuntimeError):
    """A call to the Triton server failed: unreachable, timed out, or the request refused."""


class _Client:
    """One tritonclient client (HTTP or gRPC) behind the few calls the engine makes."""

    def __init__(self, target: TritonTarget):
        self.module = importlib.import_module(f"tritonclient.{target.protocol}")
        self.grpc = target.protocol == "grpc"
        if self.grpc:
            self.client = self.module.InferenceServerClient(target.url)
            self.deadline = {"client_timeout": target.timeout_s}
        else:
            self.client = self.module.InferenceServerClient(
                target.url, connection_timeout=target.timeout_s, network_timeout=target.timeout_s)
            self.deadline = {}

    def live(self) -> bool:
        return self.client.is_server_live(**self.deadline)

    def ready(self, model: str, version: str) -> bool:
        return self.client.is_model_ready(model, version, **self.deadline)

    def metadata(self, model: str, version: str) -> dict:
        if self.grpc:
            return self.client.get_model_metadata(model, version, as_json=True, **self.deadline)
        return self.client.get_model_metadata(model, version)

    def infer(self, model: str, version: str, arrays: dict[str, np.ndarray], outputs: tuple[str, ...]) -> dict:
        inputs = []
        for name, array in arrays.items():
            tensor = self.module.InferInput(name, list(array.shape), INPUT_DATATYPE)
            tensor.set_data_from_numpy(array)  # binary tensor data over HTTP too
            inputs.append(tensor)
        requested = [self.module.InferRequestedOutput(name) for name in outputs]
        result = self.client.infer(model, inputs, version, outputs=requested, **self.deadline)
        return {name: result.as_numpy(name) for name in outputs}


def _tensors(metadata: dict, key: str) -> dict[str, tuple[str, list[int]]]:
    """{name: (datatype, shape)} from model metadata (gRPC's JSON form writes dims as strings)."""
    return {t["name"]: (t["datatype"], [int(d) for d in t.get("shape", [])]) for t in metadata.get(key, [])}


def contract_problems(metadata: dict, input_names: tuple[str, ...], output_names: tuple[str, ...]) -> list[str]:
    """How a served model's metadata differs from the graph contract (models.graph.AXES):
    exactly these inputs, at least these outputs, their datatypes, ranks and dynamic axes."""
    inputs, outputs = _tensors(metadata, "inputs"), _tensors(metadata, "outputs")
    problems = []
    if set(inputs) != set(input_names):
        problems.append(f"it takes inputs {sorted(inputs)} but this model's graph takes {sorted(input_names)}")
    missing = sorted(set(output_names) - set(outputs))
    if missing:
        problems.append(f"it gives outputs {sorted(outputs)} but this model's graph needs {sorted(output_names)}")
    expected = [(name, INPUT_DATATYPE, inputs) for name in input_names if name in inputs]
    expected += [(name, OUTPUT_DATATYPE, outputs) for name in output_names if name in outputs]
    for name, datatype, served in expected:
        got, shape = served[name]
        axes = AXES[name]
        if got != datatype:
            problems.append(f"{name} is {got}, not {datatype}")
        if len(shape) != len(axes):
            problems.append(f"{name} has shape {shape}; the graph's has {len(axes)} axes {list(axes)}")
        elif any(axis and size != -1 for axis, size in zip(axes, shape)):
            problems.append(f"{name} has shape {shape}; its {[a for a in axes if a]} axes must be dynamic (-1)")
    return problems


class TritonEngine:
    """Forwards run on the model's own thread, loading on another: each thread gets its own
    client (tritonclient's HTTP client is bound to the gevent hub of the thread that made it)."""

    def __init__(self, target: TritonTarget, input_names: tuple[str, ...], output_names: tuple[str, ...]):
        self.target = target
        self.input_names, self.output_names = input_names, output_names
        self._local = threading.local()
        try:
            if not self._client().live():
                raise ModelLoadError(f"{target}: the server is not live")
            if not self._client().ready(target.model, target.version):
                raise ModelLoadError(f"{target} is not ready: is it in the server's model repository "
                                     "(<model>/config.pbtxt and <model>/<version>/model.onnx)?")
            metadata = self._client().metadata(target.model, target.version)
        except ModelLoadError:
            raise
        except Exception as err:  # noqa: BLE001 - whatever the transport raised, the model cannot load
            raise ModelLoadError(f"{target} cannot be reached: {type(err).__name__}: {err}") from err
        problems = contract_problems(metadata, input_names, output_names)
        if problems:
            raise ModelLoadError(f"{target} does not serve this model directory's graph: {'; '.join(problems)}")
        self.version = target.version or max(metadata.get("versions") or ["1"], key=int)
        self.platform = metadata.get("platform", "")
        self.architecture = f"triton:{target.model}@{self.version}"
        primary = _tensors(metadata, "outputs")[output_names[0]][1]
        self.output_width = primary[-1] if primary[-1] > 0 else None

    @property
    def identity(self) -> str:
        """What the revision fingerprint takes from the remote side: the served model's name,
        pinned version and platform (not the URL: replicas of one repository score alike)."""
        return f"triton:{self.target.model}@{self.version}:{self.platform}"

    def _client(self) -> _Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = _Client(self.target)
        return client

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        arrays = {name: np.ascontiguousarray(inputs[name].numpy()) for name in self.input_names}
        try:
            outputs = self._client().infer(self.target.model, self.version, arrays, self.output_names)
        except Exception as err:  # noqa: BLE001 - the scheduler isolates and reports it per item
            raise TritonError(f"{self.target}: {type(err).__name__}: {err}") from err
        rows = len(arrays["input_ids"])
        for name, array in outputs.items():
            if array is None or array.ndim != len(AXES[name]) or len(array) != rows:
                got = "nothing" if array is None else f"shape {list(array.shape)}"
                raise TritonError(f"{self.target}: output {name} came back as {got} for a batch of {rows}")
        return {name: torch.tensor(array, dtype=torch.float32) for name, array in outputs.items()}
