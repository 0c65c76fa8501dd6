"""Tiny random-weight checkpoints in the exact layout of published reward models: their
architecture classes, config keys, tensor names, sharding, remote code (`auto_map`) and
tokenizers (real ones where a package ships them, see tokenizers.py). Only the sizes are
small. Each builder writes one directory and returns it."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    DebertaV2Model,
    Gemma2Config,
    Gemma2ForSequenceClassification,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    LlamaModel,
    MistralConfig,
    MistralForCausalLM,
    MistralModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Model,
    Qwen3Config,
    Qwen3ForSequenceClassification,
)

from model_cards import tokenizers

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, initializer_range=0.2)
STEERLM_ATTRIBUTES = ["quality", "toxicity", "humor", "creativity",
                      "helpfulness", "correctness", "coherence", "complexity", "verbosity"]
STEERLM_WEIGHTS = [0, 0, 0, 0, 0.3, 0.74, 0.46, 0.47, -0.33]  # Nemotron-4-340B-Reward's card


def template(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text()


def _remote_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save(out: Path, model, tokenizer, generation: GenerationConfig | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if generation is not None:
        generation.save_pretrained(out)
    return out


def _write_shards(out: Path, tensors: dict[str, torch.Tensor], shards: int) -> None:
    """The checkpoint as `model-0000i-of-0000n.safetensors` plus an index, as the big
    published checkpoints are laid out."""
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n].contiguous() for n in names[i::shards]}
        save_file(part, str(out / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))


# ---- Skywork ----------------------------------------------------------------------------


def skywork_llama31(out: Path) -> Path:
    """Skywork-Reward-Llama-3.1-8B-v0.2: LlamaForSequenceClassification, one label, a [PAD]
    token appended to the Llama-3 vocabulary (pad_token_id 128256, vocab 128257), the Llama
    3.1 chat template with its BOS removed (the tokenizer adds it)."""
    tok = tokenizers.llama3(template("llama-3.1").replace("{{- bos_token }}\n", "", 1), pad="[PAD]")
    config = LlamaConfig(vocab_size=len(tok), num_labels=1, pad_token_id=tok.pad_token_id, bos_token_id=128000,
                         eos_token_id=[128001, 128008, 128009], max_position_embeddings=131072,
                         tie_word_embeddings=False, **TINY)
    return _save(out, LlamaForSequenceClassification(config), tok)


def skywork_qwen3(out: Path) -> Path:
    """Skywork-Reward-V2-Qwen3: Qwen3ForSequenceClassification, the stock Qwen3 tokenizer and
    template (pad <|endoftext|>, no BOS), vocabulary rows 151936."""
    tok = tokenizers.qwen(tokenizers.qwen3_template())
    config = Qwen3Config(vocab_size=151936, num_labels=1, pad_token_id=tok.pad_token_id, head_dim=16,
                         max_position_embeddings=40960, tie_word_embeddings=True, **TINY)
    return _save(out, Qwen3ForSequenceClassification(config), tok)


def skywork_gemma2(out: Path) -> Path:
    """Skywork-Reward-Gemma-2-27B-v0.2: Gemma2ForSequenceClassification with attention
    soft-capping and sliding windows, pad <pad> = 0, the Gemma 2 template without its BOS."""
    tok = tokenizers.gemma(template("gemma-2").replace("{{ bos_token }}", "", 1), out)
    config = Gemma2Config(vocab_size=len(tok), num_labels=1, pad_token_id=0, bos_token_id=2, eos_token_id=1,
                          head_dim=16, query_pre_attn_scalar=16, attn_logit_softcapping=50.0,
                          final_logit_softcapping=30.0, sliding_window=8, max_position_embeddings=8192, **TINY)
    return _save(out, Gemma2ForSequenceClassification(config), tok)


# ---- OpenAssistant ------------------------------------------------------------------------


def oasst_deberta(out: Path) -> Path:
    """OpenAssistant/reward-model-deberta-v3-large-v2: DebertaV2ForSequenceClassification,
    one label, relative attention, no token type embeddings; a SentencePiece tokenizer with
    DeBERTa-v3's special tokens and ids."""
    tok = tokenizers.deberta_v3(out)
    config = DebertaV2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_labels=1, relative_attention=True, position_buckets=32,
                             norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"],
                             position_biased_input=False, type_vocab_size=0, max_position_embeddings=512,
                             pooler_hidden_size=64, pad_token_id=0, initializer_range=0.2)
    return _save(out, DebertaV2ForSequenceClassification(config), tok)


