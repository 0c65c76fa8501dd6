"""Export a reward model's whole graph (backbone and reward head, gating included) to ONNX
with dynamic batch and sequence axes, for the onnxruntime and triton backends."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from models.backends import import_extra
from models.backends.onnx import EXTRA, META_ARCHITECTURE, META_OUTPUT_WIDTH
from models.graph import AXES
from models.reward_model import RewardModel, warmup_inputs

OPSET = 17


def export_onnx(model: RewardModel, path: Path) -> Path:
    """Trace `model` (torch backend, float32) on a two-item batch of unequal lengths and
    write the ONNX file with the metadata the onnxruntime backend reads back."""
    onnx = import_extra("onnx", EXTRA)
    graph = model.torch_graph
    inputs = model.model_inputs([model.encode(item, truncate="right") for item in warmup_inputs(model.spec.kind)])
    path = Path(path)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape checks that are constant for scoring
        torch.onnx.export(
            graph, (), str(path), kwargs={k: v.to(model.device) for k, v in inputs.items()},
            input_names=list(graph.input_names), output_names=list(graph.output_names),
            dynamic_axes={name: {i: axis for i, axis in enumerate(AXES[name]) if axis}
                          for name in (*graph.input_names, *graph.output_names)},
            opset_version=OPSET, dynamo=False,
        )
    proto = onnx.load(str(path))
    width = graph.output_width
    for key, value in (
        (META_ARCHITECTURE, type(graph.model).__name__),
        (META_OUTPUT_WIDTH, "" if width is None else str(width)),
    ):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path
