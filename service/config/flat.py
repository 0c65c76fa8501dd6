"""The flat setting names of earlier releases (`max_batch_size:` in a file, or
REWARDSERVE_MAX_BATCH_SIZE), still read for this release: each source's flat keys move into
their sections before the sources are layered, so a flat key keeps its source's precedence,
with a warning naming the new key; one source giving a key both ways is an error naming both."""

from __future__ import annotations

import logging

from pydantic import BaseModel, create_model
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from service.config.sections import (
    AuthSettings,
    BatchingSettings,
    CacheSettings,
    CanarySettings,
    DriftSettings,
    QueueSettings,
    ServerSettings,
    TlsSettings,
)

ENV_PREFIX = "REWARDSERVE_"
ENV_NESTED_DELIMITER = "__"
# The sections earlier releases had keys of, flat.
FLAT_SECTIONS: dict[str, type[BaseModel]] = {
    "server": ServerSettings, "tls": TlsSettings, "auth": AuthSettings, "batching": BatchingSettings,
    "queue": QueueSettings, "cache": CacheSettings, "drift": DriftSettings, "canary": CanarySettings,
}
log = logging.getLogger("rewardserve")


def _renamed(section: str, prefix: str, names: str) -> dict[str, tuple[str, str]]:
    return {prefix + name: (section, name) for name in names.split()}


# Old flat key -> (section, key there).
FLAT_KEYS: dict[str, tuple[str, str]] = {
    **_renamed("server", "", "host port grpc_port log_level drain_grace_s max_items_per_request max_request_bytes "
                            "max_header_bytes header_timeout_s body_timeout_s cors_origins"),
    **_renamed("tls", "tls_", "cert_file key_file client_ca_file handshake_timeout_s"),
    **_renamed("auth", "", "api_keys admin_api_keys api_keys_file metrics_require_key"),
    **_renamed("auth", "auth_", "open_paths"),
    **_renamed("batching", "", "max_batch_size max_batch_tokens max_wait_ms bulk_max_delay_ms "
                              "interactive_bulk_wait_ms default_priority"),
    **{f"max_queue_{name}": ("queue", f"max_{name}") for name in ("wait_s", "items", "tokens")},
    **_renamed("cache", "cache_", "max_bytes"),
    **_renamed("cache", "", "redis_url redis_timeout_ms"),
    **_renamed("drift", "drift_", "window min_samples interval_s thresholds"),
    **_renamed("canary", "canary_", "interval_s tolerance tolerance_half min_spearman"),
}


def env_name(key: str) -> str:
    """The environment variable of a key: server.port -> REWARDSERVE_SERVER__PORT."""
    return ENV_PREFIX + key.replace(".", ENV_NESTED_DELIMITER).upper()


def nest_flat_keys(values: dict) -> dict:
    """`values` with each flat key moved into its section."""
    flat = [key for key in FLAT_KEYS if key in values]
    nested = {key: value for key, value in values.items() if key not in flat}
    for key in flat:
        section, name = FLAT_KEYS[key]
        new = f"{section}.{name}"
        given = nested.get(section, {})
        if isinstance(given, BaseModel):
            given = given.model_dump(exclude_unset=True)
        if not isinstance(given, dict):
            raise ValueError(f"{section} must be a mapping")
        if name in given:
            raise ValueError(f"{key} ({env_name(key)}) and {new} ({env_name(new)}) both given; keep {new}")
        log.warning("%s (%s) is deprecated; use %s (%s)", key, env_name(key), new, env_name(new))
        nested[section] = given | {name: values[key]}
    return nested


class _FlatEnv(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)


# The flat keys as settings of their own, so pydantic-settings reads their environment
# variables as it always did (a JSON list for api_keys, ...).
FlatEnv = create_model("FlatEnv", __base__=_FlatEnv, **{
    key: (FLAT_SECTIONS[section].model_fields[name].annotation, None) for key, (section, name) in FLAT_KEYS.items()})


class Nested(PydanticBaseSettingsSource):
    """The values of one layer of sources (the arguments, the environment, the file), their
    flat keys moved into their sections."""

    def __init__(self, settings_cls: type[BaseSettings], *sources: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self.sources = sources

    def get_field_value(self, field, field_name):  # unused: __call__ gives every value at once
        return None, field_name, False

    def __call__(self) -> dict:
        values: dict = {}
        for source in self.sources:
            values |= source()
        return nest_flat_keys(values)

