"""The configuration reference, generated from the settings' schema so that it cannot
disagree with it: `python -m service.config.reference > docs/configuration.md` (a test
checks the committed file is what this prints)."""

from __future__ import annotations

import enum
import inspect
import json
import types
import typing
from pathlib import Path

from pydantic import BaseModel, SecretStr, TypeAdapter
from pydantic.fields import FieldInfo

from models.backends.config import BackendConfig
from service.config import DEFAULT_MODELS, SECTIONS, ModelConfig, Settings
from service.config.flat import FLAT_KEYS, env_name
from service.config.model import FLAT_BACKEND_KEYS, ShadowConfig
from service.config.pipeline import Component, Gate, PipelineConfig, Transform
from service.config.sections import ServerSettings

SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "mapping", Path: "path",
           SecretStr: "secret string", type(None): "null"}

INTRO = """\
# Configuration reference

<!-- Generated from the settings schema (service/config/): \
`python -m service.config.reference > docs/configuration.md`. -->

The server reads a YAML file (`rewardserve serve --config FILE`, or the path in
`REWARDSERVE_CONFIG`); environment variables override it, and `serve`'s `--host`, `--port`
and `--grpc-port` override both, as the model paths it is given replace `models`. Every key
is optional: with none, the server serves the embedded
models on {server.host}:{server.port} (HTTP) and {server.grpc_port} (gRPC). In the file, a
section's keys nest under its name:

```yaml
server:
  host: 0.0.0.0
  port: 8000
batching:
  max_batch_size: 64
cache:
  redis_url: redis://redis:6379/0
models:
  - name: rm
    path: /models/rm
```

In the environment a key is `REWARDSERVE_`, its section, `__` and its name, in capitals
(`REWARDSERVE_SERVER__PORT=9000`, `REWARDSERVE_BATCHING__MAX_BATCH_SIZE=64`); lists and
mappings are JSON (`REWARDSERVE_AUTH__API_KEYS='["k1"]'`,
`REWARDSERVE_MODELS='[{{"name": "rm", "path": "/models/rm"}}]'`).
"""


def type_name(annotation) -> str:
    """A field's type in words: `float or null`, `list of string`, `one of `a`, `b``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        if all(isinstance(arg, type) and issubclass(arg, BaseModel) for arg in args):
            return "mapping, told apart by `type` (below)"
        return " or ".join(type_name(arg) for arg in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{value}`" for value in args)
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        keys = args[0]
        named = ", ".join(f"`{k}`" for k in typing.get_args(keys)) if typing.get_origin(keys) is typing.Literal \
            else type_name(keys)
        return f"mapping ({named} to {type_name(args[1])})"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(f"`{member.value}`" for member in annotation)
    return SCALARS[annotation]


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_none=True)
    else:
        value = TypeAdapter(field.annotation).dump_python(value, mode="json")
    return f"`{json.dumps(value)}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows])


def field_rows(model: type[BaseModel], prefix: str, with_env: bool, skip: tuple[str, ...] = ()) -> list[tuple]:
    rows = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        key = prefix + name
        row = (f"`{key}`", type_name(field.annotation), default_text(field))
        rows.append(row + ((f"`{env_name(key)}`",) if with_env else ()) + (field.description,))
    return rows


def pipeline_parts() -> list[str]:
    """A pipeline's keys, its components' by `type`, its transforms' and its gates'."""
    columns = ("key", "type", "default", "description")
    parts = ["## `pipelines`: one entry per pipeline\n\nIn the file, a list under `pipelines`; in the environment, "
             "all of it as one JSON list in `REWARDSERVE_PIPELINES`. How they work: [pipelines](pipelines.md).\n",
             table(field_rows(PipelineConfig, "", False), columns),
             "## A pipeline's `components`\n\nTold apart by `type`.\n"]
    for component in typing.get_args(typing.get_args(Component)[0]):
        kind = typing.get_args(component.model_fields["type"].annotation)[0]
        parts += [f"### `type: {kind}`\n\n{inspect.getdoc(component)}\n",
                  table(field_rows(component, "", False, skip=("type",)), columns)]
    parts.append("## A component's `transform`\n\nOne, or a list applied in order; one without keys may be given "
                 "by its name (`transform: sigmoid`).\n")
    parts.append(table([(f"`{t.model_fields['type'].default}`",
                         ", ".join(f"`{k}`" for k in t.model_fields if k != "type") or "none",
                         inspect.getdoc(t) if t.__doc__ else "")
                        for t in typing.get_args(typing.get_args(Transform)[0])], ("type", "keys", "note")))
    parts += [f"## A pipeline's `gates`\n\n{inspect.getdoc(Gate)}\n", table(field_rows(Gate, "", False), columns)]
    return parts


def render() -> str:
    header = ("key", "type", "default", "environment", "description")
    parts = [INTRO.format(server=ServerSettings()), "## Top level\n", table([
        ("`models`", "list of models (below)", "the embedded models: " + ", ".join(m.name for m in DEFAULT_MODELS),
         "`REWARDSERVE_MODELS`", Settings.model_fields["models"].description),
        ("`pipelines`", "list of pipelines (below)", "`[]`", "`REWARDSERVE_PIPELINES`",
         Settings.model_fields["pipelines"].description),
        *field_rows(Settings, "", True, skip=("models", "pipelines", *SECTIONS)),
    ], header)]
    for section, model in SECTIONS.items():
        parts += [f"## `{section}`\n\n{inspect.getdoc(model)}\n", table(field_rows(model, f"{section}.", True), header)]
    parts += ["## `models`: one entry per model\n\nIn the file, a list under `models`; in the environment, all of it "
              "as one JSON list in `REWARDSERVE_MODELS`.\n",
              table(field_rows(ModelConfig, "", False), ("key", "type", "default", "description"))]
    parts.append("## A model's `backend`\n\nWhat runs the model's graph, told apart by `type`.\n")
    for backend in typing.get_args(typing.get_args(BackendConfig)[0]):
        kind = backend.model_fields["type"].default
        parts += [f"### `type: {kind}`\n\n{inspect.getdoc(backend)}\n",
                  table(field_rows(backend, "backend.", False, skip=("type",)), ("key", "type", "default",
                                                                                  "description"))]
    parts += [f"## A model's `shadow`\n\n{inspect.getdoc(ShadowConfig)}\n",
              table(field_rows(ShadowConfig, "shadow.", False), ("key", "type", "default", "description"))]
    parts += pipeline_parts()
    parts += ["## Keys of earlier releases\n\nThe flat keys of earlier releases still work for this release, in the "
              "file and in the environment, each logging a warning that names its new key. A key given both ways "
              "in one place (the file, or the environment) is an error naming both; across places the usual order "
              "holds (the environment over the file).\n",
              table([(f"`{old}`", f"`{env_name(old)}`", f"`{section}.{name}`")
                     for old, (section, name) in FLAT_KEYS.items()], ("key", "environment", "now")),
              "\nPer model, the backend's flat keys move into `backend`:\n",
              table([(f"`{old}`", f"`backend: {{type: {kind}, {name}: ...}}`")
                     for old, (kind, name) in FLAT_BACKEND_KEYS.items()], ("key", "now"))]
    return "\n\n".join(part.strip("\n") for part in parts) + "\n"


if __name__ == "__main__":
    print(render(), end="")
