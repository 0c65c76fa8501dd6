"""The application builder `serve run` and `serve deploy` call (`import_path:
service.rayserve.builder:app`): a rewardserve config (the models and every server setting)
plus the Ray side of each model's deployment: GPUs and CPUs per replica, and autoscaling
on ongoing requests."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from service.config import ModelConfig, Settings, load_settings
from service.rayserve.deployments import Gateway, ModelServer


class ReplicaOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_gpus: float = Field(0, ge=0, description="GPUs per replica; a fraction lets replicas share one")
    num_cpus: float = Field(1, ge=0, description="CPUs per replica (also its torch threads)")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(64, gt=0, description=(
        "requests in flight per replica that autoscaling keeps to: enough for our scheduler to fill batches"))
    max_ongoing_requests: int = Field(512, ge=1, description=(
        "requests one replica takes at once (more wait in Ray's queue); our admission control answers 429 "
        "past queue.max_wait_s"))


class AppArgs(ReplicaOptions):
    """The builder's arguments: `args:` in a Serve config file, or `key=value` after
    `serve run` (every option but `models`)."""

    config: str | None = Field(None, description="rewardserve config file; default REWARDSERVE_CONFIG, else "
                                                 "the embedded models")
    models: dict[str, dict] = Field(default_factory=dict, description="model name -> options that differ for it")


def app(args: dict) -> Application:
    options = AppArgs.model_validate(args)
    settings = load_settings(options.config, server={"grpc_port": 0})  # Ray's proxy serves HTTP only
    unknown = sorted(set(options.models) - {m.name for m in settings.models})
    if unknown:
        raise ValueError(f"options for models {unknown}, which the rewardserve config does not serve")
    shared = options.model_dump(include=set(ReplicaOptions.model_fields))
    models = {m.name: model_deployment(settings, m, ReplicaOptions(**shared | options.models.get(m.name, {})))
              for m in settings.models}
    return Gateway.bind(settings, models)


def model_deployment(settings: Settings, model: ModelConfig, options: ReplicaOptions) -> Application:
    """`model`'s deployment: replicas serving it alone, with the server's other settings.
    Without GPUs of its own, an "auto" model runs on CPU: Ray leaves CUDA_VISIBLE_DEVICES
    alone for a replica given none, and "auto" would take a GPU Ray gave another."""
    if not options.num_gpus and model.device == "auto":
        model = model.model_copy(update={"device": "cpu"})
    alone = settings.model_copy(update={"models": [model], "default_model": None})
    return ModelServer.options(
        name=f"model-{model.name}",
        ray_actor_options={"num_cpus": options.num_cpus, "num_gpus": options.num_gpus},
        max_ongoing_requests=options.max_ongoing_requests,
        autoscaling_config={"min_replicas": options.min_replicas, "max_replicas": options.max_replicas,
                            "target_ongoing_requests": options.target_ongoing_requests},
        graceful_shutdown_timeout_s=settings.server.drain_grace_s,
    ).bind(alone)
