"""Where the gateway sends an HTTP request: to the one model it names (in its path, its JSON
body's `model`, or the `model` query parameter; the default model otherwise), or, for the
few routes about every model, to all of them, their answers merged into the one the
single-process server gives."""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from service.config import Settings
from service.engine.registry import model_aliases
from service.http.encoding import WBITS, content_encoding, inflate
from service.http.errors import error_response
from service.protocol.catalog import Health
from service.rayserve.asgi import Call, Reply

PATH_MODEL = re.compile(r"^/v2/models/([^/]+)|^/v1/models/(.+)$")
EVERY_MODEL = {("GET", "/v1/models"), ("GET", "/health/ready"), ("GET", "/v2/health/ready"),
               ("HEAD", "/health/ready"), ("HEAD", "/v2/health/ready"), ("POST", "/v2/repository/index")}
# Per-replica state: with several replicas of a model, the gateway would show one at random.
PER_REPLICA = ("/metrics", "/v1/drift", "/v1/admin/canary")


class Routes:
    def __init__(self, settings: Settings):
        self.default = settings.default_model_name
        self.max_bytes = settings.server.max_request_bytes
        self.names = {m.name: m.name for m in settings.models} | model_aliases(settings.models)
        self.names |= {m.graph_name: m.name for m in settings.models if m.serve_graph}

    def model_for(self, request: Call) -> str:
        """The model `request` is for; one no model is called serves it with the default
        model, which answers 404 as the single-process server does."""
        named = _path_model(request.path) or _body_model(request, self.max_bytes) or _query_model(request.query)
        return self.names.get(named, self.default)


def _path_model(path: str) -> str | None:
    match = PATH_MODEL.match(path)
    return match and (match.group(1) or match.group(2))


def _body_model(request: Call, max_bytes: int) -> str | None:
    """The `model` of a JSON body (compressed or not); None where there is none, or the
    body is not JSON, so the model's server answers it with its own error."""
    encoding = content_encoding(request.headers)
    try:
        body = inflate(request.body, encoding, max_bytes) if encoding in WBITS else request.body
        model = json.loads(body).get("model")
    except (ValueError, AttributeError, HTTPException):
        return None
    return model if isinstance(model, str) else None


def _query_model(query: bytes) -> str | None:
    return parse_qs(query.decode("latin-1")).get("model", [None])[0]


def merged(path: str, replies: dict[str, Reply | None]) -> Reply:
    """The answer to an every-model route from each model's (None: no replica answered in
    time, so that model counts as loading). A refusal (401, 405, ...) is passed on as it is."""
    refused = [r for r in replies.values() if r is not None and r.status not in (200, 503)]
    if refused:
        return refused[0]
    missing = [name for name, reply in replies.items() if reply is None]
    bodies = [json.loads(reply.body) for reply in replies.values() if reply is not None]
    if path == "/health/ready":
        statuses = {name: status for body in bodies for name, status in body["models"].items()}
        health = Health.of(statuses | {name: "loading" for name in missing})
        return _reply(JSONResponse(health.model_dump(), status_code=200 if health.status == "ready" else 503))
    if path == "/v2/health/ready":
        ready = not missing and all(body["ready"] for body in bodies)
        return _reply(JSONResponse({"ready": ready}, status_code=200 if ready else 503))
    if missing:
        return _reply(error_response(503, "model_loading", f"models {missing} have no replica ready yet", "model"))
    if path == "/v2/repository/index":
        return _reply(JSONResponse([entry for body in bodies for entry in body]))
    return _reply(JSONResponse({**bodies[0], "data": [m for body in bodies for m in body["data"]],
                                "models": [m for body in bodies for m in body["models"]]}))


def per_replica(path: str) -> Reply:
    return _reply(error_response(404, "not_found", (
        f"{path} is per replica under Ray Serve: each replica keeps its own metrics, drift windows and canary "
        "(Ray's own metrics cover the deployments)")))


def _reply(response: JSONResponse) -> Reply:
    return Reply(response.status_code, response.raw_headers, response.body)
