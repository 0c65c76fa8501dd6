"""Group scoring with a shared prompt: a batch's items that begin with the same tokens (GRPO's n
responses to one prompt, sent together by RL trainers) run that prefix through the decoder
once, and only each item's own tokens after it.

Why: scoring n responses to a P-token prompt otherwise computes the prompt n times, n * (P + S)
tokens where P + n * S suffice; for long prompts and short responses that is most of the
batch's work. The prefix runs with a KV cache (use_cache=True), the cache is repeated to the
group's size, and the suffixes run right-padded against it, positions continuing from P and
the attention mask covering prefix and suffix. A causal decoder's states at prefix positions
depend on the prefix alone, so the rows put back together (prefix states, then each item's
suffix states) are the unshared forward's, and are read by the same code (RewardGraph's
`read_sequence`, `step_read`): last (non-pad) token, gating position and step markers alike,
inside the prefix or after it.

Groups are found per batch on exact token ids, so no tokenization boundary can differ; a
group shares only where it pays: >= 2 items, a common prefix of >= `min_prefix` tokens,
each item keeping >= 1 token of its own, and more tokens saved than its two extra forwards
cost (`group_cost`). Everything else runs the usual packed or padded forward. Whether a
model shares at all is decided at load (the torch backend's `prefix_sharing`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

from models.graph import RewardGraph, on_device_of
from models.implicit import next_token_logps
from models.inputs import Encoded
from models.packing import why_not_packed
from models.spec import ModelKind

MIN_PREFIX = 32  # the shortest prefix worth sharing
# What a group's two extra forwards cost, in tokens computed: a group pays when it saves more
# ((members - 1) * prefix length). On CPU (a 4-layer, 512-wide Llama, 60-token responses)
# pairs sharing 32 tokens ran 10% slower than unshared, 64 tokens 1.2x faster; 128 leaves
# room for devices whose fixed cost per forward (every weight read once) is higher.
GROUP_COST = 128
CACHED_LAYERS = {"full_attention", "sliding_attention"}  # layers whose state is a (windowed) KV cache


@dataclass(frozen=True)
class Group:
    members: tuple[int, ...]  # indices into the batch
    prefix_length: int  # the tokens they share, computed once


def common_length(a: list[int], b: list[int]) -> int:
    """How many leading ids `a` and `b` share (a binary search on slice equality, so the
    comparing runs in C rather than a Python loop over tokens)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def prefix_groups(rows: list[list[int]], min_prefix: int = MIN_PREFIX, group_cost: int = GROUP_COST) -> list[Group]:
    """Groups of items sharing a prefix, chosen to save the most: the tokens not recomputed
    ((members - 1) * prefix length) less `group_cost` per group. In sorted order the items
    sharing a prefix are contiguous and a run's common prefix is its least adjacent one, so
    a run either forms one group or splits where that least prefix is (prompts beginning
    with the same system prompt become a group each, sharing its whole prompt)."""
    order = sorted(range(len(rows)), key=rows.__getitem__)
    adjacent = [common_length(rows[a], rows[b]) for a, b in pairwise(order)]

    def best(lo: int, hi: int) -> tuple[int, list[Group]]:  # over order[lo:hi], at least 2 items
        least = min(adjacent[lo:hi - 1])
        shared = min(least, min(len(rows[i]) for i in order[lo:hi]) - 1)  # each keeps a token of its own
        own = max((hi - lo - 1) * shared - group_cost, 0) if shared >= min_prefix else 0
        cuts = [lo, *(k + 1 for k in range(lo, hi - 1) if adjacent[k] == least), hi]
        parts = [best(a, b) for a, b in pairwise(cuts) if b - a >= 2]
        split = sum(saved for saved, _ in parts)
        if split > own:
            return split, [group for _, groups in parts for group in groups]
        return own, [Group(tuple(sorted(order[lo:hi])), shared)] if own else []

    return best(0, len(rows))[1] if len(rows) >= 2 else []


def why_not_shared(graph: RewardGraph) -> str | None:
    """Why this graph cannot run a prefix once for several items, or None: it takes a causal
    decoder of transformers' own code (the same conditions as packing: position_ids and
    transformers' masking honoured) whose every layer keeps a KV cache, and a read of its
    final states the graph can make itself."""
    if graph.is_encoder:
        return "an encoder attends both ways, so a prompt's states depend on what follows it"
    reason = why_not_packed(graph)
    if reason:
        return reason
    for module in graph.lms if graph.kind == ModelKind.implicit else (graph.base,):  # what runs on a KV cache
        other = set(getattr(module.config.get_text_config(), "layer_types", None) or ()) - CACHED_LAYERS
        if other:
            return f"its {sorted(other)} layers keep no plain KV cache"
        if not {"cache", "past_key_values"} & set(inspect.signature(type(module).forward).parameters):
            return f"{type(module).__name__} takes no KV cache"
    token_classifier = graph.kind == ModelKind.process and graph.head is None and graph.step_tag_ids is None
    if token_classifier and not isinstance(getattr(graph.model, "score", None), nn.Module):
        return f"{type(graph.model).__name__} has no `score` layer to read its final states with"
    return None


