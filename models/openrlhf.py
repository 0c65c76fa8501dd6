"""OpenRLHF's reward checkpoints, served without conversion.

OpenRLHF trains reward models as a base model with a linear value head beside it
(`get_llm_for_sequence_regression`): the base model's tensors under its own prefix
(`model.` for Llama, Qwen2, Mistral), one `value_head.weight` (`score.weight` in newer
releases) of shape [1, hidden] without bias, read at the last real token. Its evaluation
writes the mean and standard deviation of the rewards it saw into config.json (`mean`,
`std`), which its server divides by under `--normalize_reward`: here they are the model's
reference statistics, so `normalize: "zscore"` gives the same numbers.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

VALUE_HEAD_NAMES = ("value_head", "score")


def checkpoint_tensor_names(directory: Path) -> dict[str, Path]:
    """Every tensor of a safetensors checkpoint (one file or shards) and the file holding it,
    read from the files' headers only."""
    where: dict[str, Path] = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as file:
            where.update(dict.fromkeys(file.keys(), path))
    return where


def value_head_name(directory: Path, config: dict) -> str | None:
    """The value head's name when `directory` holds an OpenRLHF reward checkpoint: a
    [1, hidden] `value_head` or `score` weight with no bias, beside the base model's tensors
    and no LM head (`score` not under a transformers classifier, whose own layer it is).
    Shapes come from the headers; no tensor is read."""
    where = checkpoint_tensor_names(directory)
    hidden = config.get("hidden_size")
    if any(name.startswith("lm_head.") for name in where):
        return None
    classifier = any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or [])
    for name in VALUE_HEAD_NAMES[:1] if classifier else VALUE_HEAD_NAMES:
        path = where.get(f"{name}.weight")
        if path is None or f"{name}.bias" in where:
            continue
        with safe_open(str(path), framework="pt") as file:
            shape = file.get_slice(f"{name}.weight").get_shape()
        if list(shape) == [1, hidden] and len(where) > 1:
            return name
    return None


def reward_moments(config: dict) -> tuple[float, float] | None:
    """The reward mean and standard deviation OpenRLHF's training left in config.json;
    None where it left none."""
    mean, std = config.get("mean"), config.get("std")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (mean, std)) or not std > 0:
        return None
    return float(mean), float(std)
