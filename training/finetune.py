"""Fine-tuning a reward model end to end through its serving graph: the forward that trains
is RewardGraph's own, on batches RewardModel.model_inputs builds (the same padding, pooling,
step markers and head), so the model serves exactly what it was trained on. Used by
training.train_default for the embedded defaults.

The word embeddings stay frozen (most of MiniLM's parameters, and a few thousand pairs cannot
move them usefully); every transformer layer and the head train. What changed is written as
tensors to lay over the published backbone (the spec's `backbone_weights`) and a head file.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from models.inputs import Encoded
from models.reward_model import RewardModel

FROZEN = ("embeddings.",)  # backbone parameters left as published


@dataclass(frozen=True)
class Example:
    """One training record as the loss takes it (an encoded (chosen, rejected) pair), and its
    length for batching neighbours together."""

    encoded: tuple[Encoded, Encoded]
    length: int


@dataclass(frozen=True)
class Schedule:
    epochs: float
    batch: int  # records (pairs, solutions) per step
    backbone_lr: float
    head_lr: float
    warmup: float = 0.1  # share of the steps the learning rate ramps up over, then decays linearly to 0
    weight_decay: float = 0.01
    evals: int = 8  # validation checks over the run; the best checkpoint is kept
    seed: int = 0


def pair_loss(model: RewardModel, batch: Sequence[tuple[Encoded, Encoded]]) -> torch.Tensor:
    """Bradley-Terry: -log sigmoid(r_chosen - r_rejected) over (chosen, rejected) pairs."""
    values = sequence_values(model, [c for c, _ in batch] + [r for _, r in batch])[:, 0]
    return -F.logsigmoid(values[:len(batch)] - values[len(batch):]).mean()


def sequence_values(model: RewardModel, batch: list[Encoded]) -> torch.Tensor:
    """The graph's `values` output [N, outputs], with gradients."""
    inputs = {k: v.to(model.device) for k, v in model.model_inputs(batch).items()}
    return model.backend.graph(**inputs)[0].float()


def trained_parameters(model: RewardModel) -> tuple[list, list]:
    """(backbone, head) parameters that train; the frozen ones stop taking gradients."""
    graph = model.backend.graph
    backbone = []
    for name, param in graph.model.named_parameters():
        param.requires_grad_(not name.startswith(FROZEN))
        if param.requires_grad:
            backbone.append(param)
    return backbone, list(graph.head.parameters())


def fine_tune(model: RewardModel, records: list[Example], loss: Callable[[RewardModel, list], torch.Tensor],
              validate: Callable[[RewardModel], float], schedule: Schedule,
              log: Callable[[str], None] = print) -> float:
    """Train `model` in place on `records` (shuffled each epoch, batched in length order so
    little is padding) and leave it at the checkpoint of best `validate` score (higher is
    better, checked `schedule.evals` times); returns that score."""
    rng = random.Random(schedule.seed)
    torch.manual_seed(schedule.seed)
    backbone, head = trained_parameters(model)
    optimizer = torch.optim.AdamW([{"params": backbone, "lr": schedule.backbone_lr},
                                   {"params": head, "lr": schedule.head_lr}], weight_decay=schedule.weight_decay)
    steps = math.ceil(schedule.epochs * len(records) / schedule.batch)
    warmup = max(1, int(schedule.warmup * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    graph = model.backend.graph
    best, best_state = _checked(model, validate), _trained_state(model)
    log(f"step 0/{steps}: validation {best:.4f}")
    started, batches = time.perf_counter(), []
    for step in range(steps):
        if not batches:
            batches = _length_batches(records, schedule.batch, rng)
        graph.train()
        loss(model, batches.pop()).backward()
        torch.nn.utils.clip_grad_norm_(backbone + head, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % max(1, steps // schedule.evals) == 0 or step + 1 == steps:
            score = _checked(model, validate)
            log(f"step {step + 1}/{steps} ({time.perf_counter() - started:.0f}s): validation {score:.4f}")
            if score > best:
                best, best_state = score, _trained_state(model)
    graph.load_state_dict(best_state, strict=False)
    graph.eval()
    return best


def mean_loss(model: RewardModel, loss: Callable[[RewardModel, list], torch.Tensor], examples: list[Example],
              size: int = 16) -> float:
    """`loss` over `examples` in batches of neighbours in length, averaged per example (a
    validation score, as `-mean_loss`)."""
    ordered = sorted(examples, key=lambda e: e.length)
    total = sum(loss(model, [e.encoded for e in ordered[i:i + size]]).item() * len(ordered[i:i + size])
                for i in range(0, len(ordered), size))
    return total / len(ordered)


def _length_batches(records: list, size: int, rng: random.Random) -> list:
    """One epoch: records shuffled, then cut into batches of neighbours in length (a record's
    `length`), batches in random order."""
    shuffled = rng.sample(records, len(records))
    ordered = sorted(shuffled, key=lambda r: r.length)
    batches = [[r.encoded for r in ordered[i:i + size]] for i in range(0, len(ordered), size)]
    rng.shuffle(batches)
    return batches


def _checked(model: RewardModel, validate: Callable[[RewardModel], float]) -> float:
    model.backend.graph.eval()
    with torch.inference_mode():
        return validate(model)


def _trained_state(model: RewardModel) -> dict[str, torch.Tensor]:
    graph = model.backend.graph
    return {name: p.detach().clone() for name, p in graph.named_parameters() if p.requires_grad}


def save_fine_tune(model: RewardModel, backbone_file, head_file) -> None:
    """The trained backbone tensors in float16 (half the size; the report reloads these
    files, so what it measures is what ships) and the head file in float32."""
    graph = model.backend.graph
    trained = {n.removeprefix("model."): p.detach().half().contiguous()
               for n, p in graph.named_parameters() if p.requires_grad and n.startswith("model.")}
    save_file(trained, str(backbone_file))
    save_file(graph.head.tensors(), str(head_file))
