"""The tensor part of a reward model as one module: a right-padded batch in, the tensors the
heads read out. The torch engine runs it as it is; `export-onnx` exports exactly this module,
so every engine computes the same function.

Outputs, by kind:
    scalar / multi-objective    values [B, K]
      + gating                  gating_weights [B, G], gated_score [B]
    process                     step_logits [B, T, C]: [bad, good] (or one) logits per position
"""

from __future__ import annotations

import torch
from torch import nn

from models.heads import HeadFile
from models.spec import ModelKind, Pooling, RewardSpec


# Every tensor the graph may take or give, by its axes: a named axis is dynamic (batch,
# sequence), None is fixed by the model (head outputs, gating experts, step classes). Inputs
# are int64, outputs float32. The ONNX export and any server running it share this contract.
AXES: dict[str, tuple[str | None, ...]] = {
    "input_ids": ("batch", "sequence"),
    "attention_mask": ("batch", "sequence"),
    "token_type_ids": ("batch", "sequence"),
    "prompt_end": ("batch",),
    "values": ("batch", None),
    "gating_weights": ("batch", None),
    "gated_score": ("batch",),
    "step_logits": ("batch", "sequence", None),
}


def contract_shape(name: str, example: tuple[int, ...]) -> list[int]:
    """`name`'s declared shape: -1 on its dynamic axes, `example`'s size on fixed ones."""
    return [-1 if axis else size for axis, size in zip(AXES[name], example, strict=True)]


def output_names(spec: RewardSpec, gated: bool) -> tuple[str, ...]:
    if spec.kind == ModelKind.process:
        return ("step_logits",)
    return ("values", "gating_weights", "gated_score") if gated else ("values",)


def input_names(is_encoder: bool, gated: bool) -> tuple[str, ...]:
    return ("input_ids", "attention_mask") + (("token_type_ids",) if is_encoder else ()) + (
        ("prompt_end",) if gated else ())


class RewardGraph(nn.Module):
    def __init__(self, model: nn.Module, head: HeadFile | None, spec: RewardSpec, is_encoder: bool,
                 pooling: Pooling, step_tag_ids: list[int] | None, pad_token_id: int | None):
        super().__init__()
        self.model = model
        self.head = head
        self.kind = spec.kind
        self.is_encoder = is_encoder
        self.pooling = pooling
        self.pad_token_id = pad_token_id
        self.reward_logit_index = spec.reward_logit_index
        self.gated = head is not None and head.gating is not None
        self.step_tag_ids = step_tag_ids
        self.call_options = {} if is_encoder else {"use_cache": False}  # scoring never decodes further
        self.output_names = output_names(spec, self.gated)
        self.input_names = input_names(is_encoder, self.gated)

    def forward(self, input_ids, attention_mask, token_type_ids=None, prompt_end=None) -> tuple[torch.Tensor, ...]:
        types = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        if self.kind == ModelKind.process:
            return (self._step_logits(input_ids, attention_mask, types),)
        if self.head is None:
            return (self._sequence_logits(input_ids, attention_mask, types),)
        hidden = self.hidden(input_ids, attention_mask, types)
        values = self.head.reward(self.pool(hidden, attention_mask, input_ids))
        if not self.gated:
            return (values,)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        weights = self.head.gate(hidden[rows, prompt_end])
        return values, weights, self.head.gated_score(values, weights)

    def hidden(self, ids, mask, types: dict) -> torch.Tensor:
        base = self.model if self.head is not None else self.model.base_model
        return base(input_ids=ids, attention_mask=mask, **types, **self.call_options).last_hidden_state

    def pool(self, hidden, mask, ids) -> torch.Tensor:
        if self.pooling == Pooling.cls:
            return hidden[:, 0]
        if self.pooling == Pooling.mean:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * weights).sum(1) / weights.sum(1)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, self.read_position(mask, ids)]

    def read_position(self, mask, ids) -> torch.Tensor:
        """The row's position `last` or `last_non_pad` pooling reads. Real tokens come from
        the mask (padding is right of them whatever its id); `last_non_pad` then skips the
        real tokens equal to the config's pad id, and reads position 0 if all are, as
        transformers does."""
        real = mask.bool()
        if self.pooling == Pooling.last_non_pad and self.pad_token_id is not None:
            real = real & (ids != self.pad_token_id)
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        return torch.where(real, positions, torch.zeros_like(positions)).amax(dim=1)

    def _sequence_logits(self, ids, mask, types) -> torch.Tensor:
        """A checkpoint's own head. Encoders pool [CLS] through their own pooler; decoders
        read their score layer at the pooling position, or one vocabulary logit of their LM
        head (`reward_logit_index`) at the last real token."""
        if self.is_encoder:
            return self.model(input_ids=ids, attention_mask=mask, **types, **self.call_options).logits
        pooled = self.pool(self.hidden(ids, mask, types), mask, ids)
        if self.reward_logit_index is None:
            return self.model.score(pooled)
        return _lm_logits(self.model, pooled, [self.reward_logit_index])

    def _step_logits(self, ids, mask, types) -> torch.Tensor:
        """Per-position logits; the runner keeps those at step markers. For a step-tag LM
        only the good/bad rows of the LM head are computed, not the vocabulary."""
        if self.head is not None:
            return self.head.reward(self.hidden(ids, mask, types))
        if self.step_tag_ids is not None:
            return _lm_logits(self.model, self.hidden(ids, mask, types), self.step_tag_ids)
        return self.model(input_ids=ids, attention_mask=mask, **types, **self.call_options).logits


def _lm_logits(model: nn.Module, hidden: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    """A causal LM's logits for a few vocabulary entries only (its LM head's rows of them,
    soft-capped as the model caps its logits, e.g. Gemma 2)."""
    lm_head = model.get_output_embeddings()
    logits = hidden @ lm_head.weight[token_ids].T
    if getattr(lm_head, "bias", None) is not None:
        logits = logits + lm_head.bias[token_ids]
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits
