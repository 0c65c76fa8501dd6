"""The HTTP transport: FastAPI routes that validate, hand items to a model runner and
shape its outputs into responses. Models load in the background after start-up, so
liveness answers at once and readiness turns true when every model has warmed up."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from service.config import Settings
from service.errors import APIError, install_error_handlers
from service.http_compat import router as compat_router
from service.http_monitoring import router as monitoring_router
from service.http_ranking import router as ranking_router
from service.metrics import MetricsMiddleware
from service.monitoring import Monitoring
from service.registry import ModelRegistry
from service.scoring import ScoreJob, Scorer
from service.schemas import ErrorBody, Health, ItemResult, ModelCard, ModelList, ScoreRequest, ScoreResponse, Usage

ERRORS = {status: {"model": ErrorBody} for status in (400, 404, 422, 429, 500, 503, 504)}
router = APIRouter()


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


@router.post("/v1/score", response_model=ScoreResponse, response_model_exclude_none=True, responses=ERRORS)
async def score(body: ScoreRequest, request: Request) -> ScoreResponse:
    """Score a batch of items with one model: a score per item, per-dimension scores for
    multi-objective models, step rewards for process models."""
    job = ScoreJob(
        inputs=[item.to_input() for item in body.items],
        model=body.model,
        truncate=body.truncate,
        aggregate=body.aggregate,
        priority=body.priority,
        timeout_ms=body.timeout_ms,
        normalize=body.normalize,
        cache=body.cache,
    )
    scored = await _unless_disconnected(request, request.app.state.scorer.score(job))
    return ScoreResponse(
        model=scored.model,
        revision=scored.revision,
        kind=scored.kind,
        normalized=scored.normalized or None,
        results=[ItemResult.from_output(i, out) for i, out in enumerate(scored.outputs)],
        usage=Usage(total_tokens=scored.total_tokens),
    )


async def _unless_disconnected(request: Request, work):
    """Run `work`, cancelling it (and so dropping its queued items) if the client goes away."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task not in done:
        task.cancel()
        raise APIError(499, "client_closed_request", "client disconnected before the result was ready")
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.get("/v1/models", response_model=ModelList, response_model_exclude_none=True)
async def list_models(request: Request) -> ModelList:
    runners = _registry(request).runners.values()
    return ModelList(models=[ModelCard.build(r.name, r.status, r.info, r.error) for r in runners])


@router.get("/v1/models/{name}", response_model=ModelCard, response_model_exclude_none=True, responses=ERRORS)
async def get_model(name: str, request: Request) -> ModelCard:
    runner = _registry(request).runners.get(name)
    if runner is None:
        raise APIError(404, "model_not_found", f"no model named {name!r}", "name")
    return ModelCard.build(runner.name, runner.status, runner.info, runner.error)


@router.get("/health/live", response_model=Health)
async def live() -> Health:
    return Health(status="live")


@router.get("/health/ready", response_model=Health, responses={503: {"model": Health}})
async def ready(request: Request):
    registry = _registry(request)
    statuses = registry.statuses
    if registry.ready:
        return Health(status="ready", models=statuses)
    state = "failed" if "failed" in statuses.values() else "loading"
    return JSONResponse(status_code=503, content=Health(status=state, models=statuses).model_dump())


def create_app(settings: Settings) -> FastAPI:
    from service.grpc_api import start_grpc
    from service.kserve_http import router as kserve_router

    registry = ModelRegistry(settings)
    monitoring = Monitoring(registry, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.loading = asyncio.get_running_loop().run_in_executor(None, registry.load_all)
        grpc_server = await start_grpc(app)  # same loop, models and schedulers; None when grpc_port is 0
        monitoring.start(app.state.loading)
        yield
        await monitoring.stop()
        if grpc_server is not None:
            await grpc_server.stop()
        await registry.close()

    app = FastAPI(
        title="rewardserve",
        version="0.1.0",
        summary="Scalar, multi-objective and process reward models behind one HTTP API.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.scorer = Scorer(registry, settings)
    app.state.monitoring = monitoring
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=monitoring.metrics)
    app.include_router(router)
    app.include_router(ranking_router)
    app.include_router(compat_router)
    app.include_router(kserve_router)
    app.include_router(monitoring_router)
    return app
