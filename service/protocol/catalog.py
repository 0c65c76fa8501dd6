"""What the server says about its models and itself: `/v1/models` (OpenAI's and vLLM's
listing beside our cards) and the health probes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from service.protocol.enums import ModelKind, StepAggregate


class ModelCard(BaseModel):
    """A served model; everything but name and status is known once it has loaded."""

    name: str
    status: Literal["loading", "ready", "failed"]
    kind: ModelKind | None = None
    revision: str | None = Field(None, description="sha256 over weights, tokenizer, config, head and spec")
    max_length: int | None = None
    architecture: str | None = None
    dimensions: list[str] | None = None
    step_aggregate: StepAggregate | None = None
    device: str | None = None
    dtype: str | None = None
    adapters: dict[str, str] | None = Field(None, description=(
        "LoRA adapters a request may name as `adapter`: name -> revision (sha256 of the adapter's files)"))
    error: str | None = Field(None, description="why a failed model failed to load")


class ModelObject(BaseModel):
    """A model as OpenAI's and vLLM's `GET /v1/models` list it (one per name it answers to)."""

    id: str = Field(description="a name requests may give: the model's name or one of its aliases")
    object: Literal["model"] = "model"
    created: int = Field(description="when the server started (Unix seconds)")
    owned_by: str = "rewardserve"
    root: str = Field(description="the model's configured path")
    parent: str | None = Field(None, description="for an alias: the model's name")
    max_model_len: int | None = Field(None, description="the model's max_length, once it has loaded")


class ModelDetail(ModelObject, ModelCard):
    """One model as OpenAI's `GET /v1/models/{model}` answers it (what the OpenAI SDK's
    `models.retrieve` reads), with our card beside it."""


class ModelList(BaseModel):
    """Both listings: OpenAI/vLLM's (`object`, `data`) and ours, richer (`models`)."""

    object: Literal["list"] = "list"
    data: list[ModelObject] = Field(default_factory=list)
    models: list[ModelCard]


class Health(BaseModel):
    status: Literal["live", "ready", "loading", "failed"]
    models: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def of(cls, models: dict[str, str]) -> Health:
        """Readiness from each model's status: ready when all are, failed when one failed."""
        statuses = set(models.values())
        return cls(status="ready" if statuses <= {"ready"} else "failed" if "failed" in statuses else "loading",
                   models=models)
