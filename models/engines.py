"""Engines run a reward model's graph (models.graph) on a padded batch of named inputs and
return its named outputs as CPU tensors. The torch engine is the reference, and alone runs
packed batches and shared-prefix groups too; the ONNX Runtime engine runs the same graph
exported by `rewardserve export-onnx`."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from models.dispatch import input_device
from models.graph import RewardGraph
from models.shared_prefix import shared_forward

ONNX_FILENAME = "reward.onnx"
META_ARCHITECTURE = "rewardserve.architecture"
META_OUTPUT_WIDTH = "rewardserve.output_width"


class Engine(Protocol):
    architecture: str
    output_width: int | None  # head outputs; None for a step-tag LM read at its candidate tokens

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


def graph_output_width(graph: RewardGraph) -> int | None:
    if graph.step_tag_ids is not None:
        return None
    if graph.reward_logit_index is not None:
        return 1
    return graph.head.reward.out_features if graph.head is not None else graph.model.config.num_labels


class TorchEngine:
    def __init__(self, graph: RewardGraph):
        self.graph = graph
        self.device = input_device(graph.model)  # with a device_map: where its input embeddings run
        self.architecture = type(graph.model).__name__
        self.output_width = graph_output_width(graph)

    @torch.inference_mode()
    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self._named(self.graph(**self._to_device(inputs)))

    @torch.inference_mode()
    def packed(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The packed forward (models.packing): the same named outputs, step logits at the
        step markers only."""
        return self._named(self.graph.packed(**self._to_device(inputs)))

    @torch.inference_mode()
    def shared(self, inputs: dict[str, torch.Tensor], prefix_length: int) -> dict[str, torch.Tensor]:
        """One group's forward with its shared prefix computed once (models.shared_prefix):
        the same named outputs, step logits at the step markers only."""
        return self._named(shared_forward(self.graph, prefix_length, **self._to_device(inputs)))

    def _to_device(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """On CUDA, copies from pinned host memory without blocking, so they overlap the
        forward's launch (the caching host allocator keeps each buffer until its copy is done)."""
        if self.device.type != "cuda":
            return {name: tensor.to(self.device) for name, tensor in inputs.items()}
        return {name: tensor.pin_memory().to(self.device, non_blocking=True) for name, tensor in inputs.items()}

    def _named(self, outputs: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        return {name: tensor.float().cpu() for name, tensor in zip(self.graph.output_names, outputs)}


class OnnxEngine:
    """ONNX Runtime with all graph optimizations; CUDA with IO binding when the device is a
    GPU and onnxruntime-gpu provides it, else the CPU provider."""

    def __init__(self, path: Path, device: str):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.on_gpu = device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers()
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if self.on_gpu else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        meta = self.session.get_modelmeta().custom_metadata_map
        self.architecture = f"onnx:{meta.get(META_ARCHITECTURE, 'unknown')}"
        width = meta.get(META_OUTPUT_WIDTH, "")
        self.output_width = int(width) if width.isdigit() else None

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feeds = {name: inputs[name].numpy() for name in self.input_names}
        if self.on_gpu:
            binding = self.session.io_binding()
            for name, array in feeds.items():
                binding.bind_cpu_input(name, array)
            for name in self.output_names:
                binding.bind_output(name, "cuda")
            self.session.run_with_iobinding(binding)
            arrays = binding.copy_outputs_to_cpu()
        else:
            arrays = self.session.run(self.output_names, feeds)
        return {name: torch.from_numpy(array).float() for name, array in zip(self.output_names, arrays)}
