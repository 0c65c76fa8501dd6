"""A served model's raw graph over KServe v2, as NVIDIA Triton serves the exported ONNX file:
opt-in per model (`serve_graph: true`), named `<model>-graph`, its inputs and outputs exactly
the graph's (models.graph: int64 `input_ids`, `attention_mask`, [`token_type_ids`],
[`prompt_end`] in; float32 `values`, [`gating_weights`, `gated_score`] or `step_logits` out),
its metadata and config those of an `onnxruntime_onnx` model with max_batch_size 0. Each
request is one forward of the backend on the batch as given, with no batching, cache or
heads: Triton with dynamic batching off. It runs on the model's forward thread between the
scheduler's batches and is admitted to the model's queue like a request of one item per row
(ModelRunner.run_forward). So a Triton model repository and this endpoint are
interchangeable peers for `backend: triton`, and the tests drive that backend against it.

Rows must be right-padded as the graph expects (an attention mask of ones, then zeros); a
tensor that breaks the contract is refused with 400 naming it, before the forward."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.graph import AXES
from service.core.errors import APIError
from service.engine.admission import QueueFull
from service.engine.registry import ModelRegistry
from service.engine.runner import ModelRunner
from service.engine.scheduler import Priority
from service.kserve.models import MODEL_CONFIG_TYPES, VERSION
from service.kserve.tensors import DTYPES, TensorSpec, bad_input

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
INPUT_DATATYPE, OUTPUT_DATATYPE = "INT64", "FP32"


@dataclass(frozen=True)
class GraphModel:
    """The graph of `runner`'s model, under its own name."""

    name: str
    runner: ModelRunner


def find(registry: ModelRegistry, name: str) -> GraphModel | None:
    """The served graph called `name`, if some model serves its graph under that name."""
    for runner in registry.runners.values():
        if runner.config.serve_graph and runner.config.graph_name == name:
            return GraphModel(name, runner)
    return None


def repository(registry: ModelRegistry) -> list[tuple[str, ModelRunner]]:
    """Every KServe model name, scoring models then served graphs, with the runner whose
    status it has."""
    graphs = [(r.config.graph_name, r) for r in registry.runners.values() if r.config.serve_graph]
    return [(r.name, r) for r in registry.runners.values()] + graphs


# ---- description ------------------------------------------------------------------------


