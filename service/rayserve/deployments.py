"""The two Ray Serve deployments: `ModelServer`, bound once per model, whose every replica
is a whole rewardserve for that model alone (so our scheduler batches across the requests
Ray routes to it), and `Gateway`, the application's ingress, which routes each HTTP request
to its model's replicas and is the DeploymentHandle in-cluster callers score through."""

from __future__ import annotations

import asyncio
import json

from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponse
from starlette.requests import Request
from starlette.responses import Response

from service.app import create_app
from service.config import Settings
from service.rayserve.asgi import Call, Reply, call
from service.rayserve.routing import EVERY_MODEL, PER_REPLICA, Routes, merged, per_replica

# How long an every-model route (readiness, the model list) waits for each model's replicas.
FAN_OUT_TIMEOUT_S = 10.0
JSON_HEADERS = [(b"content-type", b"application/json")]


class RewardServeError(Exception):
    """A handle call answered with an error: its HTTP status and JSON body, exactly what
    the HTTP API would have answered."""

    def __init__(self, status: int, body):
        super().__init__(status, body)
        self.status, self.body = status, body


@serve.deployment
class ModelServer:
    async def __init__(self, settings: Settings):
        """Ray sends no request here before the model has loaded and warmed up; a model
        that fails to load is answered as the single-process server answers it (503)."""
        self.app = create_app(settings)
        self.lifespan = self.app.router.lifespan_context(self.app)
        await self.lifespan.__aenter__()
        await self.app.state.loading

    async def http(self, request: Call) -> Reply:
        return await call(self.app, request)

    async def __del__(self):
        await self.lifespan.__aexit__(None, None, None)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=4096)
class Gateway:
    def __init__(self, settings: Settings, models: dict[str, DeploymentHandle]):
        self.routes = Routes(settings)
        self.models = models

    async def __call__(self, request: Request) -> Response:
        reply = await self.answer(Call(request.method, request.url.path, request.scope["query_string"],
                                       list(request.scope["headers"]), await request.body()))
        response = Response(reply.body, reply.status)
        response.raw_headers = reply.headers  # the replica's own, byte for byte
        return response

    async def answer(self, request: Call) -> Reply:
        if (request.method, request.path) in EVERY_MODEL:
            replies = await asyncio.gather(*(_within(h.http.remote(request)) for h in self.models.values()))
            return merged(request.path, dict(zip(self.models, replies)))
        if request.path.startswith(PER_REPLICA):
            return per_replica(request.path)
        return await self.models[self.routes.model_for(request)].http.remote(request)

    async def score(self, body: dict) -> dict:
        """`POST /v1/score` for in-cluster callers: `body` as the HTTP API takes it, the
        same JSON back (as Python values), or RewardServeError."""
        return await self.post("/v1/score", body)

    async def post(self, path: str, body: dict) -> dict:
        """Any POST route of the HTTP API (`/v1/compare`, `/v1/rerank`, ...), as `score`."""
        reply = await self.answer(Call("POST", path, b"", JSON_HEADERS, json.dumps(body).encode()))
        answer = json.loads(reply.body)
        if reply.status != 200:
            raise RewardServeError(reply.status, answer)
        return answer


async def _within(response: DeploymentResponse) -> Reply | None:
    """The reply, or None when no replica gave one in time (the model counts as loading)."""
    try:
        return await asyncio.wait_for(response, FAN_OUT_TIMEOUT_S)
    except TimeoutError:
        response.cancel()
        return None
