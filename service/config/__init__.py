"""Server configuration: a YAML file (path in REWARDSERVE_CONFIG or `--config`) overlaid
by REWARDSERVE_* environment variables (a section's key as REWARDSERVE_SECTION__KEY). With no
models configured the server serves the embedded default models, so it starts with no
arguments on real models. Every key, its default and its variable: docs/configuration.md."""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from service.config.flat import ENV_NESTED_DELIMITER, ENV_PREFIX, FlatEnv, Nested
from service.config.model import BUILTIN_DIR, DEFAULT_MODELS, ModelConfig
from service.config.pipeline import PipelineConfig
from service.config.sections import (
    AuthSettings,
    BatchingSettings,
    CacheSettings,
    CanarySettings,
    DriftSettings,
    QueueSettings,
    RulesSettings,
    ServerSettings,
    TlsSettings,
)

__all__ = ["BUILTIN_DIR", "CONFIG_ENV", "DEFAULT_MODELS", "ModelConfig", "PipelineConfig", "Settings", "load_settings"]

CONFIG_ENV = "REWARDSERVE_CONFIG"
_config_file: ContextVar[str | None] = ContextVar("config_file", default=None)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED_DELIMITER,
                                      extra="forbid")

    models: list[ModelConfig] = Field(default_factory=lambda: list(DEFAULT_MODELS), description=(
        "the models to serve, each `{name, path, ...}` (below)"))
    pipelines: list[PipelineConfig] = Field(default_factory=list, description=(
        "reward pipelines, each served like a model under its name (docs/pipelines.md)"))
    default_model: str | None = Field(None, description=(
        "model (or pipeline) used when a request names none; default: the first model"))
    server: ServerSettings = Field(default_factory=ServerSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    canary: CanarySettings = Field(default_factory=CanarySettings)
    rules: RulesSettings = Field(default_factory=RulesSettings)

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        names = [m.name for m in models]
        if not names:
            raise ValueError("configure at least one model")
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique: {names}")
        clashes = sorted({m.graph_name for m in models if m.serve_graph} & set(names))
        if clashes:
            raise ValueError(f"{clashes} would name both a model and another model's served graph")
        aliases = [alias for m in models for alias in m.aliases]
        taken = sorted({a for a in aliases if aliases.count(a) > 1} | (set(aliases) & set(names)))
        if taken:
            raise ValueError(f"aliases {taken} name more than one model")
        return models

    @model_validator(mode="after")
    def _default_is_served(self) -> Settings:
        served = {m.name for m in self.models} | {p.name for p in self.pipelines}
        if self.default_model and self.default_model not in served:
            raise ValueError(f"default_model {self.default_model!r} is not among the configured models and pipelines")
        return self

    @model_validator(mode="after")
    def _pipelines_use_served_models(self) -> Settings:
        models = {m.name for m in self.models}
        taken = models | {a for m in self.models for a in m.aliases}
        names = [p.name for p in self.pipelines]
        for pipeline in self.pipelines:
            if pipeline.name in taken or names.count(pipeline.name) > 1:
                raise ValueError(f"pipeline name {pipeline.name!r} is taken by a model, an alias or another pipeline")
            missing = sorted(pipeline.served_models - models)
            if missing:
                raise ValueError(f"pipeline {pipeline.name!r} uses {missing}, which are not among the configured "
                                 f"models {sorted(models)}")
        return self

    @model_validator(mode="after")
    def _shadows_are_served(self) -> Settings:
        models = {m.name for m in self.models}
        for model in self.models:
            if model.shadow is not None and model.shadow.model not in models:
                raise ValueError(f"model {model.name!r}: shadow.model {model.shadow.model!r} is not among the "
                                 f"configured models {sorted(models)}")
        return self

    @property
    def default_model_name(self) -> str:
        return self.default_model or self.models[0].name

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        """Arguments over the environment over the file, each with its flat keys nested."""
        yaml_file = _config_file.get() or os.environ.get(CONFIG_ENV)
        return (Nested(settings_cls, init_settings), Nested(settings_cls, env_settings, EnvSettingsSource(FlatEnv)),
                Nested(settings_cls, YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file)))


# The settings' sections ({name: its model}), in the order Settings declares them.
SECTIONS: dict[str, type[BaseModel]] = {
    name: field.annotation for name, field in Settings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)}


def load_settings(config_file: str | Path | None = None, **overrides) -> Settings:
    """Settings from `config_file` (else REWARDSERVE_CONFIG), env vars, and `overrides`
    (None values left out: a flag not given overrides nothing)."""
    config_file = config_file or os.environ.get(CONFIG_ENV)
    if config_file is not None and not Path(config_file).is_file():
        raise FileNotFoundError(f"config file {config_file} does not exist")
    token = _config_file.set(str(config_file) if config_file else None)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _config_file.reset(token)