def tensor_specs(graph: GraphModel) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs as the ONNX file declares them (read when the model loaded)."""
    inputs, outputs = graph.runner.model.graph_contract
    return ([TensorSpec(name, INPUT_DATATYPE, shape) for name, shape in inputs.items()],
            [TensorSpec(name, OUTPUT_DATATYPE, shape) for name, shape in outputs.items()])


def metadata(graph: GraphModel) -> dict:
    inputs, outputs = tensor_specs(graph)
    return {"name": graph.name, "versions": [VERSION], "platform": PLATFORM,
            "inputs": [spec.metadata() for spec in inputs], "outputs": [spec.metadata() for spec in outputs]}


def config(graph: GraphModel) -> dict:
    """The Triton model configuration (model_config.proto's JSON form) that
    deploy/triton/<model>/config.pbtxt spells out for the exported file."""
    inputs, outputs = tensor_specs(graph)

    def tensor(spec: TensorSpec) -> dict:
        return {"name": spec.name, "data_type": MODEL_CONFIG_TYPES[spec.datatype], "dims": spec.shape}

    kind = "KIND_GPU" if graph.runner.info.device.startswith("cuda") else "KIND_CPU"
    return {
        "name": graph.name, "platform": PLATFORM, "backend": BACKEND, "max_batch_size": 0,
        "version_policy": {"latest": {"num_versions": 1}},
        "input": [tensor(spec) for spec in inputs], "output": [tensor(spec) for spec in outputs],
        "instance_group": [{"name": graph.name, "kind": kind, "count": 1}],
        "default_model_filename": "model.onnx",
    }


# ---- inference --------------------------------------------------------------------------


def _validated(graph: GraphModel, tensors: dict[str, np.ndarray], input_names: list[str]) -> dict[str, np.ndarray]:
    """The inputs, checked against the graph contract and the model's own limits, so a bad
    tensor gets 400 naming it instead of failing inside the forward."""
    model = graph.runner.model
    unknown = sorted(set(tensors) - set(input_names))
    if unknown:
        raise bad_input(unknown[0], f"no such input; model {graph.name!r} takes {input_names}")
    missing = [name for name in input_names if name not in tensors]
    if missing:
        raise bad_input(missing[0], f"missing; model {graph.name!r} takes {input_names}")
    for name in input_names:
        array = tensors[name]
        if array.dtype != np.int64:
            datatype = next((k for k, v in DTYPES.items() if np.dtype(v) == array.dtype), array.dtype)
            raise bad_input(name, f"must be {INPUT_DATATYPE}, not {datatype}")
        if array.ndim != len(AXES[name]):
            raise bad_input(name, f"must have shape {list(AXES[name])}, not {list(array.shape)}")
    ids = tensors["input_ids"]
    rows, width = ids.shape
    if rows == 0 or width == 0:
        raise bad_input("input_ids", f"shape {list(ids.shape)} holds no tokens")
    for name in input_names:
        expected = (rows,) if name == "prompt_end" else (rows, width)
        if tensors[name].shape != expected:
            raise bad_input(name, f"has shape {list(tensors[name].shape)}; input_ids' shape calls for {list(expected)}")
    limit = graph.runner.max_batch_tokens
    if rows * width > limit:
        raise bad_input("input_ids", f"{rows} x {width} tokens is more than the {limit} one forward takes "
                        "(batching.max_batch_tokens)")
    if width > model.encoder.max_length:
        raise bad_input("input_ids", f"{width} positions is more than the model's {model.encoder.max_length}")
    vocab = model.config.vocab_size
    if ids.min() < 0 or ids.max() >= vocab:
        raise bad_input("input_ids", f"token ids must lie in [0, {vocab})")
    mask = tensors["attention_mask"]
    lengths = mask.sum(axis=1)
    right_padded = (mask == (np.arange(width) < lengths[:, None])).all()
    if not np.isin(mask, (0, 1)).all() or not right_padded or lengths.min() < 1:
        raise bad_input("attention_mask", "each row must be ones then zeros (right padding), at least one one")
    if "token_type_ids" in tensors:
        types = tensors["token_type_ids"]
        segments = getattr(model.config, "type_vocab_size", 1)
        if types.min() < 0 or types.max() >= segments:
            raise bad_input("token_type_ids", f"segment ids must lie in [0, {segments})")
    if "prompt_end" in tensors:
        ends = tensors["prompt_end"]
        if (ends < 0).any() or (ends >= lengths).any():
            raise bad_input("prompt_end", "each must point at a real token of its row: 0 <= prompt_end < length")
    return {name: tensors[name] for name in input_names}


async def infer(graph: GraphModel, tensors: dict[str, np.ndarray], requested: list[str] | None,
                priority: Priority) -> list[tuple[TensorSpec, np.ndarray]]:
    """One forward of the backend on the batch as given, on the model's forward thread and
    admitted to its queue (429 past its bounds); the requested outputs (all when None), in
    the order requested."""
    input_specs, output_specs = tensor_specs(graph)
    inputs = _validated(graph, tensors, [spec.name for spec in input_specs])
    names = requested or [spec.name for spec in output_specs]
    for name in names:
        if name not in {spec.name for spec in output_specs}:
            raise bad_input(name, f"no such output; model {graph.name!r} gives {[s.name for s in output_specs]}")
    backend = graph.runner.model.backend
    rows, width = inputs["input_ids"].shape
    try:
        outputs = await graph.runner.run_forward(
            lambda: backend({name: torch.tensor(array) for name, array in inputs.items()}), rows, rows * width, priority
        )
    except QueueFull as err:
        raise APIError.from_queue_full(err) from err
    except Exception as err:
        raise APIError(500, "inference_failed", f"{graph.name}: {type(err).__name__}: {err}") from err
    arrays = {name: outputs[name].numpy().astype(np.float32, copy=False) for name in names}
    return [(TensorSpec(name, OUTPUT_DATATYPE, list(arrays[name].shape)), arrays[name]) for name in names]
