"""What every transport other than the HTTP JSON API shares (gRPC, KServe v2): turning a
request into the HTTP API's validated request model and then into a `ScoreJob` exactly as
the HTTP endpoint does, and an error's message led by the field it names."""

from __future__ import annotations

import dataclasses

from pydantic import ValidationError

from service.errors import APIError, validation_error
from service.schemas import ScoreRequest
from service.scoring import ScoreJob

_JOB_OPTIONS = [f.name for f in dataclasses.fields(ScoreJob) if f.name != "inputs"]


def parse_score_request(body: dict) -> ScoreRequest:
    """`body` (a /v1/score JSON body as Python values) validated as HTTP validates it; an
    invalid one raises the APIError HTTP would answer with."""
    try:
        return ScoreRequest.model_validate(body)
    except ValidationError as err:
        raise validation_error(err.errors()) from None


def score_job(body: ScoreRequest, deadline_ms: float | None = None) -> ScoreJob:
    """The job an HTTP request with this body makes (every option ScoreJob and the request
    share is carried over), its timeout cut to `deadline_ms` when that is sooner."""
    options = {name: getattr(body, name) for name in _JOB_OPTIONS if name in type(body).model_fields}
    if deadline_ms is not None and (options.get("timeout_ms") is None or deadline_ms < options["timeout_ms"]):
        options["timeout_ms"] = deadline_ms
    return ScoreJob(inputs=[item.to_input() for item in body.items], **options)


def status_message(err: APIError) -> str:
    """The error's message, led by the field it is about (unless it already is)."""
    if err.field and not err.message.startswith(err.field):
        return f"{err.field}: {err.message}"
    return err.message