# ---- ArmoRM ------------------------------------------------------------------------------


def armorm(out: Path) -> Path:
    """RLHFlow/ArmoRM-Llama3-8B-v0.1: LlamaForRewardModelWithGating (remote code
    modeling_custom.py via auto_map), 19 objectives, a 4-layer gating MLP with temperature 10
    and a trained logit_scale, a trained (non-identity) reward_transform_matrix, [PAD] 128256,
    the Llama 3 template; four shards."""
    remote = _remote_module(HERE / "remote_code" / "armorm_modeling_custom.py", "armorm_modeling_custom")
    tok = tokenizers.llama3(template("llama-3"), eos="<|end_of_text|>", pad="[PAD]")
    config = LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=128000,
                         eos_token_id=128001, max_position_embeddings=8192, tie_word_embeddings=False, **TINY)
    config.update(dict(num_objectives=19, gating_temperature=10, gating_hidden_dim=32, gating_n_hidden=3))
    model = remote.LlamaForRewardModelWithGating(config)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for layer in model.gating.layers:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.25)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * 0.1)
        model.regression_layer.weight.copy_(torch.randn(model.regression_layer.weight.shape, generator=gen) * 0.3)
        model.gating.logit_scale.fill_(1.7)
        model.reward_transform_matrix.copy_(torch.eye(19) + 0.2 * torch.randn(19, 19, generator=gen))
    model.config.auto_map = {"AutoModelForSequenceClassification": "modeling_custom.LlamaForRewardModelWithGating"}
    _save(out, model, tok)
    shutil.copy(HERE / "remote_code" / "armorm_modeling_custom.py", out / "modeling_custom.py")
    single = out / "model.safetensors"
    tensors = load_file(str(single))
    single.unlink()
    _write_shards(out, tensors, 4)
    return out


# ---- Nemotron -----------------------------------------------------------------------------


def nemotron_70b_reward_hf(out: Path) -> Path:
    """nvidia/Llama-3.1-Nemotron-70B-Reward-HF: a LlamaForCausalLM whose reward is the logit
    of vocabulary entry 0 at the last token; its generation_config (greedy, pad 128001); the
    Llama 3.1 template."""
    tok = tokenizers.llama3(template("llama-3.1"))
    config = LlamaConfig(vocab_size=128256, bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
                         max_position_embeddings=131072, tie_word_embeddings=False, **TINY)
    generation = GenerationConfig(bos_token_id=128000, do_sample=False, eos_token_id=[128001, 128008, 128009],
                                  pad_token_id=128001)
    return _save(out, LlamaForCausalLM(config), tok, generation)


def nemotron_steerlm(out: Path) -> Path:
    """A Nemotron / SteerLM multi-attribute regression RM as a Hugging Face checkpoint:
    LlamaForSequenceClassification with the 9 SteerLM outputs (id2label names them), the
    Llama 3.1 template, and pad = <|eot_id|>, which makes transformers read the token before
    the closing <|eot_id|>."""
    tok = tokenizers.llama3(template("llama-3.1"), pad="<|eot_id|>")
    config = LlamaConfig(vocab_size=len(tok), num_labels=len(STEERLM_ATTRIBUTES), pad_token_id=tok.pad_token_id,
                         id2label=dict(enumerate(STEERLM_ATTRIBUTES)), bos_token_id=128000, eos_token_id=128009,
                         max_position_embeddings=131072, tie_word_embeddings=False, **TINY)
    return _save(out, LlamaForSequenceClassification(config), tok)


# ---- process reward models ------------------------------------------------------------------


