"""The protocol every compute backend honours, and what a backend is built from. A backend
runs a reward model's graph (models.graph) on a batch of named inputs and returns its named
outputs as CPU float tensors; `RewardModel` keeps tokenization and the reading of outputs.
What only some backends can do (packed rows, shared prefixes, the torch module itself) is
said through the protocol, never found by probing attributes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from models.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

    from models.adapters import Adapters
    from models.graph import RewardGraph
    from models.spec import RewardSpec

Tensors = dict[str, "torch.Tensor"]


@dataclass(frozen=True)
class ModelSource:
    """What a backend is built from: the model directory read (spec, transformers config,
    tokenizer), its backbone's directory (and an implicit model's reference's), and the device
    and dtype it is to run in, and the LoRA adapters to load over it (name -> directory)."""

    name: str
    model_dir: Path
    backbone_dir: Path
    spec: RewardSpec
    config: Any  # transformers' PretrainedConfig
    tokenizer: Any
    device: str
    dtype: str
    reference_dir: Path | None = None  # an implicit model's reference LM (models.implicit)
    adapters: dict[str, Path] | None = None  # LoRA adapters (models.adapters): the torch backend's only


@dataclass(frozen=True)
class Support:
    """Whether a backend can run a batching strategy (models.packing, models.shared_prefix),
    and whether it does where a model's setting leaves it open (null)."""

    missing: str | None = None  # why it cannot; None: it can
    by_default: bool = False

    def chosen(self, requested: bool | None, refusal: str) -> bool:
        """`requested` True: used, or a load error `refusal: why not`; False: not used;
        None: used by default where it can be."""
        if requested and self.missing:
            raise ModelLoadError(f"{refusal}: {self.missing}")
        return self.missing is None and (requested is True or (requested is None and self.by_default))


@runtime_checkable
class Backend(Protocol):
    architecture: str  # what model info shows
    output_width: int | None  # head outputs; None for a step-tag LM read at its candidate tokens
    device: torch.device  # where inputs go
    placement: str  # where the model is: a device, or the devices of a device map ('cuda:0,cuda:1')
    identity: str  # what the revision fingerprint takes from the backend beyond the model directory
    files: tuple[Path, ...]  # files outside the model directory whose bytes that fingerprint hashes
    graph: RewardGraph | None  # the torch module, for what reads inside it; None where a copy runs elsewhere
    packing: Support  # runs a batch as one row (`packed`)
    prefix_sharing: Support  # runs a group's common prefix once (`shared`)
    adapters: Adapters | None  # LoRA adapters loaded over the model, switched per forward

    def __call__(self, inputs: Tensors) -> Tensors:
        """The right-padded batch's forward."""

    def packed(self, inputs: Tensors) -> Tensors:
        """The packed forward (models.packing): step logits at the step markers only."""

    def shared(self, inputs: Tensors, prefix_length: int) -> Tensors:
        """One group's forward with its common prefix computed once: step logits at the
        step markers only."""

    def forward_clock(self) -> float:
        """The clock a forward's cost is read by, on the thread running it."""


class ExportedGraphBackend:
    """What the backends running the exported padded graph share (ONNX Runtime, Triton): no
    torch module, no packed rows, no shared prefixes, and a forward waited for, not computed,
    by the calling thread, so its cost is wall time."""

    graph = None
    adapters = None
    packing = Support("only the torch backend runs packed")
    prefix_sharing = Support("only the torch backend shares prefixes")

    def packed(self, inputs: Tensors) -> Tensors:
        raise NotImplementedError(self.packing.missing)

    def shared(self, inputs: Tensors, prefix_length: int) -> Tensors:
        raise NotImplementedError(self.prefix_sharing.missing)

    def forward_clock(self) -> float:
        return time.perf_counter()
