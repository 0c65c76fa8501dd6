"""Models spread over several devices by accelerate, as transformers' `device_map` does: one
too large for a GPU split across a host's GPUs, or layers offloaded to CPU memory or disk,
their weights brought to the executing device by accelerate's hooks during each forward.
Here: the checks of a device map before a load, where a dispatched model takes its inputs,
where it is, and its offloaded weights read outside a forward."""

from __future__ import annotations

import importlib
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import get_args

import torch
from torch import nn

from models.backends.config import DeviceMapStrategy
from models.errors import ModelLoadError

STRATEGIES = get_args(DeviceMapStrategy)
NAMED_DEVICES = ("cpu", "disk", "mps")  # the max_memory keys accelerate takes besides GPU indices


@dataclass(frozen=True)
class DeviceMap:
    """transformers' from_pretrained arguments placing a model over devices: a strategy or an
    explicit {module name: device}, optional bounds per device, and where weights placed on
    'disk' are written when they cannot be read in place from the checkpoint's safetensors."""

    device_map: str | dict[str, int | str]
    max_memory: dict[int | str, int | str] | None = None
    offload_folder: str | None = None

    @property
    def uses_cuda(self) -> bool:
        """Whether the forward runs on GPUs (offloaded weights execute on the first one)."""
        if isinstance(self.device_map, str):
            gpus_allowed = self.max_memory is None or any(isinstance(d, int) for d in self.max_memory)
            return gpus_allowed and torch.cuda.is_available()
        return any(isinstance(d, int) or str(d).startswith("cuda") for d in self.device_map.values())

    def from_pretrained_kwargs(self) -> dict:
        kwargs = {"device_map": self.device_map, "max_memory": self.max_memory}
        return kwargs | ({"offload_folder": self.offload_folder} if self.offload_folder else {})


def device_map_of(name: str, device_map, max_memory, offload_folder) -> DeviceMap | None:
    """The checked device map of a load, or None when the model goes to one device; a load
    error naming the setting that is wrong."""
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise ModelLoadError(f"{name}: max_memory and offload_folder only apply with a device_map")
        return None
    try:
        importlib.import_module("accelerate")
    except ImportError as err:
        raise ModelLoadError(
            f"{name}: device_map needs the accelerate package: pip install 'rewardserve[gpu]'"
        ) from err
    if isinstance(device_map, str):
        if device_map not in STRATEGIES:
            raise ModelLoadError(f"{name}: device_map must be one of {list(STRATEGIES)} or a "
                                 f"{{module: device}} mapping, not {device_map!r}")
    elif isinstance(device_map, dict) and device_map:
        for module, device in device_map.items():
            if not isinstance(module, str) or not _is_device(device):
                raise ModelLoadError(f"{name}: device_map entry {module!r}: {device!r} is not a GPU index, "
                                     "'cpu', 'disk' or a torch device")
    else:
        raise ModelLoadError(f"{name}: device_map must be a strategy or a non-empty {{module: device}} mapping")
    folder = str(offload_folder) if offload_folder is not None else None
    return DeviceMap(device_map, _accelerate_max_memory(name, max_memory), folder)


def _is_device(device) -> bool:
    if isinstance(device, bool):
        return False
    if isinstance(device, int):
        return device >= 0
    if device == "disk":
        return True
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        return False
    return True


def _accelerate_max_memory(name: str, max_memory: dict | None) -> dict | None:
    """`max_memory` as accelerate takes it: GPU indices as ints ("0" is 0), sizes checked."""
    if max_memory is None:
        return None
    from accelerate.utils import convert_file_size_to_int

    bounds = {}
    for device, size in max_memory.items():
        key = int(device) if isinstance(device, str) and device.isdigit() else device
        if not (key in NAMED_DEVICES or (isinstance(key, int) and not isinstance(key, bool) and key >= 0)):
            raise ModelLoadError(f"{name}: max_memory key {device!r} is not a GPU index, 'cpu', 'disk' or 'mps'")
        try:
            convert_file_size_to_int(size)
        except (ValueError, TypeError) as err:
            raise ModelLoadError(f"{name}: max_memory[{device!r}]: {err}") from err
        bounds[key] = size
    return bounds


def _as_device(device) -> torch.device:
    return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)


def input_device(model: nn.Module) -> torch.device:
    """Where `model` takes its inputs: its one device, or, dispatched, where its input
    embeddings run (accelerate's hook says so for offloaded ones, whose weights wait on the
    meta device)."""
    if not getattr(model, "hf_device_map", None):
        return next(model.parameters()).device
    embeddings = model.get_input_embeddings()
    if embeddings.weight.device.type != "meta":
        return embeddings.weight.device
    return _as_device(embeddings._hf_hook.execution_device)


def placement_of(model: nn.Module) -> str:
    """Where `model` is: its one device, or the distinct devices of a dispatched model's map
    (GPUs in index order, then CPU memory and disk), e.g. "cuda:0,cuda:1" or "cpu,disk"."""
    device_map = getattr(model, "hf_device_map", None)
    if not device_map:
        return str(input_device(model))
    devices = {"disk" if d == "disk" else _as_device(d) for d in device_map.values()}

    def order(device) -> tuple:
        if device == "disk":
            return 2, "", 0
        return int(device.type == "cpu"), device.type, device.index or 0

    return ",".join(str(d) for d in sorted(devices, key=order))


def onloaded(module: nn.Module) -> AbstractContextManager:
    """A context where `module`'s weights are real tensors: those accelerate offloaded are
    brought to the module's execution device meanwhile (for code reading weights outside
    the module's forward)."""
    if getattr(module, "_hf_hook", None) is None:
        return nullcontext()
    from accelerate.utils import align_module_device

    return align_module_device(module)
