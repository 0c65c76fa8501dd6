"""Reward heads: from a backbone's features to the numbers a response carries.

Models that ship their head inside their Hugging Face checkpoint (sequence or token
classification, causal LM) are read by the runner; models that keep a head of their own
beside a plain backbone (the embedded default, ArmoRM-style gating) load it here from a
safetensors file with this layout:

    reward.{i}.weight / reward.{i}.bias   MLP, ReLU between layers -> K outputs
    gating.{i}.weight / gating.{i}.bias   optional MLP on the gating position's state -> G outputs
    gating_temperature                    optional scalar (default 1): softmax(logits / temperature)
    gating_logit_scale                    optional scalar (default 1): multiplies the gating weights
    transform_matrix                      optional [K, G]: maps dimensions to gated objectives

Any other tensor is an error: a head file is read whole or not at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from models.errors import ModelLoadError
from models.spec import MultiObjectiveSpec, StepAggregate


@dataclass(frozen=True)
class TokenRewards:
    """An implicit model's reward of each response token: the terms its score reduces (their
    sum, mean or minus their L2 norm), for credit assignment token by token."""

    start: int  # the first response token's position among the item's tokens (its prompt length)
    token_ids: tuple[int, ...]  # the response's tokens
    values: tuple[float, ...]  # each one's reward, in the same order


@dataclass(frozen=True)
class RewardOutput:
    """What one scored item yields. `score` is the aggregate for every kind."""

    score: float
    dimensions: dict[str, float] | None = None
    gating_weights: list[float] | None = None
    step_rewards: list[float] | None = None
    token_rewards: TokenRewards | None = None  # implicit models
    num_tokens: int = 0
    truncated: bool = False
    cached: bool = False

    def with_step_aggregate(self, how: StepAggregate) -> RewardOutput:
        return replace(self, score=aggregate_steps(self.step_rewards, how))


def aggregate_steps(rewards: list[float], how: StepAggregate) -> float:
    if how == StepAggregate.min:
        return min(rewards)
    if how == StepAggregate.product:
        return math.prod(rewards)
    if how == StepAggregate.last:
        return rewards[-1]
    return sum(rewards) / len(rewards)


GATING_SCALARS = ("gating_temperature", "gating_logit_scale")


class MLP(nn.Module):
    """Linear layers with ReLU between them, rebuilt from `{prefix}.{i}.weight|bias`."""

    def __init__(self, tensors: dict[str, torch.Tensor], prefix: str):
        super().__init__()
        layers = []
        self.tensor_names: list[str] = []
        i = 0
        while f"{prefix}.{i}.weight" in tensors:
            weight = tensors[f"{prefix}.{i}.weight"]
            bias = tensors.get(f"{prefix}.{i}.bias")
            layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            layer.weight.data.copy_(weight)
            if bias is not None:
                layer.bias.data.copy_(bias)
                self.tensor_names.append(f"{prefix}.{i}.bias")
            self.tensor_names.append(f"{prefix}.{i}.weight")
            layers.append(layer)
            i += 1
        if not layers:
            raise ModelLoadError(f"head file has no '{prefix}.0.weight'")
        self.layers = nn.ModuleList(layers)

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    @property
    def out_features(self) -> int:
        return self.layers[-1].out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class HeadFile(nn.Module):
    """A reward MLP and, for gated multi-objective models, the gating network."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self.reward = MLP(tensors, "reward")
        self.gating = MLP(tensors, "gating") if "gating.0.weight" in tensors else None
        read = set(self.reward.tensor_names) | set(self.gating.tensor_names if self.gating else ())
        read |= {"transform_matrix", *GATING_SCALARS} if self.gating else set()
        unread = sorted(set(tensors) - read)
        if unread:
            raise ModelLoadError(f"head file has tensors this head layout does not read: {unread}")
        for name in GATING_SCALARS:
            value = tensors.get(name, torch.tensor(1.0))
            if value.numel() != 1:
                raise ModelLoadError(f"head file tensor {name} must be a scalar, not of shape {tuple(value.shape)}")
            self.register_buffer(name, value.reshape(()))
        transform = tensors.get("transform_matrix")
        if self.gating is not None:
            transform = transform if transform is not None else torch.eye(self.reward.out_features)
            if tuple(transform.shape) != (self.reward.out_features, self.gating.out_features):
                raise ModelLoadError(
                    f"transform_matrix is {tuple(transform.shape)}, expected "
                    f"({self.reward.out_features}, {self.gating.out_features})"
                )
        self.register_buffer("transform_matrix", transform)

    @classmethod
    def load(cls, path: Path) -> HeadFile:
        if path.suffix != ".safetensors":
            raise ModelLoadError(f"head file {path} must be safetensors")
        return cls(load_file(str(path)))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The head in its file layout, float32: what `load` reads back (a trained head is
        written so)."""
        out = {}
        for prefix, mlp in (("reward", self.reward), ("gating", self.gating)):
            for i, layer in enumerate(mlp.layers if mlp is not None else ()):
                out |= {f"{prefix}.{i}.{k}": v for k, v in layer.named_parameters()}
        if self.gating is not None:
            out |= {name: getattr(self, name) for name in ("transform_matrix", *GATING_SCALARS)}
        return {name: t.detach().float().contiguous() for name, t in out.items()}

    def gate(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.gating(features) / self.gating_temperature, dim=-1) * self.gating_logit_scale

    def gated_score(self, dims: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return ((dims @ self.transform_matrix) * weights).sum(-1)


def step_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """P(good) per step from [bad, good] logits, or from one logit by sigmoid."""
    if logits.shape[-1] == 1:
        return torch.sigmoid(logits[..., 0])
    return torch.softmax(logits.float(), dim=-1)[..., 1]


def named_dimensions(spec: MultiObjectiveSpec, raw: list[float]) -> dict[str, float]:
    out = {}
    for name, value in zip(spec.dimensions, raw):
        affine = spec.affine(name)
        out[name] = value * affine.scale + affine.shift
    return out


def weighted_score(spec: MultiObjectiveSpec, dims: dict[str, float]) -> float:
    return sum(spec.weights.get(name, 0.0) * value for name, value in dims.items())
