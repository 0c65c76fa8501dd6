"""Implicit (DPO) rewards. A policy trained by DPO is a reward model of its own: a response's
reward is beta * sum over its tokens of (log pi(token) - log pi_ref(token)), how much more
likely the policy makes the response than the reference it was trained from. Without a
reference, the policy's own log-probabilities of the response tokens are reduced as
RewardBench does (`sum`, `avg`, `norm`: minus their L2 norm). Only the response's tokens
count: the prompt/response boundary is the encoded item's prompt length, found as RewardBench
finds it (the tokens the rendered prompt and the rendered conversation have in common)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer

from models.errors import ModelLoadError
from models.heads import RewardOutput, TokenRewards
from models.inputs import Encoded
from models.spec import ImplicitSpec


def token_logps(model: nn.Module, ids: torch.Tensor, backbone: dict, options: dict) -> torch.Tensor:
    """[B, T] log-probability of each token given those before it, in float32 (position 0,
    which nothing predicts, is 0). Packed rows' item starts get the previous item's guess:
    nothing reads them, since a prompt is at least one token."""
    logits = model(input_ids=ids, **backbone, **options).logits
    return nn.functional.pad(next_token_logps(logits[:, :-1], ids[:, 1:]), (1, 0))


def next_token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B, N] log-probability, in float32, of each target token under the logits [B, N, V]
    that predict it."""
    logps = logits.float().log_softmax(-1)
    return logps.gather(-1, targets.to(logps.device).unsqueeze(-1)).squeeze(-1)


def check_same_tokenizer(tokenizer, reference_dir: Path) -> None:
    """The log-ratio compares the two models on the same token ids, so the reference must
    read them as the policy does: the same vocabulary and special tokens."""
    try:
        other = AutoTokenizer.from_pretrained(reference_dir)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"implicit.reference {reference_dir}: cannot load its tokenizer: {err}") from err
    differences = [what for what, mine, theirs in (
        ("vocabulary", tokenizer.get_vocab(), other.get_vocab()),
        ("special tokens", tokenizer.all_special_tokens, other.all_special_tokens),
    ) if mine != theirs]
    if differences:
        raise ModelLoadError(f"implicit.reference {reference_dir} has another tokenizer than the policy "
                             f"({' and '.join(differences)} differ): the log-ratio needs the same token ids")


def response_values(enc: Encoded, logratios: torch.Tensor, spec: ImplicitSpec) -> torch.Tensor:
    """Each response token's reward from the item's per-token log-ratios [n]: beta times
    (log pi - log pi_ref) with a reference, log pi without (the reductions are unscaled)."""
    response = logratios[enc.prompt_length:enc.num_tokens]
    return response * spec.beta if spec.reference is not None else response


def implicit_output(enc: Encoded, logratios: torch.Tensor, spec: ImplicitSpec) -> RewardOutput:
    """The score reduced in float64 from the response's values, which the output keeps too."""
    values = response_values(enc, logratios.double(), spec)
    if spec.reduction == "avg":
        score = values.mean()
    elif spec.reduction == "norm":
        score = -torch.linalg.vector_norm(values)
    else:
        score = values.sum()
    rewards = TokenRewards(enc.prompt_length, tuple(enc.input_ids[enc.prompt_length:]), tuple(values.tolist()))
    return RewardOutput(score=float(score), token_rewards=rewards, num_tokens=enc.num_tokens,
                        truncated=enc.truncated)
