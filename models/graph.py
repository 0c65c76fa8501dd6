"""The tensor part of a reward model as one module: a right-padded batch in, the tensors the
heads read out. The torch backend runs it as it is; `export-onnx` exports exactly this module,
so every backend computes the same function. The torch backend may run decoders packed instead
(`RewardGraph.packed`: the batch as one row, no padding), reading the same outputs.

Outputs, by kind:
    scalar / multi-objective    values [B, K] (a label-token judge: [B, 1], P(labels[0]) of the two)
    pairwise                    values [B, 1] per ordered pair: PairRM's logit, or an A/B judge's P(A)
      + gating                  gating_weights [B, G], gated_score [B]
    process                     step_logits [B, T, C]: [bad, good] (or one) logits per position
                                (packed: [M, C], at the M step markers only)
    implicit                    token_logratios [B, T]: log pi - log pi_ref of each token given those
                                before it (log pi alone without a reference; packed: [1, N])
"""

from __future__ import annotations

import torch
from torch import nn

from models.adapters import Adapters
from models.dispatch import onloaded
from models.heads import HeadFile
from models.implicit import token_logps
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
    "token_logratios": ("batch", "sequence"),
}


def contract_shape(name: str, example: tuple[int, ...]) -> list[int]:
    """`name`'s declared shape: -1 on its dynamic axes, `example`'s size on fixed ones."""
    return [-1 if axis else size for axis, size in zip(AXES[name], example, strict=True)]


def output_names(spec: RewardSpec, gated: bool) -> tuple[str, ...]:
    if spec.kind == ModelKind.process:
        return ("step_logits",)
    if spec.kind == ModelKind.implicit:
        return ("token_logratios",)
    return ("values", "gating_weights", "gated_score") if gated else ("values",)


def input_names(is_encoder: bool, gated: bool) -> tuple[str, ...]:
    return ("input_ids", "attention_mask") + (("token_type_ids",) if is_encoder else ()) + (
        ("prompt_end",) if gated else ())


