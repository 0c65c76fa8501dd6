"""What the compatibility APIs share: their requests ignore the fields we do not know
(other servers' clients send their own options) and take our scoring options."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.protocol.enums import Priority


class Lenient(BaseModel):
    """Unknown fields are ignored (other servers' clients send their own options)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="model name; default: the server's default model")
    truncate: Literal["left", "right"] | None = Field(None, description="cut inputs longer than max_length")
    priority: Priority | int | None = Field(None, description="'interactive' or 'bulk' (vLLM's integers: the default)")
    timeout_ms: float | None = Field(None, gt=0)
    deterministic: bool | None = Field(None, description=(
        "true: each item scored alone, its score bitwise the same whatever else is batched with it; default: the "
        "model's `deterministic`"))
