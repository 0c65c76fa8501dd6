"""The published pairwise models' own computations, written with transformers alone, for
parity tests: PairRM as RewardBench's pairrm.py and llm-blender's DebertaV2PairRM compute it
(tokenize_conv_pair / tokenize_pair, the head on the prefix tokens' states, both orders), and
RLHFlow's pair-preference judge as RewardBench's pairpm.py does."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DebertaV2Model

PAIRRM_INSTRUCTION = "Finish the following coversation in each i-th turn by filling in <Response i> with your response."
PAIRPM_CONTEXT = ("\n{% for message in messages %}{% if loop.index0 % 2 == 0 %}"
                  "\n\n<turn> user\n {{ message['content'] }}{% else %}"
                  "\n\n<turn> assistant\n {{ message['content'] }}{% endif %}{% endfor %}\n\n\n")


class PairRM(nn.Module):
    """DebertaV2PairRM's forward for a batch of one (pairrm.py), float32, eval mode."""

    def __init__(self, directory: Path, source_max_length: int = 1224, candidate_max_length: int = 412):
        super().__init__()
        self.config = AutoConfig.from_pretrained(directory)
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.pretrained_model = DebertaV2Model(self.config)
        width = self.config.hidden_size
        self.head_layer = nn.Sequential(nn.Dropout(0.05), nn.Linear(2 * width, width), nn.Tanh(), nn.Dropout(0.05),
                                        nn.Linear(width, self.config.n_tasks))
        self.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
        self.eval()
        self.lengths = source_max_length, candidate_max_length

    def tokenize_pair(self, source: str, first: str, second: str) -> dict:
        source_max, candidate_max = self.lengths
        max_length = source_max + 2 * candidate_max
        source_ids = self.tokenizer.encode("<|source|>" + source, max_length=source_max, truncation=True)
        candidate_max = (max_length - len(source_ids)) // 2
        ids = source_ids + self.tokenizer.encode("<|candidate1|>" + first, max_length=candidate_max, truncation=True) \
            + self.tokenizer.encode("<|candidate2|>" + second, max_length=candidate_max, truncation=True)
        return self.tokenizer.pad({"input_ids": [ids]}, return_tensors="pt", padding="max_length",
                                  max_length=max_length)

    @staticmethod
    def conversation(turns: list[dict], response: str) -> tuple[str, str]:
        """tokenize_conv_pair's texts of one conversation ending in `response`."""
        conv = [*turns, {"role": "assistant", "content": response}]
        source = "\n".join("USER: " + conv[i]["content"] + f"\nAssistant: <Response {i // 2 + 1}>"
                           for i in range(0, len(conv), 2))
        candidate = "\n".join(f"<Response {i // 2 + 1}>: " + conv[i]["content"] for i in range(1, len(conv), 2))
        return PAIRRM_INSTRUCTION + source, candidate

    @torch.no_grad()
    def logit(self, encodings) -> float:
        ids, mask = encodings["input_ids"], encodings["attention_mask"]
        keep = mask.ne(0).any(dim=0)
        ids, mask = ids[:, keep], mask[:, keep]
        encs = self.pretrained_model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        states = [encs[torch.where(ids == self.config.__dict__[key])] for key in
                  ("source_prefix_id", "cand1_prefix_id", "cand2_prefix_id")]
        left = self.head_layer(torch.cat([states[0], states[1]], dim=-1))
        right = self.head_layer(torch.cat([states[0], states[2]], dim=-1))
        return (left - right).mean(dim=-1).item()

    def preference(self, turns: list[dict], a: str, b: str, conversation: bool = True) -> float:
        """P(a > b): sigmoid(logits(A, B) - logits(B, A))."""
        if conversation:
            source, first = self.conversation(turns, a)
            _, second = self.conversation(turns, b)
        else:
            source, first, second = turns[0]["content"], a, b
        ab = self.logit(self.tokenize_pair(source, first, second))
        ba = self.logit(self.tokenize_pair(source, second, first))
        return 1 / (1 + math.exp(-(ab - ba)))


class PairPM:
    """RewardBench's PairPMPipeline, one prompt at a time, on the CPU in float32."""

    def __init__(self, directory: Path):
        self.model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.token_a, = self.tokenizer.encode("A", add_special_tokens=False)
        self.token_b, = self.tokenizer.encode("B", add_special_tokens=False)

    @torch.no_grad()
    def preference(self, turns: list[dict], a: str, b: str) -> float:
        context = self.tokenizer.apply_chat_template(turns, chat_template=PAIRPM_CONTEXT, tokenize=False)
        probs = []
        for chosen, (first, second) in enumerate([(a, b), (b, a)]):
            prompt = f"[CONTEXT] {context} [RESPONSE A] {first} [RESPONSE B] {second} \n"
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False)
            ids = self.tokenizer.encode(text.replace(self.tokenizer.bos_token, ""), return_tensors="pt",
                                        add_special_tokens=False)
            logits = self.model(ids).logits[0, -1]
            pair = [logits[self.token_a].item(), logits[self.token_b].item()]
            probs.append(math.exp(pair[chosen]) / (math.exp(pair[0]) + math.exp(pair[1])))
        return sum(probs) / 2
