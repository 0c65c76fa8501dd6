"""Admin HTTP routes loading, reloading and unloading models while the server runs
(service/core/control.py): `POST /v1/admin/models/{name}/load` (its optional body: model
configuration fields, such as a new `path` or `spec`), `.../reload` and `.../unload`."""

from __future__ import annotations

from fastapi import APIRouter, Body, Request

from service.core.control import ModelControl
from service.core.scoring import model_card
from service.protocol.catalog import ModelCard
from service.protocol.errors import ErrorBody

router = APIRouter(prefix="/v1/admin/models", tags=["admin"],
                   responses={status: {"model": ErrorBody} for status in (400, 404, 409, 422)})


def _control(request: Request) -> ModelControl:
    return request.app.state.scorer.control


@router.post("/{name}/load")
async def load(name: str, request: Request, config: dict | None = Body(None, examples=[{"path": "/models/rm-v2"}])
               ) -> ModelCard:
    """Loads the model, or reloads it with `config` (ModelConfig fields) on top of its
    configuration; a new model needs a `path`. Answers once the new revision serves."""
    return model_card(await _control(request).load(name, config))


@router.post("/{name}/reload")
async def reload(name: str, request: Request) -> ModelCard:
    """Loads a served model again from its configuration (its directory read afresh)."""
    return model_card(await _control(request).reload(name))


@router.post("/{name}/unload")
async def unload(name: str, request: Request) -> dict:
    """Stops serving the model once the requests it has admitted are answered."""
    await _control(request).unload(name)
    return {"name": name, "status": "unloaded"}
