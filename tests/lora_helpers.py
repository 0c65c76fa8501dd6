"""LoRA adapters made with PEFT itself over the tiny base models (tests/tiny_models.py), and
their scores read by PEFT's own forward: what served adapter scores are compared with."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from models.encoding import single_token_id
from models.heads import step_probabilities
from models.inputs import Encoded

AUTO = {"SEQ_CLS": AutoModelForSequenceClassification, "TOKEN_CLS": AutoModelForTokenClassification,
        "CAUSAL_LM": AutoModelForCausalLM}


def make_adapter(base: Path, out: Path, task_type: str, seed: int, target_modules=("q_proj", "v_proj"),
                 modules_to_save: list[str] | None = None, auto=None) -> Path:
    """A LoRA adapter over `base` with random, non-zero weights (so it changes every score),
    saved by PEFT; a head in `modules_to_save` is perturbed away from the base's too."""
    torch.manual_seed(seed)
    model = (auto or AUTO[task_type]).from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(task_type=task_type, r=4, lora_alpha=8, target_modules=list(target_modules),
                        modules_to_save=modules_to_save, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".modules_to_save." in name:
                param.add_(torch.randn_like(param) * 0.5)
    peft_model.save_pretrained(out)
    return out


def peft_forward(base: Path, adapter: Path | None, task_type: str):
    """The base (or the base and `adapter`) as PEFT loads it for inference, in float32."""
    model = AUTO[task_type].from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()


@torch.inference_mode()
def sequence_score(model, enc: Encoded) -> float:
    """A sequence classifier's score of one unpadded item, as transformers reads it."""
    ids = torch.tensor([enc.input_ids])
    types = {"token_type_ids": torch.tensor([enc.token_type_ids])} if enc.token_type_ids else {}
    return model(input_ids=ids, attention_mask=torch.ones_like(ids), **types).logits[0, 0].item()


@torch.inference_mode()
def token_step_rewards(model, enc: Encoded) -> list[float]:
    """A token classifier's P(good) at each step marker of one item."""
    logits = model(input_ids=torch.tensor([enc.input_ids])).logits[0]
    return step_probabilities(logits[enc.marker_positions]).tolist()


@torch.inference_mode()
def step_tag_rewards(model, enc: Encoded, base: Path, bad: str, good: str) -> list[float]:
    """A causal LM's P(good) against P(bad) at each step tag (Math-Shepherd's reading)."""
    tok = AutoTokenizer.from_pretrained(base)
    ids = [single_token_id(tok, token, token) for token in (bad, good)]
    logits = model(input_ids=torch.tensor([enc.input_ids])).logits[0]
    return step_probabilities(logits[enc.marker_positions][:, ids]).tolist()


@torch.inference_mode()
def response_logp_sum(model, enc: Encoded) -> float:
    """The sum of a causal LM's log-probabilities of an item's response tokens."""
    ids = torch.tensor([enc.input_ids])
    logps = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
    return logps[enc.prompt_length - 1:].double().sum().item()
