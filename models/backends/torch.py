"""The torch backend: the reward graph (models.graph) built from the safetensors weights and
run in PyTorch, on one device or spread over several (models.dispatch). It is the reference,
and the only backend that runs packed batches and shared-prefix groups too."""

from __future__ import annotations

import time

import torch

from models.backends.base import ModelSource, Support, Tensors
from models.backends.config import TorchConfig
from models.dispatch import device_map_of, input_device, placement_of
from models.errors import ModelLoadError
from models.graph import RewardGraph
from models.loading import build_graph
from models.packing import VARLEN_ATTENTION, why_not_packed
from models.shared_prefix import shared_forward, why_not_shared


def load(config: TorchConfig, source: ModelSource) -> TorchBackend:
    dispatch = device_map_of(source.name, config.device_map, config.max_memory, config.offload_folder)
    for directory in filter(None, (source.backbone_dir, source.reference_dir)):
        if not any(directory.glob("*.safetensors")):
            raise ModelLoadError(f"{directory} has no safetensors weights; pickle checkpoints (.bin/.pt) are refused "
                                 "(unpickling can run code): re-save as safetensors: "
                                 "model.save_pretrained(dir, safe_serialization=True)")
    graph = build_graph(source.backbone_dir, source.model_dir, source.spec, source.config, source.tokenizer,
                        source.device, source.dtype, dispatch, source.reference_dir, source.adapters)
    return TorchBackend(graph, placement_of(graph.model) if dispatch else source.device)


class TorchBackend:
    identity = ""  # the weights are in the model directory, which the fingerprint hashes
    files = ()

    def __init__(self, graph: RewardGraph, placement: str):
        self.graph = graph
        self.adapters = graph.adapters
        self.device = input_device(graph.model)  # with a device_map: where its input embeddings run
        self.placement = placement
        self.architecture = type(graph.model).__name__
        self.output_width = graph.output_width
        self.packing = Support(why_not_packed(graph),
                               by_default=graph.model.config._attn_implementation in VARLEN_ATTENTION)
        self.prefix_sharing = Support(why_not_shared(graph), by_default=True)

    @torch.inference_mode()
    def __call__(self, inputs: Tensors) -> Tensors:
        return self._named(self.graph(**self._to_device(inputs)))

    @torch.inference_mode()
    def packed(self, inputs: Tensors) -> Tensors:
        return self._named(self.graph.packed(**self._to_device(inputs)))

    @torch.inference_mode()
    def shared(self, inputs: Tensors, prefix_length: int) -> Tensors:
        return self._named(shared_forward(self.graph, prefix_length, **self._to_device(inputs)))

    def forward_clock(self) -> float:
        """On the host's cores, the forward thread's CPU time: while a burst arrives, parsing
        and tokenizing it take cores from the forward and stretch it in wall time (2-3x), for
        as long as the burst lasts only; CPU time stays the forward's own work. On an
        accelerator the thread waits, so there the wall clock."""
        return time.thread_time() if self.device.type == "cpu" else time.perf_counter()

    def _to_device(self, inputs: Tensors) -> Tensors:
        """On CUDA, copies from pinned host memory without blocking, so they overlap the
        forward's launch (the caching host allocator keeps each buffer until its copy is done)."""
        if self.device.type != "cuda":
            return {name: tensor.to(self.device) for name, tensor in inputs.items()}
        return {name: tensor.pin_memory().to(self.device, non_blocking=True) for name, tensor in inputs.items()}

    def _named(self, outputs: tuple[torch.Tensor, ...]) -> Tensors:
        return {name: tensor.float().cpu() for name, tensor in zip(self.graph.output_names, outputs)}
