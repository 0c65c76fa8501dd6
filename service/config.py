"""Server configuration: a YAML file (path in REWARDSERVE_CONFIG or `--config`) overlaid
by REWARDSERVE_* environment variables. With no models configured the server serves the
embedded default models, so it starts with no arguments on real models."""

from __future__ import annotations

import logging
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, YamlConfigSettingsSource

from models.backends.config import BackendConfig, TorchConfig

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "models" / "builtin"
CONFIG_ENV = "REWARDSERVE_CONFIG"
_config_file: ContextVar[str | None] = ContextVar("config_file", default=None)
log = logging.getLogger("rewardserve")

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


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    path: str = Field(description="model directory, or 'builtin:<name>' for an embedded model")
    aliases: list[str] = Field(default_factory=list, description=(
        "other names a request may give for this model (like vLLM's --served-model-name, e.g. the hub "
        "path a trainer was configured with); the configured `path` is accepted too"))
    spec: dict | None = Field(None, description="inline reward spec; overrides the directory's reward_spec.yaml")
    device: str = Field("auto", description="'auto' (cuda when present), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
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
    serve_graph: bool = Field(False, description="also serve the raw graph over KServe v2 as '<name>-graph'")
    cache: bool = Field(True, description="serve repeated inputs from the result cache")
    cache_ttl_s: float = Field(3600.0, gt=0, description="how long cached results live")

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

    @property
    def device_map(self) -> str | dict | None:
        """The torch backend's device map, if any."""
        return self.backend.device_map if isinstance(self.backend, TorchConfig) else None

    @property
    def graph_name(self) -> str:
        """The KServe v2 model name its raw graph is served under when `serve_graph` is on."""
        return f"{self.name}-graph"

    def resolved_path(self) -> Path:
        if self.path.startswith("builtin:"):
            return BUILTIN_DIR / self.path.removeprefix("builtin:")
        return Path(self.path).expanduser()

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


DriftStatistic = Literal["psi", "js_distance", "ks", "wasserstein", "mean_shift", "std_shift"]

DEFAULT_MODELS = [
    ModelConfig(name="minilm-harmless", path="builtin:minilm-harmless"),
    ModelConfig(name="minilm-prm", path="builtin:minilm-prm"),
    ModelConfig(name="minilm-multi", path="builtin:minilm-multi"),
]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REWARDSERVE_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC (rewardserve.v1 and KServe v2) port; 0 turns gRPC off")
    drain_grace_s: float = Field(20.0, gt=0, description=(
        "on SIGTERM: how long in-flight HTTP and gRPC calls get to finish (keep it under the orchestrator's kill "
        "grace, 30 s on Kubernetes) while new ones are refused"))
    tls_cert_file: Path | None = Field(None, description="PEM certificate (chain): serve HTTPS and gRPC over TLS")
    tls_key_file: Path | None = Field(None, description="its PEM private key")
    tls_client_ca_file: Path | None = Field(None, description="mutual TLS: require client certificates from this CA")
    models: list[ModelConfig] = Field(default_factory=lambda: list(DEFAULT_MODELS))
    default_model: str | None = Field(None, description="model used when a request names none; default: the first")
    max_batch_size: int = Field(32, ge=1, description="items per forward")
    max_batch_tokens: int = Field(16384, ge=1, description="padded tokens (longest x items) per forward")
    max_wait_ms: float = Field(2.0, ge=0, description="longest an idle model waits for a bulk batch to fill (interactive ones go at once)")
    bulk_max_delay_ms: float = Field(500.0, ge=0, description=(
        "bulk work waiting this long (since queued, or since the last bulk batch) goes before interactive"))
    interactive_bulk_wait_ms: float | None = Field(500.0, gt=0, description=(
        "while interactive requests are being served, bulk batches are cut to about this much forward time, "
        "the longest an interactive item waits behind one (null: bulk batches always fill)"))
    max_queue_wait_s: float | None = Field(30.0, gt=0, description=(
        "429 when the work queued ahead of a new request would take longer than this at the model's measured "
        "throughput (null: no time bound)"))
    max_queue_items: int = Field(65536, ge=1, description="queued items per model before 429 (a memory bound)")
    max_queue_tokens: int = Field(8_388_608, ge=1, description="queued tokens per model before 429 (a memory bound)")
    default_priority: Literal["interactive", "bulk"] = "interactive"
    max_items_per_request: int = Field(4096, ge=1)
    max_request_bytes: int = Field(32 * 2**20, ge=1024, description=(
        "largest HTTP request body, after decompression; larger is 413 (4,096 items of 1,000 token ids fit)"))
    max_header_bytes: int = Field(64 * 2**10, ge=1024, description=(
        "largest HTTP request head (request line and header lines); larger is 431 before anything else runs, "
        "API keys included, and no more of a head is buffered"))
    header_timeout_s: float = Field(10.0, gt=0, description=(
        "how long an HTTP client has to send a request head, from connecting or from its first byte after an "
        "idle keep-alive; past it, 408 and the connection closes"))
    body_timeout_s: float = Field(60.0, gt=0, description=(
        "how long an HTTP client has to send a request's whole body once its head is in; past it, the "
        "connection closes (32 MiB in 60 s needs 0.55 MB/s)"))
    tls_handshake_timeout_s: float = Field(10.0, gt=0, description=(
        "how long a client connecting to either port has to finish the TLS handshake (gRPC: its connection "
        "set-up) before the connection closes"))
    cache_max_bytes: int = Field(256 * 2**20, ge=0, description="in-process LRU size; 0 turns it off")
    redis_url: str | None = Field(None, description="shared Redis result cache, e.g. redis://127.0.0.1:6379/0")
    redis_timeout_ms: float = Field(50.0, gt=0, description="Redis socket timeout; slower counts as a miss")
    drift_window: int = Field(1000, ge=10, description="live values kept per model and drift dimension")
    drift_min_samples: int = Field(200, ge=2, description="values a window needs before drift statistics are computed")
    drift_interval_s: float = Field(30.0, gt=0, description="seconds between drift computations (off the request path)")
    drift_thresholds: dict[DriftStatistic, float] | None = Field(
        None, description="a statistic whose magnitude exceeds its limit marks the dimension as drifted; set, these "
        "limits judge every model (statistics left out are not judged); unset, each model's dimension is judged "
        "against the limits calibrated into its drift baseline (`rewardserve baseline`), or fixed ones for a "
        "baseline without them")
    canary_interval_s: float = Field(300.0, ge=0, description="seconds between golden-set runs; 0: at start-up only")
    canary_tolerance: float = Field(1e-3, gt=0, description="largest |score - expected| a float32 model may show")
    canary_tolerance_half: float = Field(
        0.05, gt=0, description="the same for bfloat16 and float16 models (their rounding moves scores by ~1e-2)")
    canary_min_spearman: float = Field(0.98, ge=-1, le=1, description="least rank correlation with the expected scores")
    api_keys: list[SecretStr] = Field(default_factory=list, description=(
        "keys that may call the API (HTTP `Authorization: Bearer KEY` or `x-api-key`, gRPC metadata alike); "
        "with no key anywhere, auth is off"))
    admin_api_keys: list[SecretStr] = Field(default_factory=list, description="keys that may also call /v1/admin/*")
    api_keys_file: Path | None = Field(None, description="more keys, one per line: `KEY` or `KEY admin`")
    auth_open_paths: list[str] = Field(
        default_factory=lambda: ["/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/metrics"],
        description="HTTP paths served without a key (probes and the Prometheus scrape); gRPC health is always open")
    metrics_require_key: bool = Field(False, description=(
        "with API keys configured, /metrics needs a key like the API (Prometheus sends it with `authorization`), "
        "even when auth_open_paths lists it"))
    cors_origins: list[str] = Field(default_factory=list, description=(
        "browser origins allowed to call the API cross-origin (CORS); none: no CORS headers, so browsers refuse"))
    log_level: str = "info"

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        names = [m.name for m in models]
        if not names:
            raise ValueError("configure at least one model")
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique: {names}")
        clashes = sorted({m.graph_name for m in models if m.serve_graph} & set(names))
        if clashes:
            raise ValueError(f"{clashes} would name both a model and another model's served graph")
        aliases = [alias for m in models for alias in m.aliases]
        taken = sorted({a for a in aliases if aliases.count(a) > 1} | (set(aliases) & set(names)))
        if taken:
            raise ValueError(f"aliases {taken} name more than one model")
        return models

    @model_validator(mode="after")
    def _tls_is_whole(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both tls_cert_file and tls_key_file")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        return self

    @model_validator(mode="after")
    def _default_is_served(self) -> Settings:
        if self.default_model and self.default_model not in {m.name for m in self.models}:
            raise ValueError(f"default_model {self.default_model!r} is not among the configured models")
        return self

    @property
    def default_model_name(self) -> str:
        return self.default_model or self.models[0].name

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        yaml_file = _config_file.get() or os.environ.get(CONFIG_ENV)
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))


def load_settings(config_file: str | Path | None = None, **overrides) -> Settings:
    """Settings from `config_file` (else REWARDSERVE_CONFIG), env vars, and `overrides`."""
    config_file = config_file or os.environ.get(CONFIG_ENV)
    if config_file is not None and not Path(config_file).is_file():
        raise FileNotFoundError(f"config file {config_file} does not exist")
    token = _config_file.set(str(config_file) if config_file else None)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _config_file.reset(token)
