"""The one KServe v2 data plane: server live, ready and metadata, model ready, metadata and
config, the repository index, loading and unloading (service/core/control.py) and
inference, answered the same whichever transport asks. The HTTP routes
(service/http/kserve.py) and the gRPC service (service/grpc/kserve_service.py) only decode
their requests into calls here and encode the answers; its errors are
`APIError`s, which leave each transport with the status `STATUSES` gives them.

A KServe model is a served reward model (by its name or an alias: service/kserve/inference.py),
a served pipeline (service/kserve/models.py's PipelineModel, scored as a model is) or a
served graph (`<model>-graph`: service/kserve/graph.py). Each has the one version
`VERSION`; any other is 404, like a name nobody serves."""

from __future__ import annotations

import json
import logging
from importlib.metadata import PackageNotFoundError, version

from service.core.errors import APIError
from service.core.scoring import Scorer
from service.engine.scheduler import Priority
from service.kserve import graph as graphs
from service.kserve import inference, models
from service.kserve.graph import GraphModel
from service.kserve.models import VERSION, PipelineModel, Served
from service.kserve.types import InferRequest, InferResponse

log = logging.getLogger("rewardserve")

SERVER_NAME = "rewardserve"
EXTENSIONS = ["binary_tensor_data", "model_repository", "parameters"]
REPOSITORY_STATES = {"ready": "READY", "loading": "LOADING", "failed": "UNAVAILABLE"}

# How an error leaves each transport: APIError.status -> (HTTP status, gRPC status code name).
# KServe has no 422: an input the scoring core refuses is a bad request like any other.
STATUSES = {
    400: (400, "INVALID_ARGUMENT"),
    404: (404, "NOT_FOUND"),
    409: (409, "FAILED_PRECONDITION"),
    422: (400, "INVALID_ARGUMENT"),
    429: (429, "RESOURCE_EXHAUSTED"),
    499: (499, "CANCELLED"),
    500: (500, "INTERNAL"),
    503: (503, "UNAVAILABLE"),
    504: (504, "DEADLINE_EXCEEDED"),
}


def wire_status(err: APIError) -> tuple[int, str]:
    """(HTTP status, gRPC status code name) of an error."""
    return STATUSES.get(err.status) or ((400, "INVALID_ARGUMENT") if err.status < 500 else (500, "INTERNAL"))


def unexpected(err: Exception) -> APIError:
    """A failure no check foresaw, reported as 500 (and logged with its traceback)."""
    log.error("unhandled error in a KServe call", exc_info=err)
    return APIError(500, "internal_error", f"{type(err).__name__}: {err}")


def server_version() -> str:
    try:
        return version("rewardserve")
    except PackageNotFoundError:
        return "0"


