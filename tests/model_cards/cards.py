"""Each family's model card usage code, re-implemented as the reference: how the card loads
the checkpoint (transformers alone, remote code where the card trusts it), builds the input
of one conversation and reads its numbers. Nothing of rewardserve is used here.

A card turns a conversation into token ids (`tokenize`) and token ids into numbers (`read`),
so the tests can also send the card's own ids to the server as an `input_ids` item."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

Conversation = list[dict]  # chat messages, the last one the assistant response


@dataclass
class Expected:
    score: float | None  # process models: None, the served aggregate of step_rewards is checked
    dimensions: list[float] | None = None
    gating_weights: list[float] | None = None
    step_rewards: list[float] | None = None


class Card:
    """Loads the checkpoint as the card does, once."""

    auto = AutoModelForSequenceClassification
    remote = False

    def __init__(self, directory: Path):
        self.directory = directory

    @functools.cached_property
    def tokenizer(self):
        return AutoTokenizer.from_pretrained(self.directory, trust_remote_code=self.remote)

    @functools.cached_property
    def model(self):
        return self.auto.from_pretrained(self.directory, dtype=torch.float32, trust_remote_code=self.remote).eval()

    def forward(self, ids: list[int], **extra):
        with torch.no_grad():
            return self.model(input_ids=torch.tensor([ids]), **extra)


class SkyworkCard(Card):
    """Skywork-Reward v0.1/v0.2 (GitHub README): render with the (BOS-less) template, let the
    tokenizer add its special tokens, read logits[0][0]."""

    def tokenize(self, conversation: Conversation) -> list[int]:
        formatted = self.tokenizer.apply_chat_template(conversation, tokenize=False)
        return self.tokenizer(formatted)["input_ids"]

    def read(self, ids: list[int]) -> Expected:
        return Expected(self.forward(ids).logits[0][0].item())


class SkyworkV2Card(SkyworkCard):
    """Skywork-Reward-V2: the same, first removing a BOS the template wrote."""

    def tokenize(self, conversation: Conversation) -> list[int]:
        formatted = self.tokenizer.apply_chat_template(conversation, tokenize=False)
        bos = self.tokenizer.bos_token
        if bos is not None and formatted.startswith(bos):
            formatted = formatted[len(bos):]
        return self.tokenizer(formatted)["input_ids"]


class OpenAssistantCard(Card):
    """reward-model-deberta-v3-large-v2: tokenizer(question, answer), logits[0]."""

    def tokenize(self, conversation: Conversation) -> list[int]:
        (question,), answer = [m["content"] for m in conversation[:-1]], conversation[-1]["content"]
        return self.tokenizer(question, answer)["input_ids"]

    def read(self, ids: list[int]) -> Expected:
        sep = self.tokenizer.sep_token_id
        second = ids.index(sep) + 1
        types = torch.tensor([[0] * second + [1] * (len(ids) - second)])
        return Expected(self.forward(ids, token_type_ids=types).logits[0].item())


class ArmoRMCard(Card):
    """ArmoRM-Llama3-8B-v0.1: AutoModelForSequenceClassification with trust_remote_code,
    apply_chat_template(messages) tokenized, output.rewards / gating_output / score."""

    remote = True

    def tokenize(self, conversation: Conversation) -> list[int]:
        return self.tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]

    def read(self, ids: list[int]) -> Expected:
        output = self.forward(ids)
        return Expected(output.score[0].item(), output.rewards[0].tolist(), output.gating_output[0].tolist())


class NemotronRewardCard(Card):
    """Llama-3.1-Nemotron-70B-Reward-HF: AutoModelForCausalLM, the chat tokenized with
    add_generation_prompt=False, generate one token with output_scores, scores[0][0][0]."""

    auto = AutoModelForCausalLM

    def tokenize(self, conversation: Conversation) -> list[int]:
        return self.tokenizer.apply_chat_template(conversation, tokenize=True, add_generation_prompt=False,
                                                  return_dict=True)["input_ids"]

    def read(self, ids: list[int]) -> Expected:
        with torch.no_grad():
            out = self.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      max_new_tokens=1, return_dict_in_generate=True, output_scores=True)
        return Expected(out["scores"][0][0][0].item())


class SteerLMCard(NemotronRewardCard):
    """A SteerLM/Nemotron multi-attribute regression RM: the attribute logits of the chat,
    combined with the card's recommended weights by elementwise multiplication."""

    auto = AutoModelForSequenceClassification

    def __init__(self, directory: Path, weights: list[float]):
        super().__init__(directory)
        self.weights = torch.tensor(weights)

    def read(self, ids: list[int]) -> Expected:
        attributes = self.forward(ids).logits[0]
        return Expected((attributes * self.weights).sum().item(), attributes.tolist())


class QwenMathPRMCard(Card):
    """Qwen2.5-Math-PRM: AutoModel with trust_remote_code; the system prompt, the query, the
    steps joined and ended by <extra_0>; tokenizer.encode of the rendered chat; P(positive)
    at each <extra_0> (make_step_rewards)."""

    auto = AutoModel
    remote = True
    system = "Please reason step by step, and put your final answer within \\boxed{}."

    def tokenize(self, question: str, steps: list[str]) -> list[int]:
        messages = [{"role": "system", "content": self.system}, {"role": "user", "content": question},
                    {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}]
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        return self.tokenizer.encode(rendered)

    def read(self, ids: list[int]) -> Expected:
        input_ids = torch.tensor([ids])
        logits = self.forward(ids)[0]
        token_masks = input_ids == self.tokenizer.encode("<extra_0>")[0]
        probabilities = F.softmax(logits, dim=-1) * token_masks.unsqueeze(-1)
        sample = probabilities[0]
        rewards = sample[sample != 0].view(-1, 2)[:, 1].tolist()
        return Expected(None, step_rewards=rewards)


class MathShepherdCard(Card):
    """math-shepherd-mistral-7b-prm: f"{question} {output}" with ` ки` closing each step and a
    newline between steps, softmax over the logits of '+' and '-' at each ки, P('+')."""

    auto = AutoModelForCausalLM

    def tokenize(self, question: str, steps: list[str]) -> list[int]:
        output = " ки\n".join(steps) + " ки"
        return self.tokenizer.encode(f"{question} {output}")

    def read(self, ids: list[int]) -> Expected:
        candidate_tokens = self.tokenizer.encode("+ -")[1:]
        step_tag_id = self.tokenizer.encode("ки")[-1]
        input_id = torch.tensor([ids])
        logits = self.forward(ids).logits[:, :, candidate_tokens]
        scores = logits.softmax(dim=-1)[:, :, 0]
        return Expected(None, step_rewards=scores[input_id == step_tag_id].tolist())
