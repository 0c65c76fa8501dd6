"""The triton backend: a reward model's graph (the file `rewardserve export-onnx` writes) run by
a Triton Inference Server, or any KServe v2 server serving that graph, reached with
tritonclient over HTTP or gRPC. Each padded batch goes out as the graph's named int64 inputs
and its named float32 outputs come back, so tokenization, heads, batching and the cache stay
here, exactly as with the local backends. The server should not batch again (its model config
has max_batch_size 0): the scheduler here already formed the batch.

The model is checked when it loads (server live, model ready, its inputs and outputs those of
this model directory's graph), so a wrong deployment fails at start-up, not on the first
request. The remote version is pinned at load: the revision names it, and every request asks
for it, so scores never silently move to a version loaded later."""

from __future__ import annotations

import threading

import numpy as np
import torch

from models.backends import import_extra
from models.backends.base import ExportedGraphBackend, ModelSource, Tensors
from models.backends.config import TritonConfig
from models.errors import ModelLoadError
from models.graph import AXES, input_names, output_names
from models.loading import is_encoder_config

EXTRA = "triton"
INPUT_DATATYPE = "INT64"
OUTPUT_DATATYPE = "FP32"


def load(config: TritonConfig, source: ModelSource) -> TritonBackend:
    """The served model is named `config.model`, by default the model's own name."""
    spec = source.spec
    gated = bool(spec.multi_objective and spec.multi_objective.aggregate == "gating")
    return TritonBackend(config, config.model or source.name, source.device,
                         input_names(is_encoder_config(source.config), gated), output_names(spec, gated))


class TritonError(RuntimeError):
    """A call to the Triton server failed: unreachable, timed out, or the request refused."""


class _Client:
    """One tritonclient client (HTTP or gRPC) behind the few calls the backend makes."""

    def __init__(self, config: TritonConfig, module):
        self.module = module  # tritonclient.http or tritonclient.grpc
        self.grpc = config.protocol == "grpc"
        if self.grpc:
            self.client = self.module.InferenceServerClient(config.url)
            self.deadline = {"client_timeout": config.timeout_s}
        else:
            self.client = self.module.InferenceServerClient(
                config.url, connection_timeout=config.timeout_s, network_timeout=config.timeout_s)
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


class TritonBackend(ExportedGraphBackend):
    """Forwards run on the model's own thread, loading on another: each thread gets its own
    client (tritonclient's HTTP client is bound to the gevent hub of the thread that made it)."""

    def __init__(self, config: TritonConfig, model: str, device: str, input_names: tuple[str, ...],
                 output_names: tuple[str, ...]):
        self.config, self.model = config, model
        self.input_names, self.output_names = input_names, output_names
        self.device, self.placement = torch.device(device), device
        self.files = ()
        self._local = threading.local()
        self._module = import_extra(f"tritonclient.{config.protocol}", EXTRA)
        pinned = f" version {config.version}" if config.version else ""
        self.where = f"model {model!r}{pinned} on Triton server {config.protocol}://{config.url}"
        try:
            if not self._client().live():
                raise ModelLoadError(f"{self.where}: the server is not live")
            if not self._client().ready(model, config.version):
                raise ModelLoadError(f"{self.where} is not ready: is it in the server's model repository "
                                     "(<model>/config.pbtxt and <model>/<version>/model.onnx)?")
            metadata = self._client().metadata(model, config.version)
        except ModelLoadError:
            raise
        except Exception as err:  # whatever the transport raised, the model cannot load
            raise ModelLoadError(f"{self.where} cannot be reached: {type(err).__name__}: {err}") from err
        problems = contract_problems(metadata, input_names, output_names)
        if problems:
            raise ModelLoadError(f"{self.where} does not serve this model directory's graph: {'; '.join(problems)}")
        self.version = config.version or max(metadata.get("versions") or ["1"], key=int)
        self.platform = metadata.get("platform", "")
        self.architecture = f"triton:{model}@{self.version}"
        # What the revision fingerprint takes from the remote side: the served model's name,
        # pinned version and platform (not the URL: replicas of one repository score alike).
        self.identity = f"triton:{model}@{self.version}:{self.platform}"
        primary = _tensors(metadata, "outputs")[output_names[0]][1]
        self.output_width = primary[-1] if primary[-1] > 0 else None

    def _client(self) -> _Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = _Client(self.config, self._module)
        return client

    def __call__(self, inputs: Tensors) -> Tensors:
        arrays = {name: np.ascontiguousarray(inputs[name].numpy()) for name in self.input_names}
        try:
            outputs = self._client().infer(self.model, self.version, arrays, self.output_names)
        except Exception as err:  # the scheduler isolates and reports it per item
            raise TritonError(f"{self.where}: {type(err).__name__}: {err}") from err
        rows = len(arrays["input_ids"])
        for name, array in outputs.items():
            if array is None or array.ndim != len(AXES[name]) or len(array) != rows:
                got = "nothing" if array is None else f"shape {list(array.shape)}"
                raise TritonError(f"{self.where}: output {name} came back as {got} for a batch of {rows}")
        return {name: torch.tensor(array, dtype=torch.float32) for name, array in outputs.items()}