class DataPlane:
    """Holds nothing but the scorer (and its registry), so each transport makes its own."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self.registry = scorer.registry

    # ---- the server ----------------------------------------------------------------

    def server_live(self) -> bool:
        return True

    def server_ready(self) -> bool:
        return self.scorer.ready

    def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": server_version(), "extensions": EXTENSIONS}

    def repository_index(self, ready: bool = False) -> list[dict]:
        """Every KServe model (with `ready`, those ready), its state and why it failed; the
        models unloaded after it (UNAVAILABLE, and why)."""
        index = []
        for name, runner in graphs.repository(self.registry):
            if ready and runner.status != "ready":
                continue
            entry = {"name": name, "version": VERSION, "state": REPOSITORY_STATES[runner.status]}
            index.append({**entry, "reason": runner.error} if runner.error else entry)
        for name in self.scorer.pipelines.configs:
            pipeline = self._pipeline(name)
            if not ready or pipeline.status == "ready":
                entry = {"name": name, "version": VERSION, "state": REPOSITORY_STATES[pipeline.status]}
                index.append({**entry, "reason": pipeline.error} if pipeline.error else entry)
        if not ready:
            index += [{"name": name, "version": VERSION, "state": "UNAVAILABLE", "reason": unloaded.reason}
                      for name, unloaded in sorted(self.registry.unloaded.items())]
        return index

    async def load(self, name: str, parameters: dict) -> None:
        """Triton's load: loads the model, or reloads it (service/core/control.py). Its
        `config` parameter, when sent, is a JSON object of the model's configuration fields
        (`path`, `spec`, ...: rewardserve's, not Triton's model_config.proto) to load it with;
        override files (`file:...`) are not taken."""
        _only(parameters, "config")
        changes = parameters.get("config", {})
        if isinstance(changes, str):  # as Triton's clients send it
            try:
                changes = json.loads(changes)
            except ValueError as err:
                raise APIError(400, "invalid_request", f"is not JSON: {err}", "parameters.config") from None
        if not isinstance(changes, dict):
            raise APIError(400, "invalid_request", "must be a JSON object of the model's configuration fields",
                           "parameters.config")
        await self.scorer.control.load(name, changes)

    async def unload(self, name: str, parameters: dict) -> None:
        """Triton's unload. A model a pipeline uses is not unloaded (409), so there are no
        dependents to unload with it: `unload_dependents` changes nothing."""
        _only(parameters, "unload_dependents")
        await self.scorer.control.unload(name)

    # ---- one model -----------------------------------------------------------------

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether the model can answer now (404 for a model or version nobody serves)."""
        return _runner(self._find(name, version)).status == "ready"

    def model_metadata(self, name: str, version: str | None = None) -> dict:
        served = self._ready(name, version)
        return graphs.metadata(served) if isinstance(served, GraphModel) else models.model_metadata(served)

    def model_config(self, name: str, version: str | None = None) -> dict:
        """The Triton model configuration, in model_config.proto's JSON form."""
        served = self._ready(name, version)
        return graphs.config(served) if isinstance(served, GraphModel) else models.model_config(served)

    async def infer(self, request: InferRequest) -> InferResponse:
        served = self._ready(request.model_name, request.model_version)
        try:
            if isinstance(served, GraphModel):
                priority = Priority(self.scorer.settings.batching.default_priority)
                outputs = await graphs.infer(served, request.inputs, request.outputs, priority)
                parameters = None
            else:
                outputs, parameters = await inference.infer(self.scorer, served, request)
        except APIError:
            raise
        except Exception as err:  # reported as 500
            raise unexpected(err) from err
        return InferResponse(served.name, VERSION, outputs, parameters, request.id)

    def _pipeline(self, name: str) -> PipelineModel | None:
        """The configured pipeline called `name`, as it stands now."""
        pipelines = self.scorer.pipelines
        config = pipelines.configs.get(name)
        if config is None:
            return None
        status = pipelines.status(name)
        return PipelineModel(name, [c.name for c in config.components],
                             any(c.type == "ensemble" for c in config.components), status,
                             pipelines.error(name), pipelines.revision(name) if status == "ready" else None)

    def _find(self, name: str, version: str | None) -> Served | GraphModel:
        """The served graph, pipeline or reward model called `name` (aliases too), in whatever state."""
        served = graphs.find(self.registry, name) or self._pipeline(name) or self.scorer.runner(name, ready=False)
        if version not in (None, "", VERSION):
            raise APIError(404, "model_not_found", f"model {served.name!r} has no version {version!r}; "
                           f"served: {VERSION}", "model_version")
        return served

    def _ready(self, name: str, version: str | None) -> Served | GraphModel:
        """`_find`, and 503 while the model is loading or failed."""
        served = self._find(name, version)
        runner = _runner(served)
        if runner.status != "ready":
            detail = f": {runner.error}" if runner.error else ""
            raise APIError(503, f"model_{runner.status}", f"model {served.name!r} is {runner.status}{detail}", "model")
        return served


def _only(parameters: dict, known: str) -> None:
    """400 naming a control parameter rewardserve does not take."""
    for key in parameters:
        if key != known:
            raise APIError(400, "invalid_request", f"unsupported parameter; this call takes {known!r}",
                           f"parameters.{key}")


def _runner(served: Served | GraphModel) -> Served:
    return served.runner if isinstance(served, GraphModel) else served
