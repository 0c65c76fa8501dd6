"""PairRM's pair head (llm-blender's DebertaV2PairRM), read from the checkpoint as it is: the
final states at the source, candidate-1 and candidate-2 prefix tokens, and a two-layer MLP
`head_layer` (dropout, Linear(2H, H), tanh, dropout, Linear(H, n_tasks)) applied to
[source; candidate] for each candidate; the pair's logit is the mean over tasks of the first
candidate's score minus the second's (models.pairwise combines both orders)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.convert import checkpoint_tensors
from models.errors import ModelLoadError

HEAD_TENSORS = ("head_layer.1.weight", "head_layer.1.bias", "head_layer.4.weight", "head_layer.4.bias")
CONFIG_IDS = ("source_prefix_id", "cand1_prefix_id", "cand2_prefix_id")  # where config.json names the prefixes


class PairRMHead(nn.Module):
    def __init__(self, tensors: dict[str, torch.Tensor], prefix_ids: list[int]):
        super().__init__()
        missing = [name for name in HEAD_TENSORS if name not in tensors]
        unread = sorted(set(tensors) - set(HEAD_TENSORS))
        if missing or unread:
            raise ModelLoadError(f"PairRM head: {'missing ' + ', '.join(missing) if missing else ''}"
                                 f"{'; ' if missing and unread else ''}"
                                 f"{'tensors the head does not read: ' + ', '.join(unread) if unread else ''}")
        hidden, joined = tensors["head_layer.1.weight"].shape
        tasks, inner = tensors["head_layer.4.weight"].shape
        if joined != 2 * hidden or inner != hidden:
            raise ModelLoadError(f"PairRM head: head_layer.1.weight is {(hidden, joined)} and head_layer.4.weight "
                                 f"{(tasks, inner)}; expected (H, 2H) and (tasks, H)")
        self.hidden_layer = nn.Linear(joined, hidden)
        self.output_layer = nn.Linear(hidden, tasks)
        with torch.no_grad():
            for layer, index in ((self.hidden_layer, 1), (self.output_layer, 4)):
                layer.weight.copy_(tensors[f"head_layer.{index}.weight"])
                layer.bias.copy_(tensors[f"head_layer.{index}.bias"])
        self.register_buffer("prefix_ids", torch.tensor(prefix_ids, dtype=torch.long), persistent=False)

    @classmethod
    def load(cls, directory: Path, config, prefix_ids: list[int]) -> PairRMHead:
        """The head's tensors from the checkpoint; the prefix tokens' ids must be those its
        config.json names, where it names them."""
        for key, token_id in zip(CONFIG_IDS, prefix_ids):
            stated = getattr(config, key, None)
            if stated is not None and stated != token_id:
                raise ModelLoadError(f"{directory}: config.json {key} is {stated}, but the tokenizer's prefix token "
                                     f"is id {token_id}: the spec's pairwise prefixes do not match the checkpoint")
        return cls(checkpoint_tensors(directory, ("head_layer.",)), prefix_ids)

    @property
    def in_features(self) -> int:
        return self.output_layer.in_features

    def forward(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """[B, 1] pair logits from final states [B, T, H]: each prefix read at its first
        occurrence in the row (the encoder puts each there exactly once)."""
        positions = (ids.unsqueeze(-1) == self.prefix_ids).int().argmax(dim=1)  # [B, 3]
        rows = torch.arange(ids.shape[0], device=ids.device).unsqueeze(-1)
        source, first, second = hidden[rows, positions].unbind(dim=1)
        scores = [self._mlp(torch.cat([source, candidate], dim=-1)) for candidate in (first, second)]
        return (scores[0] - scores[1]).mean(dim=-1, keepdim=True)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(torch.tanh(self.hidden_layer(x)))
