"""OpenRLHF's reward server (`openrlhf.cli.serve_rm` with `get_llm_for_sequence_regression`)
re-implemented with transformers alone, as the reference for /get_reward: nothing of
rewardserve is used here.

Its scoring: the checkpoint loads as the base model plus a linear value head (`value_head`,
or `score` for a transformers sequence classifier or a newer OpenRLHF model), the tokenizer
pads on the left with pad = EOS where it has no pad token; each query has its padding and
EOS texts stripped from both ends and one EOS appended, is tokenized as it is (no special
tokens added), and the value head is read at the last position of the attention mask, with
position ids counted over the real tokens; `--normalize_reward` subtracts config.json's
`mean` and divides by its `std`."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoTokenizer


class ServeRm:
    def __init__(self, directory: Path, value_head: str = "value_head", normalize_reward: bool = False,
                 max_len: int = 2048):
        self.config = AutoConfig.from_pretrained(directory)
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.base = AutoModel.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager").eval()
        tensors = {}
        for shard in sorted(directory.glob("*.safetensors")):
            tensors |= load_file(str(shard))
        self.value_head = tensors[f"{value_head}.weight"].float()
        self.normalize_reward = normalize_reward
        self.max_len = max_len

    def query_text(self, query: str) -> str:
        pad, eos = re.escape(self.tokenizer.pad_token), re.escape(self.tokenizer.eos_token)
        query = re.sub(f"^({eos}|{pad})+", "", query)
        query = re.sub(f"({eos}|{pad})+$", "", query)
        return query + self.tokenizer.eos_token

    @torch.no_grad()
    def rewards(self, queries: list[str]) -> list[float]:
        batch = self.tokenizer([self.query_text(q) for q in queries], return_tensors="pt", add_special_tokens=False,
                               max_length=self.max_len, padding=True, truncation=True)
        mask = batch["attention_mask"]
        positions = mask.long().cumsum(-1) - 1
        positions.masked_fill_(mask == 0, 1)
        hidden = self.base(batch["input_ids"], attention_mask=mask, position_ids=positions).last_hidden_state
        values = (hidden @ self.value_head.T).squeeze(-1)
        last = mask.size(1) - 1 - mask.long().fliplr().argmax(dim=1, keepdim=True)
        reward = values.gather(dim=1, index=last).squeeze(1)
        if self.normalize_reward:
            reward = (reward - self.config.mean) / self.config.std
        return reward.tolist()
