"""The sections of the server's settings, one small model each, where every default is
written once: the code that uses a setting reads it from here (or takes the section), and
docs/configuration.md is generated from these fields (`python -m service.config.reference`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

DriftStatistic = Literal["psi", "js_distance", "ks", "wasserstein", "mean_shift", "std_shift"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(Section):
    """Where the server listens, and the bounds on what one client may send or hold."""

    host: str = Field("127.0.0.1", description="address both ports listen on")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port")
    grpc_port: int = Field(50051, ge=0, le=65535, description=(
        "gRPC (rewardserve.v1 and KServe v2) port, on the same host; 0 turns gRPC off"))
    log_level: str = Field("info", description="the server's and uvicorn's log level")
    drain_grace_s: float = Field(20.0, gt=0, description=(
        "on SIGTERM (or SIGINT) the HTTP listener closes and gRPC health turns NOT_SERVING at once, new gRPC calls "
        "get UNAVAILABLE (retryable), and in-flight HTTP and gRPC calls get this long to finish; those still "
        "running then are answered 503 `shutting_down` (gRPC UNAVAILABLE) and the process exits. Keep it under "
        "the orchestrator's kill grace (30 s on Kubernetes)"))
    max_items_per_request: int = Field(4096, ge=1, description="larger requests get 422")
    max_request_bytes: int = Field(32 * 2**20, ge=1024, description=(
        "largest HTTP request body, after decompression (4,096 items of 1,000 token ids fit); larger is 413, "
        "refused before it is read when its Content-Length says so, and a gzip/deflate body is never inflated "
        "past it"))
    max_header_bytes: int = Field(64 * 2**10, ge=1024, description=(
        "largest HTTP request head (request line and header lines); larger is 431 before anything else runs, "
        "API keys included, and no more of a head is buffered (plus one socket read)"))
    header_timeout_s: float = Field(10.0, gt=0, description=(
        "how long an HTTP client has to send a request head, from connecting or from its first byte after an "
        "idle keep-alive (which uvicorn's 5 s bounds); past it, 408 and the connection closes, so a client "
        "trickling headers holds no connection long"))
    body_timeout_s: float = Field(60.0, gt=0, description=(
        "how long an HTTP client has to send a request's whole body once its head is in; past it, the "
        "connection closes unanswered (32 MiB in 60 s needs 0.55 MB/s)"))
    cors_origins: list[str] = Field(default_factory=list, description=(
        "browser origins allowed to call the API cross-origin (CORS); none: no CORS headers, so browsers refuse"))


class TlsSettings(Section):
    """TLS on both ports, and mutual TLS."""

    cert_file: Path | None = Field(None, description="PEM certificate (chain): serve HTTPS, and gRPC over TLS")
    key_file: Path | None = Field(None, description="its PEM private key")
    client_ca_file: Path | None = Field(None, description=(
        "mutual TLS: every client must show a certificate this CA signed"))
    handshake_timeout_s: float = Field(10.0, gt=0, description=(
        "how long a client connecting to either port has to finish the TLS handshake before the connection "
        "closes (gRPC: its whole connection set-up, TLS or not)"))

    @model_validator(mode="after")
    def _whole(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TLS needs both tls.cert_file and tls.key_file")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("tls.client_ca_file (mutual TLS) needs tls.cert_file and tls.key_file")
        return self


class AuthSettings(Section):
    """API keys: with none configured anywhere, auth is off."""

    api_keys: list[SecretStr] = Field(default_factory=list, description=(
        "keys that may call the API (HTTP `Authorization: Bearer KEY` or `x-api-key`, gRPC metadata alike)"))
    admin_api_keys: list[SecretStr] = Field(default_factory=list, description="keys that may also call /v1/admin/*")
    api_keys_file: Path | None = Field(None, description=(
        "more keys, one per line: `KEY` or `KEY admin` (`#` comments)"))
    open_paths: list[str] = Field(
        default_factory=lambda: ["/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/metrics"],
        description="HTTP paths served without a key (probes and the Prometheus scrape); gRPC health is always open")
    metrics_require_key: bool = Field(False, description=(
        "with API keys configured, /metrics needs a key like the API (Prometheus sends it as a Bearer token), "
        "even when open_paths lists it"))


class BatchingSettings(Section):
    """How each model's queued items are cut into forwards, and the two priority classes."""

    max_batch_size: int = Field(32, ge=1, description="items per forward")
    max_batch_tokens: int = Field(16384, ge=1, description="padded tokens (longest item x items) per forward")
    max_wait_ms: float = Field(2.0, ge=0, description=(
        "longest an idle model waits for a bulk batch to fill; interactive batches go at once"))
    bulk_max_delay_ms: float = Field(500.0, ge=0, description=(
        "bulk items that have waited this long (since queued, or since the last bulk batch ended) take the next "
        "batch ahead of interactive ones: no starvation, and a standing bulk backlog cuts into interactive work "
        "once per this long"))
    interactive_bulk_wait_ms: float | None = Field(500.0, gt=0, description=(
        "while interactive requests are being served (one in the last minute), bulk batches are cut to about "
        "this much forward time at the model's measured cost, the longest an interactive item waits behind one "
        "(forwards are not preemptible); null: bulk batches always fill"))
    default_priority: Literal["interactive", "bulk"] = Field("interactive", description=(
        "priority of requests that name none"))