def qwen25_math_prm(out: Path) -> Path:
    """Qwen/Qwen2.5-Math-PRM-7B: Qwen2ForProcessRewardModel (remote code via auto_map: AutoConfig
    configuration_qwen2_rm.Qwen2RMConfig, AutoModel modeling_qwen2_rm), `score` = Linear, ReLU,
    Linear(H, 2), no num_labels or pad_token_id in config.json, an lm_head.weight the model
    never reads, <extra_0> = 151651, vocabulary rows 152064; four shards."""
    tok = tokenizers.qwen(template("qwen2.5-math-prm"), through="<|file_sep|>", rename={"<|quad_end|>": "<extra_0>"},
                          pad=None)
    config = Qwen2Config(vocab_size=152064, bos_token_id=151643, eos_token_id=151645, max_position_embeddings=4096,
                         tie_word_embeddings=False, **TINY)
    hidden = config.hidden_size
    score = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2))
    for layer in (score[0], score[2]):
        nn.init.normal_(layer.weight, std=0.12)
        nn.init.normal_(layer.bias, std=0.1)
    tensors = {**{f"model.{k}": v for k, v in Qwen2Model(config).state_dict().items()},
               **{f"score.{k}": v for k, v in score.state_dict().items()},
               "lm_head.weight": torch.randn(config.vocab_size, hidden) * 0.02}
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    published = {k: v for k, v in json.loads((out / "config.json").read_text()).items()
                 if k not in ("num_labels", "id2label", "label2id", "pad_token_id")}
    published.update(architectures=["Qwen2ForProcessRewardModel"],
                     auto_map={"AutoConfig": "configuration_qwen2_rm.Qwen2RMConfig",
                               "AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"})
    (out / "config.json").write_text(json.dumps(published, indent=2, sort_keys=True))
    shutil.copy(HERE / "remote_code" / "qwen_prm_configuration.py", out / "configuration_qwen2_rm.py")
    shutil.copy(HERE / "remote_code" / "qwen_prm_modeling.py", out / "modeling_qwen2_rm.py")
    tok.save_pretrained(out)
    _write_shards(out, tensors, 4)
    return out


def math_shepherd(out: Path) -> Path:
    """peiyi9979/math-shepherd-mistral-7b-prm: MistralForCausalLM with the Mistral v0.1
    SentencePiece tokenizer (no pad token); steps are read at `ки` (12902) from the logits of
    `+` (648) and `-` (387)."""
    tok = tokenizers.mistral_v01(out)
    config = MistralConfig(vocab_size=32000, bos_token_id=1, eos_token_id=2, max_position_embeddings=32768,
                           sliding_window=4096, tie_word_embeddings=False, **TINY)
    return _save(out, MistralForCausalLM(config), tok)


# ---- OpenRLHF ------------------------------------------------------------------------------


