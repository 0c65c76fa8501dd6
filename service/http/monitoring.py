"""HTTP routes for monitoring: `GET /metrics` (Prometheus text format), `GET /v1/drift`
(each model's latest drift report), `GET /v1/shadow` (each shadow candidate's agreement with
its live model) and the golden-set canary (`GET /v1/admin/canary`: the latest results;
`POST /v1/admin/canary`: run it now)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from service.core.errors import APIError
from service.monitoring.monitor import Monitoring
from service.protocol.errors import ErrorBody

router = APIRouter()


def _monitoring(request: Request) -> Monitoring:
    return request.app.state.monitoring


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(_monitoring(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/drift")
async def drift(request: Request) -> dict:
    """Per model (and pipeline) and drift dimension: the live window's size, mean and std, and its drift
    statistics against the model's baseline, with those past their thresholds."""
    monitoring = _monitoring(request)
    body = monitoring.drift.as_json()
    for name, report in body["models"].items():
        report["revision"] = monitoring.revision(name)
    return body


@router.get("/v1/shadow")
async def shadow(request: Request) -> dict:
    """Per live model with a shadow candidate: the candidate, its items mirrored, dropped and
    failed, and per dimension the agreement statistics over the window of recent pairs."""
    return _monitoring(request).shadow.as_json()


class CanaryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="the model to check; default: every model with a golden set")


@router.get("/v1/admin/canary")
async def canary_results(request: Request) -> dict:
    """The latest canary result of every model with a golden set."""
    return _monitoring(request).canary.as_json()


@router.post("/v1/admin/canary", responses={404: {"model": ErrorBody}})
async def run_canary(request: Request, body: CanaryRequest | None = None) -> dict:
    """Re-score the golden set now (of `model`, or of every model that has one) and return
    the results; they also update the canary gauges."""
    canary = _monitoring(request).canary
    names = canary.models()
    if body is not None and body.model is not None:
        if body.model not in canary.registry.runners:
            raise APIError(404, "model_not_found", f"no model named {body.model!r}", "model")
        if body.model not in names:
            raise APIError(404, "not_found", f"model {body.model!r} has no golden set (canary.jsonl)", "model")
        names = [body.model]
    results = await canary.check_all("manual", names)
    return {**canary.as_json(), "models": {name: result.as_json() for name, result in results.items()}}
