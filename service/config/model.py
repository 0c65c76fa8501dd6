"""One served model's entry in the settings: where it is, how it runs (`backend:`, a union
told apart by `type`), and its per-model options."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from models.backends.config import BackendConfig, TorchConfig
from models.hub import hub_snapshot, is_hub_id

BUILTIN_DIR = Path(__file__).resolve().parents[2] / "models" / "builtin"
log = logging.getLogger("rewardserve")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # a model's or an adapter's

# The flat per-model keys `backend:` replaced: old key -> (backend type, its key in `backend:`).
FLAT_BACKEND_KEYS = {
    "onnx_file": ("onnxruntime", "file"),
    "triton_url": ("triton", "url"),
    "triton_protocol": ("triton", "protocol"),
    "triton_model": ("triton", "model"),
    "triton_model_version": ("triton", "version"),
    "triton_timeout_s": ("triton", "timeout_s"),
    "device_map": ("torch", "device_map"),
    "max_memory": ("torch", "max_memory"),
    "offload_folder": ("torch", "offload_folder"),
}


class ShadowConfig(BaseModel):
    """A candidate model scored off the hot path on a share of this model's /v1/score and gRPC
    Score items, to compare with it before it goes live (docs/shadow.md)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(pattern=NAME_PATTERN, description="the candidate: another configured model's name")
    share: float = Field(0.1, gt=0, le=1, description=(
        "the share of items mirrored, picked by a hash of each item's content (an item is always in or always out)"))
    queue_items: int = Field(1000, ge=1, description=(
        "items waiting for the candidate at most; past it mirrored items are dropped (and counted), never waited for"))
    window: int = Field(1000, ge=2, description="the recent (live, candidate) pairs the agreement statistics cover")


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="the name requests give as `model`")
    path: str = Field(description=(
        "model directory, `builtin:<name>` for an embedded model, or a Hugging Face Hub id `org/name[@revision]` "
        "(fetched into the hub cache, or read from it alone under HF_HUB_OFFLINE=1)"))
    aliases: list[str] = Field(default_factory=list, description=(
        "other names a request may give for this model (like vLLM's --served-model-name, e.g. the hub "
        "path a trainer was configured with); the configured `path` is accepted too"))
    spec: dict | None = Field(None, description=(
        "inline reward spec; overrides the directory's reward_spec.yaml (models/README.md has the format)"))
    device: str = Field("auto", description=(
        "'auto' (cuda when present, unless backend.device_map puts every module on 'cpu' or 'disk'), 'cpu', "
        "'cuda', 'cuda:1', ..."))
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto': bfloat16 on CUDA, float32 on the CPU")
    backend: BackendConfig = Field(default_factory=TorchConfig, description=(
        "what runs the model's graph: {type: torch} (default), {type: onnxruntime, file?} or "
        "{type: triton, url, protocol?, model?, version?, timeout_s?}"))
    packed: bool | None = Field(None, description=(
        "torch backend: run each batch padding-free, its items end to end in one row (transformers decoders); "
        "null: wherever supported under flash or flex attention (installed flash-attn is used on CUDA in half "
        "precision); true: also under sdpa and eager, a load error where unsupported "
        "(encoders, remote code, other backends); false: always padded"))
    share_prefix: bool | None = Field(None, description=(
        "torch backend: items of a batch that begin with the same >= 32 tokens (n responses to one prompt) "
        "compute that prefix once, with a KV cache, and only their own tokens after it (transformers decoders); "
        "null: wherever supported; true: a load error where unsupported (encoders, remote code, other backends); "
        "false: never"))
    pipeline: bool | None = Field(None, description=(
        "build the next batch's inputs on a thread of their own while the forward runs; null: on GPUs, where "
        "the forward leaves the CPU free (on a CPU, the forward's threads take every core)"))
    deterministic: bool = Field(False, description=(
        "score every item alone (a batch of one: no batch-mates, padding, packing or shared prefix), so its "
        "score is the same bits whatever else is queued; a request's `deterministic` overrides it. On CUDA "
        "these forwards also run deterministic kernels without TF32 (docs/determinism.md)"))
    adapters: dict[Annotated[str, StringConstraints(pattern=NAME_PATTERN)], str] = Field(
        default_factory=dict, description=(
            "LoRA adapters loaded over this model (torch backend): name -> directory in PEFT's layout "
            "(adapter_config.json, adapter_model.safetensors); a request names one as `adapter` (docs/adapters.md)"))
    serve_graph: bool = Field(False, description="also serve the raw graph over KServe v2 as `<name>-graph`")
    cache: bool = Field(True, description="serve repeated inputs from the result cache")
    cache_ttl_s: float = Field(3600.0, gt=0, description="how long cached results live")
    shadow: ShadowConfig | None = Field(None, description=(
        "a candidate model mirrored a share of this model's items, its agreement with it reported "
        "(`{model, share?, queue_items?, window?}`, below; docs/shadow.md)"))

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_backend_keys(cls, data):
        """The flat keys of earlier releases (`backend: triton`, `triton_url`, `onnx_file`,
        `device_map`, ...) still work, nested into `backend:` with a warning naming the new form."""
        if not isinstance(data, dict):
            return data
        flat = {key: data[key] for key in FLAT_BACKEND_KEYS if key in data}
        named = isinstance(data.get("backend"), str)
        if not flat and not named:
            return data
        backend = {"type": data["backend"]} if named else dict(data.get("backend") or {"type": "torch"})
        kind = backend.get("type", "torch")
        for key, value in flat.items():
            wanted, new_key = FLAT_BACKEND_KEYS[key]
            if wanted != kind:
                raise ValueError(f"{key} applies to backend {wanted!r} only, not {kind!r}")
            if new_key in backend:
                raise ValueError(f"{key} and backend.{new_key} both given; keep backend.{new_key}")
            backend[new_key] = value
        old = ", ".join(([f"`backend: {kind}`"] if named else []) + [f"`{key}`" for key in flat])
        new = ", ".join(f"{key}: {value}" for key, value in backend.items())
        log.warning("model %s: %s deprecated; write `backend: {%s}`", data.get("name"), old, new)
        return {k: v for k, v in data.items() if k not in flat} | {"backend": backend}

    @model_validator(mode="after")
    def _one_placement(self) -> ModelConfig:
        if self.device_map is not None and self.device != "auto":
            raise ValueError(f"model {self.name!r}: backend.device_map places the model; leave device at 'auto'")
        return self

    @model_validator(mode="after")
    def _shadow_is_another(self) -> ModelConfig:
        if self.shadow is not None and self.shadow.model == self.name:
            raise ValueError(f"model {self.name!r}: shadow.model names the model itself; name a candidate")
        return self

    @property
    def device_map(self) -> str | dict | None:
        """The torch backend's device map, if any."""
        return self.backend.device_map if isinstance(self.backend, TorchConfig) else None

    @property
    def graph_name(self) -> str:
        """The KServe v2 model name its raw graph is served under when `serve_graph` is on."""
        return f"{self.name}-graph"

    def resolved_path(self, download: bool = False) -> Path:
        """The model's directory: an embedded model's inside the package; a hub id's snapshot
        in the hub cache (models.hub), fetched first with `download` (loading does), else a
        load error while it is not there."""
        if self.path.startswith("builtin:"):
            return BUILTIN_DIR / self.path.removeprefix("builtin:")
        if is_hub_id(self.path):
            return hub_snapshot(self.path, download)
        return Path(self.path).expanduser()

    def resolved_adapters(self) -> dict[str, Path]:
        return {name: Path(directory).expanduser() for name, directory in self.adapters.items()}

    def resolved_device(self) -> str:
        """'auto' is cuda when present, unless a device_map puts every module on the CPU or
        disk: that model runs on the CPU (in float32 under dtype 'auto') whatever the host has."""
        if self.device != "auto":
            return self.device
        if isinstance(self.device_map, dict) and not any(_is_gpu(v) for v in self.device_map.values()):
            return "cpu"
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def pipelines(self) -> bool:
        return self.pipeline if self.pipeline is not None else self.resolved_device().startswith("cuda")

    def resolved_dtype(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if self.resolved_device().startswith("cuda") else "float32"


def _is_gpu(placement: int | str) -> bool:
    """A device_map value naming a GPU: its index (an int or digits) or 'cuda[:i]'."""
    return isinstance(placement, int) or placement.isdigit() or placement.startswith("cuda")


DEFAULT_MODELS = [
    ModelConfig(name="minilm-harmless", path="builtin:minilm-harmless"),
    ModelConfig(name="minilm-prm", path="builtin:minilm-prm"),
    ModelConfig(name="minilm-multi", path="builtin:minilm-multi"),
]
