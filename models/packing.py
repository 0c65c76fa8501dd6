"""Packed batches: every item of a batch end to end in one row, with no padding, for the
decoders whose masking keeps packed items apart (RewardGraph.packed). Whether a model runs
packed is decided once, at load (the torch backend's `packing`); everything else runs the
padded batch."""

from __future__ import annotations

import sys
from itertools import accumulate

import torch
from transformers import masking_utils

from models.graph import RewardGraph
from models.inputs import Encoded

# Attention implementations whose masks transformers builds from packed position_ids (a
# block-diagonal mask, or varlen / block-sparse kernels).
PACKABLE_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3",
                      "flash_attention_4")
# Those that compute each packed item alone. Under sdpa and eager a packed row gets one dense
# [N, N] mask and every block of it is computed: for short items that costs more than the
# padding it saves (a 16k-token row of 500-token items: 18x the padded forward's time for a
# small Llama on CPU), so `auto` packs only under these.
VARLEN_ATTENTION = ("flex_attention", "flash_attention_2", "flash_attention_3", "flash_attention_4")


def why_not_packed(graph: RewardGraph) -> str | None:
    """Why packing would let this graph's items attend to each other, or None. It takes a
    causal decoder of transformers' own code (remote code may drop position_ids or build
    its mask its own way) whose mask comes from transformers' masking, which reads packed
    position_ids, under an attention implementation that honours that mask."""
    if graph.is_encoder:
        return "an encoder attends both ways over the whole row"
    base = graph.model.base_model
    for cls in (type(graph.model), type(base)):
        if not cls.__module__.startswith("transformers.models."):
            return f"{cls.__name__} is remote code, which may not pass position_ids on"
    modeling = sys.modules[type(base).__module__]
    if getattr(modeling, "create_causal_mask", None) is not masking_utils.create_causal_mask:
        return f"{type(base).__name__} does not build its attention mask with transformers' masking"
    if not getattr(graph.model.config, "is_causal", True):
        return f"{type(base).__name__} is configured to attend both ways"
    attention = graph.model.config._attn_implementation
    if attention not in PACKABLE_ATTENTION:
        return f"attention implementation {attention!r} does not separate packed items"
    return None


def pack(batch: list[Encoded], gated: bool, process: bool) -> dict[str, torch.Tensor]:
    """The batch as RewardGraph.packed's inputs: the items' ids end to end [1, N], positions
    restarting at 0 for each, and every read position as an offset into the row (where each
    item starts, the gating position, the step markers)."""
    lengths = [enc.num_tokens for enc in batch]
    starts = list(accumulate(lengths, initial=0))[:-1]
    named = {
        "input_ids": torch.tensor([[token for enc in batch for token in enc.input_ids]], dtype=torch.long),
        "position_ids": torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0),
        "seq_starts": torch.tensor(starts, dtype=torch.long),
    }
    if gated:
        named["prompt_end"] = torch.tensor([s + enc.gate_position for s, enc in zip(starts, batch)], dtype=torch.long)
    if process:
        named["step_positions"] = torch.tensor([s + p for s, enc in zip(starts, batch) for p in enc.marker_positions],
                                               dtype=torch.long)
    return named
