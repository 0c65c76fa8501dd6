"""Converters for published reward models whose heads are custom (remote) code: the head's
tensors are copied into our head file and described by a reward spec, next to the
untouched checkpoint, which then serves as a plain backbone without trust_remote_code.

    rewardserve convert armorm SRC DST
    rewardserve convert qwen2.5-math-prm SRC DST
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from models.errors import ModelLoadError
from models.families import ARMORM, QWEN_MATH_PRM
from models.spec import SPEC_FILENAME, RewardSpec

HEAD_FILENAME = "reward_head.safetensors"
# What convert writes is read by the server, which may run as another user: whatever the umask.
FILE_MODE, DIR_MODE = 0o644, 0o755

# RLHFlow/ArmoRM-Llama3-8B-v0.1: its 19 objectives, in output order (model card), and where
# its gating network reads: the <|eot_id|> that closes the last user turn (find_token_for_gating).
ARMORM_OBJECTIVES = [
    "helpsteer-helpfulness", "helpsteer-correctness", "helpsteer-coherence", "helpsteer-complexity",
    "helpsteer-verbosity", "ultrafeedback-overall_score", "ultrafeedback-instruction_following",
    "ultrafeedback-truthfulness", "ultrafeedback-honesty", "ultrafeedback-helpfulness", "beavertails-is_safe",
    "prometheus-score", "argilla-overall_quality", "argilla-judge_lm", "code-complexity", "code-style",
    "code-explanation", "code-instruction-following", "code-readability",
]
ARMORM_GATING_AT = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
# Qwen/Qwen2.5-Math-PRM-*: the system turn of its model card's usage code.
QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def checkpoint_tensors(src: Path, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors whose names start with `prefixes`, read from whichever
    shard holds them (nothing else is read into memory)."""
    index = src / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        shards = sorted(p.name for p in src.glob("*.safetensors"))
    if not shards:
        raise ModelLoadError(f"{src} has no safetensors checkpoint")
    found = {}
    for shard in shards:
        with safe_open(str(src / shard), framework="pt") as f:
            for name in f.keys():
                if name.startswith(prefixes):
                    found[name] = f.get_tensor(name)
    return found


def _take(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in tensors:
        raise ModelLoadError(f"checkpoint has no tensor {name!r}: not the layout this converter reads")
    return tensors.pop(name).float().contiguous()


def _layers(tensors: dict[str, torch.Tensor], prefix: str) -> int:
    count = 0
    while f"{prefix}.{count}.weight" in tensors:
        count += 1
    return count


def convert_armorm(src: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """LlamaForRewardModelWithGating: regression_layer [K, H] (no bias), a gating MLP
    (gating.layers.*, ReLU between, softmax(x / gating_temperature) * gating.logit_scale) and
    reward_transform_matrix [K, K]; the reward is read at the last token."""
    config = json.loads((src / "config.json").read_text())
    tensors = checkpoint_tensors(src, ("regression_layer.", "gating.", "reward_transform_matrix"))
    head = {"reward.0.weight": _take(tensors, "regression_layer.weight")}
    for i in range(_layers(tensors, "gating.layers")):
        head[f"gating.{i}.weight"] = _take(tensors, f"gating.layers.{i}.weight")
        head[f"gating.{i}.bias"] = _take(tensors, f"gating.layers.{i}.bias")
    head["gating_logit_scale"] = _take(tensors, "gating.logit_scale").reshape(())
    head["gating_temperature"] = torch.tensor(float(config.get("gating_temperature", 10)))
    head["transform_matrix"] = _take(tensors, "reward_transform_matrix")
    _all_read(tensors)
    objectives = head["reward.0.weight"].shape[0]
    if objectives != len(ARMORM_OBJECTIVES):
        raise ModelLoadError(f"regression_layer has {objectives} objectives; ArmoRM's model card names "
                             f"{len(ARMORM_OBJECTIVES)}")
    spec = {
        "kind": "multi_objective", "pooling": "last",
        "unused_weights": ["regression_layer.", "gating.", "reward_transform_matrix"],
        "multi_objective": {"dimensions": ARMORM_OBJECTIVES, "aggregate": "gating", "gating_at": ARMORM_GATING_AT},
    }
    return spec, head


def convert_qwen_math_prm(src: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Qwen2ForProcessRewardModel: score = Linear(H, H), ReLU, Linear(H, 2) on every token,
    read at each <extra_0>; the checkpoint's lm_head is never read by it."""
    tensors = checkpoint_tensors(src, ("score.",))
    head = {}
    for ours, theirs in (("reward.0", "score.0"), ("reward.1", "score.2")):
        head[f"{ours}.weight"] = _take(tensors, f"{theirs}.weight")
        head[f"{ours}.bias"] = _take(tensors, f"{theirs}.bias")
    _all_read(tensors)
    spec = {
        "kind": "process", "system_prompt": QWEN_MATH_SYSTEM, "unused_weights": ["score.", "lm_head."],
        "process": {"convention": "separator", "marker": "<extra_0>", "aggregate": "min"},
    }
    return spec, head


def _all_read(left: dict[str, torch.Tensor]) -> None:
    if left:
        raise ModelLoadError(f"checkpoint has head tensors this converter does not know: {sorted(left)}")


CONVERTERS: dict[str, Callable[[Path], tuple[dict, dict[str, torch.Tensor]]]] = {
    ARMORM: convert_armorm,
    QWEN_MATH_PRM: convert_qwen_math_prm,
}


def convert(family: str, src: Path, dst: Path) -> Path:
    """Writes DST/reward_head.safetensors and DST/reward_spec.yaml (backbone: SRC, as a
    path relative to DST); the spec file's path."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if family not in CONVERTERS:
        raise ModelLoadError(f"unknown family {family!r}; known: {sorted(CONVERTERS)}")
    if not (src / "config.json").is_file():
        raise ModelLoadError(f"{src} is not a Hugging Face model directory (no config.json)")
    spec, head = CONVERTERS[family](src)
    spec = {"kind": spec.pop("kind"), "backbone": os.path.relpath(src, dst), "head_file": HEAD_FILENAME, **spec}
    RewardSpec.model_validate(spec)  # what is written must load
    if not dst.is_dir():
        dst.mkdir(parents=True)
        dst.chmod(DIR_MODE)
    head_path, spec_path = dst / HEAD_FILENAME, dst / SPEC_FILENAME
    save_file(head, str(head_path), metadata={"converted_from": family})
    spec_path.write_text(f"# written by `rewardserve convert {family}` from {src}\n"
                         + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    for path in (head_path, spec_path):
        path.chmod(FILE_MODE)
    return spec_path
