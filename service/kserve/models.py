"""What each served reward model and pipeline looks like over KServe v2: its input and
output tensors, its metadata and its Triton model configuration."""

from __future__ import annotations

import json
from dataclasses import dataclass

from service.engine.runner import ModelRunner
from service.kserve.tensors import TensorSpec
from service.protocol.enums import ModelKind

PLATFORM = "rewardserve"
VERSION = "1"
MODEL_CONFIG_TYPES = {"BYTES": "TYPE_STRING", "INT64": "TYPE_INT64", "INT32": "TYPE_INT32",
                      "FP32": "TYPE_FP32", "BOOL": "TYPE_BOOL"}


# What a pipeline's rules and user functions read beside the text, one element per item.
CONTEXT_INPUTS = [TensorSpec("ground_truth", "BYTES", [-1]), TensorSpec("data_source", "BYTES", [-1]),
                  TensorSpec("extra_info", "BYTES", [-1])]


@dataclass(frozen=True)
class PipelineModel:
    """A served pipeline as a KServe model, as it stands when asked: scored through the
    scorer under its name like a model; its components' values are its dimensions."""

    name: str
    components: list[str]
    ensembles: bool  # an ensemble component makes an uncertainty
    status: str
    error: str | None
    revision: str | None


Served = ModelRunner | PipelineModel


def _gated(runner: ModelRunner) -> bool:
    mo = runner.model.spec.multi_objective
    return mo is not None and mo.aggregate == "gating"


def input_specs(runner: Served) -> list[TensorSpec]:
    if isinstance(runner, PipelineModel):
        texts = [TensorSpec(name, "BYTES", [-1]) for name in ("prompt", "response", "messages_json", "steps_json")]
        return texts + _token_inputs() + CONTEXT_INPUTS
    process = runner.model.spec.kind == ModelKind.process
    text = [TensorSpec("prompt", "BYTES", [-1])]
    text += [TensorSpec("steps_json", "BYTES", [-1])] if process else [
        TensorSpec("response", "BYTES", [-1]), TensorSpec("messages_json", "BYTES", [-1])]
    return text + _token_inputs()


def _token_inputs() -> list[TensorSpec]:
    return [TensorSpec("input_ids", "INT64", [-1, -1]), TensorSpec("lengths", "INT64", [-1]),
            TensorSpec("prompt_length", "INT64", [-1])]


def output_specs(runner: Served) -> list[TensorSpec]:
    specs = [TensorSpec("score", "FP32", [-1]), TensorSpec("num_tokens", "INT32", [-1]),
             TensorSpec("truncated", "BOOL", [-1])]
    if isinstance(runner, PipelineModel):
        specs.append(TensorSpec("dimensions", "FP32", [-1, len(runner.components)]))
        return specs + ([TensorSpec("uncertainty", "FP32", [-1])] if runner.ensembles else [])
    kind = runner.model.spec.kind
    if kind == ModelKind.multi_objective:
        specs.append(TensorSpec("dimensions", "FP32", [-1, len(runner.model.spec.multi_objective.dimensions)]))
        if _gated(runner):
            specs.append(TensorSpec("gating_weights", "FP32", [-1, -1]))
    if kind == ModelKind.process:
        specs += [TensorSpec("step_rewards", "FP32", [-1, -1]), TensorSpec("num_steps", "INT32", [-1])]
    return specs


def dimensions(runner: Served) -> list[str]:
    """The names of the `dimensions` output's columns, in order."""
    return runner.components if isinstance(runner, PipelineModel) else runner.model.spec.multi_objective.dimensions


def model_parameters(runner: Served) -> dict[str, str]:
    """What the tensor specs cannot say: the kind, the revision and the dimension names."""
    if isinstance(runner, PipelineModel):
        return {"kind": ModelKind.pipeline.value, "revision": runner.revision,
                "dimensions": json.dumps(runner.components)}
    info = runner.info
    params = {"kind": info.kind.value, "revision": info.revision, "max_length": str(info.max_length)}
    if info.dimensions is not None:
        params["dimensions"] = json.dumps(info.dimensions)
    if info.step_aggregate is not None:
        params["step_aggregate"] = info.step_aggregate
    return params


def model_metadata(runner: Served) -> dict:
    return {
        "name": runner.name, "versions": [VERSION], "platform": PLATFORM,
        "inputs": [spec.metadata() for spec in input_specs(runner)],
        "outputs": [spec.metadata() for spec in output_specs(runner)],
        "parameters": model_parameters(runner),
    }


def model_config(runner: Served) -> dict:
    """A Triton model configuration (the JSON form of model_config.proto's ModelConfig)."""
    def tensor(spec: TensorSpec, optional: bool = False) -> dict:
        out = {"name": spec.name, "data_type": MODEL_CONFIG_TYPES[spec.datatype], "dims": list(spec.shape)}
        return {**out, "optional": True} if optional else out

    return {
        "name": runner.name, "platform": PLATFORM, "backend": PLATFORM, "max_batch_size": 0,
        "input": [tensor(spec, optional=True) for spec in input_specs(runner)],
        "output": [tensor(spec) for spec in output_specs(runner)],
        "parameters": {k: {"string_value": v} for k, v in model_parameters(runner).items()},
    }
