"""The one grpc.aio server of a rewardserve process: rewardserve.v1.RewardService, the
KServe v2 GRPCInferenceService and standard gRPC health checking. It runs on the HTTP
server's event loop, so every protocol shares the models, their schedulers and the
result cache."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2_grpc

from service.core.auth import KeyRing
from service.core.scoring import Scorer
from service.grpc.drain import CallsInFlight
from service.grpc.health import HealthServicer
from service.grpc.interceptor import Authentication, GrpcMetricsInterceptor, RequestDecoding
from service.grpc.kserve_service import KServeService
from service.grpc.proto import rewardserve_pb2_grpc as pb_grpc
from service.grpc.reward_service import SERVICE_NAME, RewardService
from service.kserve.dataplane import DataPlane
from service.monitoring.metrics import Metrics

log = logging.getLogger("rewardserve")

# Messages up to this size are accepted and sent (RL batches of token ids are large).
MAX_MESSAGE_BYTES = 64 * 2**20
# Past the drain grace, the time calls still running get to send their UNAVAILABLE.
ANSWER_S = 1.0


def server_credentials(cert_file: Path, key_file: Path, client_ca_file: Path | None) -> grpc.ServerCredentials:
    """TLS for the gRPC port; with `client_ca_file`, clients must show a certificate it signed."""
    ca = client_ca_file.read_bytes() if client_ca_file is not None else None
    return grpc.ssl_server_credentials([(key_file.read_bytes(), cert_file.read_bytes())], root_certificates=ca,
                                       require_client_auth=ca is not None)


class GrpcServer:
    """Started in the HTTP app's lifespan, on its event loop."""

    def __init__(self, scorer: Scorer, metrics: Metrics, keys: KeyRing, host: str, port: int,
                 credentials: grpc.ServerCredentials | None = None, *, handshake_timeout_s: float):
        self.scorer = scorer
        self.calls = CallsInFlight()
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.server_handshake_timeout_ms", round(handshake_timeout_s * 1000)),  # TLS and HTTP/2 set-up
        ], interceptors=[GrpcMetricsInterceptor(metrics), self.calls, Authentication(keys), RequestDecoding()])
        pb_grpc.add_RewardServiceServicer_to_server(RewardService(scorer), self.server)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(KServeService(DataPlane(scorer)), self.server)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.services = ["", SERVICE_NAME, KServeService.NAME]
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self.port = (self.server.add_secure_port(address, credentials) if credentials is not None
                         else self.server.add_insecure_port(address))
        except RuntimeError as err:
            raise RuntimeError(f"cannot listen for gRPC on {address} ({err}); set grpc_port "
                               "(REWARDSERVE_GRPC_PORT) to a free port, or 0 to turn gRPC off") from err
        self._watch: asyncio.Task | None = None

    async def start(self, loading: Awaitable | None = None) -> None:
        for service in self.services:
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        self._watch = asyncio.create_task(self._serving_when_loaded(loading))
        log.info("gRPC listening on port %d", self.port)

    async def _serving_when_loaded(self, loading: Awaitable | None) -> None:
        """SERVING (overall and per service) once every model is ready, as /health/ready."""
        if loading is not None:
            await asyncio.shield(loading)
        ready = self.scorer.ready
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in self.services:
            await self.health.set(service, status)

    async def stop(self, grace: float) -> None:
        """NOT_SERVING and refusing new calls at once; in-flight ones get `grace` seconds,
        then those still running end UNAVAILABLE (grpc.aio cancels what is left
        `ANSWER_S` later)."""
        if self._watch is not None:
            self._watch.cancel()
        await self.health.enter_graceful_shutdown()
        stopped = asyncio.ensure_future(self.server.stop(grace + ANSWER_S))
        if not (await asyncio.wait({stopped}, timeout=grace))[0]:
            self.calls.end()
        await stopped