def _openrlhf(out: Path, base, tok, value_head: str, moments: tuple[float, float]) -> Path:
    """A reward model as OpenRLHF's training saves it (get_llm_for_sequence_regression): the
    base model's tensors under its base_model_prefix, a [1, hidden] value head without bias,
    config.json with its RewardModel class, `normalize_reward` false and the reward `mean`
    and `std` of its evaluation; pad = EOS where the tokenizer has none (get_tokenizer)."""
    out.mkdir(parents=True, exist_ok=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    gen = torch.Generator().manual_seed(7)
    tensors = {f"{base.base_model_prefix}.{k}": v for k, v in base.state_dict().items()}
    tensors[f"{value_head}.weight"] = torch.randn(1, base.config.hidden_size, generator=gen) * 0.3
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = base.config.to_dict()
    config.update(architectures=["RewardModel"], normalize_reward=False, mean=moments[0], std=moments[1],
                  pad_token_id=tok.pad_token_id)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    tok.save_pretrained(out)
    return out


def openrlhf_llama3(out: Path) -> Path:
    """OpenRLHF/Llama-3-8b-rm-700k: LlamaModel tensors under `model.`, `value_head.weight`,
    the Llama 3 tokenizer and template with EOS <|eot_id|> and no pad token of its own."""
    tok = tokenizers.llama3(template("llama-3"))
    config = LlamaConfig(vocab_size=128256, bos_token_id=128000, eos_token_id=128009, max_position_embeddings=8192,
                         **TINY)
    return _openrlhf(out, LlamaModel(config), tok, "value_head", (0.37, 2.11))


def openrlhf_qwen2(out: Path) -> Path:
    """A Qwen2 reward model trained by newer OpenRLHF releases: the value head named `score`."""
    tok = tokenizers.qwen(tokenizers.qwen3_template(), through="<|file_sep|>")
    config = Qwen2Config(vocab_size=151936, bos_token_id=151643, eos_token_id=151645, max_position_embeddings=4096,
                         **TINY)
    return _openrlhf(out, Qwen2Model(config), tok, "score", (-0.52, 1.43))


def openrlhf_mistral(out: Path) -> Path:
    """A Mistral-7B-v0.1 reward model trained by OpenRLHF: its SentencePiece tokenizer (no pad
    token, so pad = </s>), `value_head.weight`."""
    tok = tokenizers.mistral_v01(out)
    config = MistralConfig(vocab_size=32000, bos_token_id=1, eos_token_id=2, max_position_embeddings=32768,
                           sliding_window=4096, **TINY)
    return _openrlhf(out, MistralModel(config), tok, "value_head", (1.25, 0.8))


# ---- label-token judges ------------------------------------------------------------------


def qwen2_judge(out: Path) -> Path:
    """A causal LM read as a judge (spec label_tokens: Yes / No, the default question): Qwen2
    with embeddings tied, so the LM head is the embedding, Qwen's tokenizer and template."""
    tok = tokenizers.qwen(tokenizers.qwen3_template(), through="<|file_sep|>")
    config = Qwen2Config(vocab_size=151936, max_position_embeddings=4096, tie_word_embeddings=True,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **TINY)
    torch.manual_seed(3)
    _save(out, Qwen2ForCausalLM(config), tok)
    (out / "reward_spec.yaml").write_text("kind: scalar\nlabel_tokens:\n  labels: [\"Yes\", \"No\"]\n")
    return out


# ---- pairwise preference models -----------------------------------------------------------

PAIRRM_TOKENS = ["<|source|>", "<|candidate1|>", "<|candidate2|>", "<|candidate|>"]


def pairrm(out: Path) -> Path:
    """llm-blender/PairRM-hf: a DeBERTa-v3 backbone under `pretrained_model.` and the head MLP
    `head_layer` (dropout, Linear(2H, H), tanh, dropout, Linear(H, n_tasks)) in one safetensors
    file, config.json of architecture DebertaV2PairRM with the prefix tokens' ids, the
    tokenizer with <|source|>, <|candidate1|>, <|candidate2|> and <|candidate|> added."""
    tok = tokenizers.deberta_v3(out)
    tok.add_special_tokens({"additional_special_tokens": PAIRRM_TOKENS})
    ids = tok.convert_tokens_to_ids(PAIRRM_TOKENS)
    config = DebertaV2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, relative_attention=True, position_buckets=32,
                             norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"],
                             position_biased_input=False, type_vocab_size=0, max_position_embeddings=512,
                             pad_token_id=0, initializer_range=0.2, architectures=["DebertaV2PairRM"], n_tasks=1,
                             drop_out=0.05, source_prefix_id=ids[0], cand1_prefix_id=ids[1], cand2_prefix_id=ids[2],
                             cand_prefix_id=ids[3], sep_token_id=tok.sep_token_id)
    torch.manual_seed(5)
    width = config.hidden_size
    model = nn.Module()
    model.pretrained_model = DebertaV2Model(config)
    model.head_layer = nn.Sequential(nn.Dropout(0.05), nn.Linear(2 * width, width), nn.Tanh(), nn.Dropout(0.05),
                                     nn.Linear(width, config.n_tasks))
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    config.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def pair_judge_llama3(out: Path) -> Path:
    """RLHFlow/pair-preference-model-LLaMA3-8B's layout: a LlamaForCausalLM asked which of two
    responses is better, answered by its "A" and "B" tokens; the Llama 3 tokenizer and template."""
    tok = tokenizers.llama3(template("llama-3"))
    config = LlamaConfig(vocab_size=128256, bos_token_id=128000, eos_token_id=128009, max_position_embeddings=8192,
                         tie_word_embeddings=False, **TINY)
    torch.manual_seed(7)
    return _save(out, LlamaForCausalLM(config), tok)


BUILDERS = {
    "skywork-llama31": skywork_llama31,
    "skywork-qwen3": skywork_qwen3,
    "skywork-gemma2": skywork_gemma2,
    "oasst-deberta": oasst_deberta,
    "armorm": armorm,
    "nemotron-70b-reward-hf": nemotron_70b_reward_hf,
    "nemotron-steerlm": nemotron_steerlm,
    "qwen2.5-math-prm": qwen25_math_prm,
    "math-shepherd": math_shepherd,
}
# reward models trained by OpenRLHF, served as its serve_rm serves them (tests/models/test_openrlhf.py)
OPENRLHF_BUILDERS = {
    "openrlhf-llama3": openrlhf_llama3,
    "openrlhf-qwen2": openrlhf_qwen2,
    "openrlhf-mistral": openrlhf_mistral,
}