class QueueSettings(Section):
    """Per model, when a new request is refused with 429 `queue_full`."""

    max_wait_s: float | None = Field(30.0, gt=0, description=(
        "429 when the work ahead of a new request (its own priority class, and as much of the other as shares "
        "the forward with it, plus what is left of the batches already formed) would take longer than this at "
        "the forward cost measured by the model's warm-up and then its recent batches; null: no time bound"))
    max_items: int = Field(65536, ge=1, description="items queued or being tokenized before 429 (a memory bound)")
    max_tokens: int = Field(8_388_608, ge=1, description="tokens queued or being tokenized before 429 (a memory bound)")


class CacheSettings(Section):
    """The result cache: an in-process LRU, then Redis shared by every replica."""

    max_bytes: int = Field(256 * 2**20, ge=0, description="in-process LRU size in bytes; 0 turns it off")
    redis_url: str | None = Field(None, description="shared Redis result cache, e.g. redis://127.0.0.1:6379/0")
    redis_timeout_ms: float = Field(50.0, gt=0, description="Redis socket timeout; slower counts as a miss")


class DriftSettings(Section):
    """Reward drift: live score windows against each model's baseline."""

    window: int = Field(1000, ge=10, description="live values kept per model and drift dimension")
    min_samples: int = Field(200, ge=2, description=(
        "values a window needs before drift statistics are computed; `rewardserve baseline` calibrates limits "
        "for windows of this many"))
    interval_s: float = Field(30.0, gt=0, description="seconds between drift computations (off the request path)")
    thresholds: dict[DriftStatistic, float] | None = Field(None, description=(
        "a statistic whose magnitude passes its limit marks the dimension as drifted; set, these limits judge "
        "every model (statistics left out are not judged); unset, each model's dimension is judged against the "
        "limits calibrated into its drift baseline, or fixed ones for a baseline without them (README, Reward "
        "drift)"))


class CanarySettings(Section):
    """The golden-set canary: each model's recorded scores, re-scored on a schedule."""

    interval_s: float = Field(300.0, ge=0, description="seconds between golden-set runs; 0: at start-up only")
    tolerance: float = Field(1e-3, gt=0, description="largest |score - expected| a float32 model may show")
    tolerance_half: float = Field(0.05, gt=0, description=(
        "the same for bfloat16 and float16 models (their rounding moves scores by ~1e-2)"))
    min_spearman: float = Field(0.98, ge=-1, le=1, description="least rank correlation with the recorded scores")


class RulesSettings(Section):
    """The worker processes that run pipelines' rules and user functions, isolated from the
    server: a call past its limit is killed and its worker replaced."""

    workers: int = Field(2, ge=1, description="worker processes (started when a pipeline has a rule or function)")
    timeout_s: float = Field(10.0, gt=0, description=(
        "a rule or function call's wall-clock limit, unless its component sets its own"))