class PrefixSharing:
    """A model's shared-prefix forward: the grouping rule, and counters of what it shared
    (groups run, prefix tokens not recomputed)."""

    def __init__(self, min_prefix: int = MIN_PREFIX, group_cost: int = GROUP_COST):
        self.min_prefix, self.group_cost = min_prefix, group_cost
        self.groups = 0
        self.tokens_saved = 0

    def prepare(self, model, batch: list[Encoded]) -> Callable[[], list]:
        """`model.prepare` of `batch` (a RewardModel): its groups found and their inputs
        built, returned as the forward that runs each group through the shared forward and
        the other items through the model's usual forward, answering in batch order."""
        groups = prefix_groups([enc.input_ids for enc in batch], self.min_prefix, self.group_cost)
        grouped = {i for group in groups for i in group.members}
        rest = [i for i in range(len(batch)) if i not in grouped]
        parts = [(rest, model.prepare_unshared([batch[i] for i in rest]))] if rest else []
        for group in groups:
            items = [batch[i] for i in group.members]
            inputs = model.model_inputs(items)
            if model.spec.kind == ModelKind.process:
                inputs["step_rows"], inputs["step_positions"] = model.marker_index(items)
            parts.append((group.members, self._group_forward(model, items, inputs, group.prefix_length)))

        def run() -> list:
            outputs: list = [None] * len(batch)
            for members, forward in parts:
                for i, out in zip(members, forward()):
                    outputs[i] = out
            return outputs

        return run

    def _group_forward(self, model, items: list[Encoded], inputs: dict, prefix_length: int) -> Callable[[], list]:
        def run() -> list:
            tensors = model.backend.shared(inputs, prefix_length)
            self.groups += 1
            self.tokens_saved += (len(items) - 1) * prefix_length
            return model.read_outputs(items, tensors, at_markers=True)

        return run


def shared_forward(graph: RewardGraph, prefix_length: int, input_ids, attention_mask, prompt_end=None,
                   step_rows=None, step_positions=None) -> tuple[torch.Tensor, ...]:
    """One group's outputs (step logits at the markers only, as packed): `input_ids` and
    `attention_mask` are its right-padded rows [n, T], all beginning with the same
    `prefix_length` ids; `prompt_end` and the step positions index those rows."""
    if graph.kind == ModelKind.implicit:
        return (shared_logratios(graph, prefix_length, input_ids, attention_mask),)
    prefix, suffix = cached_forward(graph.base, prefix_length, input_ids, attention_mask)
    n = input_ids.shape[0]
    states = [on_device_of(input_ids, s) for s in (prefix.last_hidden_state.expand(n, -1, -1),
                                                   suffix.last_hidden_state)]
    hidden = torch.cat(states, dim=1)  # the unshared rows' states
    if graph.kind == ModelKind.process:
        return (graph.step_read(hidden[step_rows, step_positions]),)
    return graph.read_sequence(hidden, attention_mask, input_ids, prompt_end)


def cached_forward(module: nn.Module, prefix_length: int, input_ids, attention_mask) -> tuple:
    """`module`'s outputs for the prefix (one row) and for the rows' own tokens after it,
    run against the prefix's KV cache repeated to the rows, positions continuing from it."""
    n = input_ids.shape[0]
    name = "cache" if "cache" in inspect.signature(type(module).forward).parameters else "past_key_values"
    prefix = module(input_ids=input_ids[:1, :prefix_length], use_cache=True)
    cache = getattr(prefix, name)  # transformers' DynamicCache (sliding-window layers too), for one row
    cache.batch_repeat_interleave(n)
    positions = torch.arange(prefix_length, input_ids.shape[1], device=input_ids.device).expand(n, -1)
    suffix = module(input_ids=input_ids[:, prefix_length:], attention_mask=attention_mask, position_ids=positions,
                    use_cache=True, **{name: cache})
    return prefix, suffix


def shared_logratios(graph: RewardGraph, prefix_length: int, input_ids, attention_mask) -> torch.Tensor:
    """An implicit model's token_logratios [n, T] with the prefix run once by each LM: the
    prefix's log-probabilities computed on its one row, each row's own from the prefix's last
    logits on (graph.logratios' values, row by row)."""
    logps = [shared_token_logps(lm, prefix_length, input_ids, attention_mask) for lm in graph.lms]
    return logps[0] if len(logps) == 1 else logps[0] - logps[1]


def shared_token_logps(lm: nn.Module, prefix_length: int, input_ids, attention_mask) -> torch.Tensor:
    """implicit.token_logps of the group's rows from a prefix-cached forward of the causal LM."""
    prefix, suffix = cached_forward(lm, prefix_length, input_ids, attention_mask)
    n, ids = input_ids.shape[0], input_ids
    own_logits = torch.cat([on_device_of(ids, prefix.logits[:, -1:]).expand(n, -1, -1),
                            on_device_of(ids, suffix.logits[:, :-1])], dim=1)  # predict positions P..T-1
    in_prefix = next_token_logps(on_device_of(ids, prefix.logits[:, :-1]), ids[:1, 1:prefix_length])
    in_prefix = nn.functional.pad(in_prefix, (1, 0)).expand(n, -1)
    return torch.cat([in_prefix, next_token_logps(own_logits, ids[:, prefix_length:])], dim=1)
