"""What each backend is configured with, as the `backend:` of a model: a union told apart by
`type`, and the one place the backends' defaults are written. Pydantic only, so the
settings read it without loading torch or any backend's dependencies."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

DeviceMapStrategy = Literal["auto", "balanced", "balanced_low_0", "sequential"]  # accelerate computes the map


class TorchConfig(BaseModel):
    """The safetensors weights run in PyTorch: on the model's `device`, or spread over devices."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["torch"] = "torch"
    device_map: DeviceMapStrategy | dict[str, int | str] | None = Field(None, description=(
        "spread a model too large for one GPU over the host's devices, as transformers' device_map does: a "
        "strategy ('auto': evenly over the GPUs, then CPU memory, then disk) or {module name: GPU index, 'cpu' or "
        "'disk'}; null: the whole model on the model's `device`"))
    max_memory: dict[int | str, int | str] | None = Field(None, description=(
        "with device_map: the most each device may hold, {GPU index, 'cpu' or 'disk': size}, e.g. "
        "{'0': '70GiB', '1': '70GiB'}"))
    offload_folder: str | None = Field(None, description=(
        "with device_map: where weights it puts on 'disk' are written when they cannot be read in place from "
        "the checkpoint's safetensors (weights converted at load, as some MoE models' are)"))


class OnnxRuntimeConfig(BaseModel):
    """The graph `rewardserve export-onnx` writes, run in ONNX Runtime (CUDA when available)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["onnxruntime"] = "onnxruntime"
    file: str | None = Field(None, description="the exported graph; default `<model path>/reward.onnx`")


class TritonConfig(BaseModel):
    """That graph on a Triton Inference Server (or any KServe v2 server serving it), reached
    with tritonclient."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["triton"] = "triton"
    url: str = Field(pattern=r"^[^/]+:\d+$",
                     description="host:port of the server, no scheme (Triton: 8001 gRPC, 8000 HTTP)")
    protocol: Literal["http", "grpc"] = Field("grpc", description="tritonclient transport")
    model: str | None = Field(None, description="the model's name there; default: the served model's name")
    version: str = Field("", pattern=r"^\d*$", description="'' is the newest ready version, pinned at load")
    timeout_s: float = Field(60.0, gt=0, description="bound on each call, a batch's inference included")


BackendConfig = Annotated[TorchConfig | OnnxRuntimeConfig | TritonConfig, Field(discriminator="type")]
