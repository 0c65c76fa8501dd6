"""The reward model the comparison systems share: loaded through the same `RewardModel` the
service uses, so the raw ceiling, the naive server and Ray Serve run the very same forward
and only the batching around it differs."""

from __future__ import annotations

from pathlib import Path

import torch

from models.backends.config import OnnxRuntimeConfig, TorchConfig
from models.inputs import Encoded, ScoreInput, TextPair, TokenIds
from models.reward_model import RewardModel
from service.config import BUILTIN_DIR

DEFAULT_MODEL = "minilm-harmless"


def load(model_dir: Path | None = None, name: str = DEFAULT_MODEL, threads: int | None = None,
         onnx_file: Path | None = None) -> RewardModel:
    """The model in `model_dir` (default: the embedded minilm-harmless), on CPU in fp32 as
    the service serves it, on torch or, given `onnx_file`, on onnxruntime; `threads` pins
    torch's intra-op threads."""
    if threads:
        torch.set_num_threads(threads)
    backend = OnnxRuntimeConfig(file=str(onnx_file)) if onnx_file else TorchConfig()
    return RewardModel.load(name, model_dir or BUILTIN_DIR / DEFAULT_MODEL, backend=backend)


def to_input(item: dict) -> ScoreInput:
    """A JSON item of the two forms the workloads send."""
    if "input_ids" in item:
        return TokenIds(tuple(item["input_ids"]))
    return TextPair(item["prompt"], item["response"])


def padding(batches: list[list[int]]) -> tuple[int, int]:
    """(real tokens, padded tokens) of batches given as lists of item lengths; each batch
    is padded to its longest item."""
    return sum(sum(b) for b in batches), sum(max(b) * len(b) for b in batches)


def score_in_order(model: RewardModel, encoded: list[Encoded], batch_size: int) -> list[float]:
    """Scores in fixed-size chunks of the given order, each padded to its longest item: how
    a server that does not reorder (OpenRLHF's serve_rm) batches."""
    scores = []
    for start in range(0, len(encoded), batch_size):
        scores.extend(out.score for out in model.forward(encoded[start:start + batch_size]))
    return scores
