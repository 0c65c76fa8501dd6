"""The wire form of an error, alike over every transport: HTTP's body
`{"error": {"code", "message", "field"}}`, gRPC's status with the code and field in its
trailing metadata, and how a request field is named in both."""

from __future__ import annotations

from pydantic import BaseModel

from service.protocol.scoring import BODY_FORMS, ITEM_FORMS

# gRPC trailing metadata of a failed call (the retry hint is HTTP's header name)
CODE_KEY = "rewardserve-error-code"
FIELD_KEY = "rewardserve-error-field"
RETRY_AFTER_KEY = "retry-after"


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def led_by_field(message: str, field: str | None) -> str:
    """The message led by the field it is about (unless it already is), as gRPC statuses
    and per-item errors carry it."""
    return f"{field}: {message}" if field and not message.startswith(field) else message


def field_path(loc: tuple) -> str | None:
    """('body', 'items', 0, 'tokens', 'input_ids', 3) -> 'items[0].input_ids[3]'. The form
    tags pydantic puts at the start of a body's and an item's location are dropped, but not
    a field of the same name: ('items', 0, 'steps', 'steps') -> 'items[0].steps'."""
    loc = loc[1:] if loc and loc[0] == "body" else loc
    loc = loc[1:] if loc and loc[0] in BODY_FORMS else loc
    parts: list[str] = []
    for i, part in enumerate(loc):
        item_start = i == 0 or (i >= 2 and loc[i - 2] == "items" and isinstance(loc[i - 1], int))
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif not (item_start and part in ITEM_FORMS):
            parts.append(f".{part}" if parts else str(part))
    return "".join(parts) or None
