"""A rewardserve server, assembled in one place: the models (engine), the scoring core,
monitoring, and every transport on top of them: the HTTP app (our API, the ranking and
compatibility routes, KServe v2 over HTTP, metrics) and, on the same event loop, the gRPC
server (rewardserve.v1, KServe v2 over gRPC, health). Models load in the background after
start-up, so liveness answers at once and readiness turns true when every model has
warmed up."""

from __future__ import annotations

import asyncio
import functools
import ssl
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service.config import Settings
from service.core.auth import KeyRing
from service.core.scoring import Scorer
from service.engine.registry import ModelRegistry
from service.grpc.server import GrpcServer, server_credentials
from service.http import compat, kserve, model_control, monitoring, ranking, scoring
from service.http.auth import ApiKeyAuth
from service.http.content_type import JsonBodies
from service.http.encoding import RequestEncoding
from service.http.errors import install_error_handlers
from service.http.limits import BodyLimit
from service.http.middleware import MetricsMiddleware
from service.http.protocol import BoundedH11Protocol
from service.http.shutdown import ShuttingDown
from service.monitoring.monitor import Monitoring


def create_app(settings: Settings) -> FastAPI:
    registry = ModelRegistry(settings)
    scorer = Scorer(registry, settings)
    monitor = Monitoring(registry, settings, scorer.pipelines, scorer.shadows)
    keys = KeyRing(settings.auth)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.loading = asyncio.gather(asyncio.get_running_loop().run_in_executor(None, registry.load_all),
                                           scorer.pipelines.start())
        app.state.loading.add_done_callback(lambda done: done.cancelled() or done.exception())  # stopped while loading
        grpc_server = None
        if settings.server.grpc_port:  # 0 turns gRPC off
            credentials = None
            if settings.tls.cert_file is not None:
                credentials = server_credentials(settings.tls.cert_file, settings.tls.key_file,
                                                 settings.tls.client_ca_file)
            grpc_server = GrpcServer(scorer, monitor.metrics, keys, settings.server.host, settings.server.grpc_port,
                                     credentials, handshake_timeout_s=settings.tls.handshake_timeout_s)
            await grpc_server.start(app.state.loading)
            app.state.grpc_port = grpc_server.port
        monitor.start(app.state.loading)
        scorer.shadows.start()

        async def drain(grace_s: float) -> None:
            """Stop serving: HTTP requests cancelled from now on are answered `shutting_down`
            (service.http.shutdown); gRPC refuses new calls and gives running ones `grace_s`."""
            app.state.stopping = True
            if grpc_server is not None:
                await grpc_server.stop(grace_s)

        app.state.drain = drain
        yield
        await monitor.stop()
        await scorer.shadows.close()
        await scorer.pipelines.close()
        if grpc_server is not None:
            await grpc_server.stop(settings.server.drain_grace_s)
        await registry.close()

    app = FastAPI(
        title="rewardserve",
        version="0.1.0",
        summary="Scalar, multi-objective and process reward models behind one HTTP API.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.scorer = scorer
    app.state.monitoring = monitor
    app.state.stopping = False
    install_error_handlers(app)
    app.add_middleware(RequestEncoding, max_bytes=settings.server.max_request_bytes)
    app.add_middleware(JsonBodies)
    app.add_middleware(ApiKeyAuth, keys=keys)
    app.add_middleware(BodyLimit, max_bytes=settings.server.max_request_bytes)
    app.add_middleware(ShuttingDown, state=app.state)  # inside the metrics, which count its 503s
    if settings.server.cors_origins:  # outside the key check, so preflights are answered
        app.add_middleware(CORSMiddleware, allow_origins=settings.server.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "x-api-key", "content-type"])
    app.add_middleware(MetricsMiddleware, metrics=monitor.metrics)
    for module in (scoring, ranking, compat, kserve, monitoring, model_control):
        app.include_router(module.router)
    return app


def uvicorn_tls(settings: Settings) -> dict:
    """uvicorn's TLS options for the HTTP port (none without a certificate)."""
    if settings.tls.cert_file is None:
        return {}
    options = {"ssl_certfile": str(settings.tls.cert_file), "ssl_keyfile": str(settings.tls.key_file)}
    if settings.tls.client_ca_file is not None:
        options |= {"ssl_ca_certs": str(settings.tls.client_ca_file), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return options


def uvicorn_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    """uvicorn serving `app` over BoundedH11Protocol (the bounds on request heads and bodies)."""
    server = settings.server
    return uvicorn.Config(app, host=server.host, port=server.port, log_level=server.log_level,
                          http=functools.partial(BoundedH11Protocol, settings=settings),
                          timeout_graceful_shutdown=server.drain_grace_s, **uvicorn_tls(settings))


class DrainingServer(uvicorn.Server):
    """uvicorn for one app, draining its gRPC side the moment the HTTP side starts to (on
    SIGTERM or SIGINT): gRPC health goes NOT_SERVING and new gRPC calls are refused
    (UNAVAILABLE) while the HTTP listener closes, and in-flight calls of both get
    `drain_grace_s` to finish; those still running then are answered `shutting_down` (503,
    UNAVAILABLE) and the process exits."""

    def __init__(self, app: FastAPI, settings: Settings):
        super().__init__(uvicorn_config(app, settings))
        self.app, self.grace_s = app, settings.server.drain_grace_s
        self.handshake_timeout_s = settings.tls.handshake_timeout_s

    async def startup(self, sockets=None) -> None:
        """uvicorn's start-up, its TLS listener given `tls.handshake_timeout_s` (uvicorn has no
        option for it; the event loop's default is 60 s): the loop's create_server, which
        uvicorn calls here, is given the timeout for the duration."""
        if self.config.ssl is None:
            return await super().startup(sockets)
        loop = asyncio.get_running_loop()
        loop.create_server = functools.partial(loop.create_server, ssl_handshake_timeout=self.handshake_timeout_s)
        try:
            await super().startup(sockets)
        finally:
            del loop.create_server

    async def shutdown(self, sockets=None) -> None:
        drain = getattr(self.app.state, "drain", None)
        grpc_drained = asyncio.ensure_future(drain(self.grace_s)) if drain is not None else None
        await super().shutdown(sockets)
        if grpc_drained is not None:
            await grpc_drained