class RewardGraph(nn.Module):
    def __init__(self, model: nn.Module, head: HeadFile | None, spec: RewardSpec, is_encoder: bool,
                 pooling: Pooling, step_tag_ids: list[int] | None, pad_token_id: int | None,
                 label_ids: list[int] | None = None, reference: nn.Module | None = None,
                 pair_head: nn.Module | None = None, adapters: Adapters | None = None):
        super().__init__()
        self.model = model
        self.pair_head = pair_head  # PairRM's head on its prefix tokens' states (models.pairrm)
        self.reference = reference  # implicit models: the reference causal LM, or None (reference-free)
        self.adapters = adapters  # LoRA adapters over `model` (models.adapters), off unless a forward turns one on
        self.head = head
        self.kind = spec.kind
        self.is_encoder = is_encoder
        self.pooling = pooling
        self.pad_token_id = pad_token_id
        self.reward_logit_index = spec.reward_logit_index
        self.gated = head is not None and head.gating is not None
        self.step_tag_ids = step_tag_ids
        self.label_ids = label_ids  # a judge's two answers (spec.label_tokens), the scored one first
        self.call_options = {} if is_encoder else {"use_cache": False}  # scoring never decodes further
        self.output_names = output_names(spec, self.gated)
        self.input_names = input_names(is_encoder, self.gated)

    def forward(self, input_ids, attention_mask, token_type_ids=None, prompt_end=None) -> tuple[torch.Tensor, ...]:
        backbone = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            backbone["token_type_ids"] = token_type_ids
        if self.kind == ModelKind.process:
            return (self._step_logits(input_ids, backbone),)
        if self.kind == ModelKind.implicit:
            return (self.logratios(input_ids, backbone),)
        if self.pair_head is not None:
            return (self.pair_head(self.hidden(input_ids, backbone), input_ids),)
        if self.is_encoder and self.head is None:  # through its own [CLS] pooler
            return (self.model(input_ids=input_ids, **backbone, **self.call_options).logits,)
        return self.read_sequence(self.hidden(input_ids, backbone), attention_mask, input_ids, prompt_end)

    def packed(self, input_ids, position_ids, seq_starts, prompt_end=None,
               step_positions=None) -> tuple[torch.Tensor, ...]:
        """The padding-free forward of a decoder (torch backend only): the items end to end in
        one row [1, N], `position_ids` restarting at 0 for each, no attention mask, so that
        transformers' masking keeps every item to itself (a block-diagonal causal mask for
        sdpa and eager, varlen kernels for flash attention). `seq_starts`, `prompt_end` and
        `step_positions` are offsets into the row; process models give logits at the step
        markers only."""
        backbone = {"position_ids": position_ids, **self._varlen(seq_starts, input_ids.shape[1])}
        if self.kind == ModelKind.process:
            return (self._step_logits(input_ids, backbone)[0, step_positions],)
        if self.kind == ModelKind.implicit:
            return (self.logratios(input_ids, backbone),)
        hidden = self.hidden(input_ids, backbone)[0]
        gate_states = hidden[prompt_end] if self.gated else None
        return self._read(self._pool_packed(hidden, input_ids[0], position_ids[0], seq_starts), gate_states)

    @property
    def output_width(self) -> int | None:
        """Head outputs per item; None for a step-tag LM, read at its candidate tokens, and
        for an implicit model, read at every response token."""
        if self.step_tag_ids is not None or self.kind == ModelKind.implicit:
            return None
        if self.reward_logit_index is not None or self.label_ids is not None or self.pair_head is not None:
            return 1
        return self.head.reward.out_features if self.head is not None else self.model.config.num_labels

    @property
    def base(self) -> nn.Module:
        """The backbone whose final states the heads read (a head file's model is one)."""
        return self.model if self.head is not None else self.model.base_model

    @property
    def lms(self) -> tuple[nn.Module, ...]:
        """An implicit model's causal LMs: the policy, then its reference if it has one."""
        return (self.model,) if self.reference is None else (self.model, self.reference)

    def hidden(self, ids, backbone: dict) -> torch.Tensor:
        return on_device_of(ids, self.base(input_ids=ids, **backbone, **self.call_options).last_hidden_state)

    def read_sequence(self, hidden, mask, ids, prompt_end=None) -> tuple[torch.Tensor, ...]:
        """The sequence outputs from a right-padded batch's final states [B, T, H] (the
        shared-prefix forward reads its rows so too, models.shared_prefix)."""
        gate_states = hidden[torch.arange(hidden.shape[0], device=hidden.device), prompt_end] if self.gated else None
        return self._read(self.pool(hidden, mask, ids), gate_states)

    def pool(self, hidden, mask, ids) -> torch.Tensor:
        if self.pooling == Pooling.cls:
            return hidden[:, 0]
        if self.pooling == Pooling.mean:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * weights).sum(1) / weights.sum(1)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, self.read_position(mask, ids)]

    def read_position(self, mask, ids) -> torch.Tensor:
        """The row's position `last` or `last_non_pad` pooling reads: its last readable
        token (`_readable`; real tokens come from the mask, padding is right of them whatever
        its id), or position 0 if none is, as transformers does."""
        real = self._readable(ids, mask.bool())
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        return torch.where(real, positions, torch.zeros_like(positions)).amax(dim=1)

    def _readable(self, ids, real) -> torch.Tensor:
        """The real tokens `last` pooling may read; `last_non_pad` skips those equal to the
        config's pad id (with pad = EOS, the token before a closing EOS is read)."""
        if self.pooling == Pooling.last_non_pad and self.pad_token_id is not None:
            return real & (ids != self.pad_token_id)
        return real

    def _pool_packed(self, hidden, ids, positions, starts) -> torch.Tensor:
        """`pool` on the packed row [N, H]: item i is the tokens from starts[i] up to the
        next item's start; `last` reads fall back to the item's first token, as in `pool`."""
        if self.pooling == Pooling.cls:
            return hidden[starts]
        item = (positions == 0).cumsum(0) - 1  # the item each token belongs to
        if self.pooling == Pooling.mean:
            sums = hidden.new_zeros(starts.shape[0], hidden.shape[-1]).index_add_(0, item, hidden)
            return sums / torch.bincount(item, minlength=starts.shape[0]).unsqueeze(-1).to(hidden.dtype)
        readable = self._readable(ids, torch.ones_like(ids, dtype=torch.bool))
        offsets = torch.arange(ids.shape[0], device=ids.device) * readable
        return hidden[starts.scatter_reduce(0, item, offsets, "amax")]  # from starts: at least the item's first

    def _varlen(self, starts, total: int) -> dict:
        """Flash attention's varlen arguments, computed once per forward rather than
        re-derived from position_ids in every layer; other attentions read position_ids."""
        if not self.model.config._attn_implementation.startswith("flash"):
            return {}
        bounds = torch.cat([starts, starts.new_tensor([total])]).to(torch.int32)
        longest = int((bounds[1:] - bounds[:-1]).max())
        return {"cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds, "max_length_q": longest, "max_length_k": longest}

    def _read(self, pooled, gate_states) -> tuple[torch.Tensor, ...]:
        """The sequence outputs from the pooled states: a decoder's own score layer, or one
        vocabulary logit of its LM head (`reward_logit_index`), or the probability of a judge's
        first answer against its second (`label_ids`: their two logits, softmax), or the head
        file's reward MLP and its gating network on `gate_states`."""
        if self.head is None:
            if self.label_ids is not None:
                return (torch.softmax(_lm_logits(self.model, pooled, self.label_ids).float(), dim=-1)[:, :1],)
            if self.reward_logit_index is None:
                return (self.model.score(pooled),)
            return (_lm_logits(self.model, pooled, [self.reward_logit_index]),)
        values = self.head.reward(pooled)
        if not self.gated:
            return (values,)
        weights = self.head.gate(gate_states)
        return values, weights, self.head.gated_score(values, weights)

    def logratios(self, ids, backbone: dict) -> torch.Tensor:
        """An implicit model's per-token log-ratios: the policy's and then the reference's
        forward on the same inputs (models.implicit)."""
        logps = [on_device_of(ids, token_logps(lm, ids, backbone, self.call_options)) for lm in self.lms]
        return logps[0] if len(logps) == 1 else logps[0] - logps[1]

    def _step_logits(self, ids, backbone: dict) -> torch.Tensor:
        """Per-position logits; the runner keeps those at step markers. For a step-tag LM
        only the good/bad rows of the LM head are computed, not the vocabulary."""
        if self.head is None and self.step_tag_ids is None:  # a token classifier, whole (remote code's too)
            return self.model(input_ids=ids, **backbone, **self.call_options).logits
        return self.step_read(self.hidden(ids, backbone))

    def step_read(self, hidden) -> torch.Tensor:
        """Step logits from final states [..., H]: the head file's, the step-tag LM's good/bad
        rows, or a transformers token classifier's `score` layer (its dropout is off in eval)."""
        if self.head is not None:
            return self.head.reward(hidden)
        if self.step_tag_ids is not None:
            return _lm_logits(self.model, hidden, self.step_tag_ids)
        return self.model.score(hidden)


def on_device_of(like: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` where `like` is: a backbone dispatched over several GPUs (device_map) gives
    its final states on the last one, and the graph reads them with indices built from its
    inputs."""
    return tensor if tensor.device == like.device else tensor.to(like.device)


def _lm_logits(model: nn.Module, hidden: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    """A causal LM's logits for a few vocabulary entries only (its LM head's rows of them,
    soft-capped as the model caps its logits, e.g. Gemma 2). The rows are read outside the
    head's forward, so from a dispatched model's offloaded head too (models.dispatch)."""
    lm_head = model.get_output_embeddings()
    with onloaded(lm_head):
        rows = on_device_of(hidden, lm_head.weight[token_ids])
        bias = on_device_of(hidden, lm_head.bias[token_ids]) if getattr(lm_head, "bias", None) is not None else None
    logits = hidden @ rows.T
    if bias is not None:
        logits = logits + bias
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits
