"""Compute backends behind one protocol (base.Backend), each chosen by the `type` of its
config (config.py) from FACTORIES and imported only when chosen, so a backend's own
dependencies (onnxruntime, tritonclient) are needed only where it is used."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from models.errors import ModelLoadError

if TYPE_CHECKING:
    from models.backends.base import Backend, ModelSource
    from models.backends.config import BackendConfig

# backend type -> the module whose `load(config, source)` builds it
FACTORIES = {
    "torch": "models.backends.torch",
    "onnxruntime": "models.backends.onnx",
    "triton": "models.backends.triton",
}


def load_backend(config: BackendConfig, source: ModelSource) -> Backend:
    return importlib.import_module(FACTORIES[config.type]).load(config, source)


def import_extra(module: str, extra: str) -> ModuleType:
    """`module`, or a load error naming the rewardserve extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ModelLoadError(f"{module} is not installed ({err}): pip install 'rewardserve[{extra}]'") from err
