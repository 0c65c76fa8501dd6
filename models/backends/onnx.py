"""The onnxruntime backend: the graph `rewardserve export-onnx` writes (models.onnx_export),
run in ONNX Runtime with all graph optimizations; CUDA with IO binding when the device is a
GPU and onnxruntime-gpu provides it, else the CPU provider."""

from __future__ import annotations

from pathlib import Path

import torch

from models.backends import import_extra
from models.backends.base import ExportedGraphBackend, ModelSource, Tensors
from models.backends.config import OnnxRuntimeConfig
from models.errors import ModelLoadError

ONNX_FILENAME = "reward.onnx"
EXTRA = "onnx"
META_ARCHITECTURE = "rewardserve.architecture"
META_OUTPUT_WIDTH = "rewardserve.output_width"


def load(config: OnnxRuntimeConfig, source: ModelSource) -> OnnxBackend:
    path = Path(config.file) if config.file else source.model_dir / ONNX_FILENAME
    if not path.is_file():
        raise ModelLoadError(f"{path} does not exist: run `rewardserve export-onnx` first")
    return OnnxBackend(path, source.device)


class OnnxBackend(ExportedGraphBackend):
    def __init__(self, path: Path, device: str):
        ort = import_extra("onnxruntime", EXTRA)
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
        self.device, self.placement = torch.device(device), device
        self.identity, self.files = f"onnx:{path.name}", (path,)

    def __call__(self, inputs: Tensors) -> Tensors:
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
