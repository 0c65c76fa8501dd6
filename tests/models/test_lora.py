"""LoRA adapters over a loaded base model, every kind: the score of an item by an adapter is
PEFT's own forward's (PeftModel.from_pretrained on the base, read as the reward spec reads
it) within 1e-5 in float32, a sequence classifier's head is the adapter's (modules_to_save),
switching adapters never leaks into the base, and an adapter that does not fit its base, or
would leave a random head, fails the load naming itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from lora_helpers import (
    make_adapter,
    peft_forward,
    response_logp_sum,
    sequence_score,
    step_tag_rewards,
    token_step_rewards,
)
from tiny_models import SMALL, _llama_config, _llama_tokenizer, _save
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from models.errors import ModelLoadError
from models.inputs import StepsInput, TextPair
from models.reward_model import RewardModel

TOL = 1e-5
PAIRS = [TextPair("What is 2 + 2?", "4"), TextPair("Name a prime above 10.", "11 is prime, and so is 13."),
         TextPair("Say hi.", "Hello there, how can I help you today?")]
STEPS = [StepsInput("What is 3 + 4?", ("3 + 4 = 7.", "The answer is 7.")), StepsInput("1 + 1 = ?", ("2",))]


def _score_by(model: RewardModel, items, adapter: str | None):
    """Every item scored in one batch by `adapter`'s weights (None: the base's)."""
    batch = [model.encode(item) for item in items]
    for enc in batch:
        enc.adapter = adapter
    return model.forward(batch), batch


@pytest.fixture(scope="module")
def scalar(tiny_model_dirs, tmp_path_factory):
    """A Llama reward model and two SEQ_CLS adapters over it, each with its own score head."""
    root, base = tmp_path_factory.mktemp("lora-scalar"), tiny_model_dirs["llama-scalar"]
    adapters = {name: make_adapter(base, root / name, "SEQ_CLS", seed, modules_to_save=["score"])
                for name, seed in (("helpful", 1), ("harmless", 2))}
    return base, adapters, RewardModel.load("scalar", base, adapters=adapters)


def test_scalar_adapters_score_as_peft_and_never_leak(scalar):
    base, adapters, model = scalar
    base_alone, batch = _score_by(model, PAIRS, None)
    for name, directory in adapters.items():
        reference = peft_forward(base, directory, "SEQ_CLS")
        served, _ = _score_by(model, PAIRS, name)
        assert [o.score for o in served] == pytest.approx([sequence_score(reference, e) for e in batch], abs=TOL)
        assert [o.score for o in served] != pytest.approx([o.score for o in base_alone], abs=1e-3)
    plain = peft_forward(base, None, "SEQ_CLS")
    after, _ = _score_by(model, PAIRS, None)
    assert [o.score for o in after] == [o.score for o in base_alone]
    assert [o.score for o in after] == pytest.approx([sequence_score(plain, e) for e in batch], abs=TOL)
    assert set(model.info.adapters) == set(adapters)
    assert all(rev.startswith("sha256:") for rev in model.info.adapters.values())
    assert model.base_scores


def test_an_adapter_head_replaces_the_base_head(scalar):
    """A SEQ_CLS adapter's `score` (modules_to_save) is what reads the pooled state."""
    _, _, model = scalar
    score = model.torch_graph.model.score
    assert set(score.modules_to_save) == {"helpful", "harmless"}
    assert not (score.modules_to_save["helpful"].weight == score.original_module.weight).all()


def test_encoder_adapter_with_its_classifier(tiny_model_dirs, tmp_path):
    base = tiny_model_dirs["bert-scalar"]
    adapter = make_adapter(base, tmp_path / "bert", "SEQ_CLS", 3, target_modules=("query", "value"),
                           modules_to_save=["classifier"])
    model = RewardModel.load("bert", base, adapters={"graded": adapter})
    served, batch = _score_by(model, PAIRS, "graded")
    reference = peft_forward(base, adapter, "SEQ_CLS")
    assert [o.score for o in served] == pytest.approx([sequence_score(reference, e) for e in batch], abs=TOL)


def test_process_adapters(tiny_model_dirs, tmp_path):
    """A token classifier (its `score` saved) and a step-tag causal LM (read at the LM head's
    good/bad rows, which the adapter leaves alone)."""
    prm = tiny_model_dirs["qwen2-prm"]
    adapter = make_adapter(prm, tmp_path / "prm", "TOKEN_CLS", 4, modules_to_save=["score"])
    served, batch = _score_by(RewardModel.load("prm", prm, adapters={"a": adapter}), STEPS, "a")
    reference = peft_forward(prm, adapter, "TOKEN_CLS")
    for out, enc in zip(served, batch):
        assert out.step_rewards == pytest.approx(token_step_rewards(reference, enc), abs=TOL)

    tagged = tiny_model_dirs["mistral-prm"]
    adapter = make_adapter(tagged, tmp_path / "tagged", "CAUSAL_LM", 5)
    served, batch = _score_by(RewardModel.load("tagged", tagged, adapters={"a": adapter}), STEPS, "a")
    reference = peft_forward(tagged, adapter, "CAUSAL_LM")
    for out, enc in zip(served, batch):
        assert out.step_rewards == pytest.approx(step_tag_rewards(reference, enc, tagged, "-", "+"), abs=TOL)


def test_implicit_adapter_is_the_policy(tiny_model_dirs, tmp_path):
    """A DPO policy trained as a LoRA over its base: the log-probabilities are the adapter's."""
    base = tiny_model_dirs["mistral-prm"]
    adapter = make_adapter(base, tmp_path / "dpo", "CAUSAL_LM", 6, target_modules=("q_proj", "v_proj", "down_proj"))
    spec = {"kind": "implicit", "use_chat_template": False, "implicit": {"reduction": "sum"}}
    served, batch = _score_by(RewardModel.load("dpo", base, spec, adapters={"dpo": adapter}), PAIRS, "dpo")
    reference = peft_forward(base, adapter, "CAUSAL_LM")
    assert [o.score for o in served] == pytest.approx([response_logp_sum(reference, e) for e in batch], abs=1e-4)


def test_lm_head_adapter_refused_where_scores_are_lm_rows(tiny_model_dirs, tmp_path):
    base = tiny_model_dirs["mistral-prm"]
    adapter = make_adapter(base, tmp_path / "head", "CAUSAL_LM", 7, target_modules=("q_proj", "lm_head"))
    with pytest.raises(ModelLoadError, match="adapts the LM head"):
        RewardModel.load("tagged", base, adapters={"head": adapter})


@pytest.fixture(scope="module")
def plain_lm(tmp_path_factory) -> Path:
    """A causal LM checkpoint with no score head: the usual base of a reward LoRA (its
    config's num_labels is the head's width, 1, as the adapter was trained with)."""
    tok = _llama_tokenizer()
    return _save(tmp_path_factory.mktemp("plain") / "llama-lm", LlamaForCausalLM(_llama_config(tok, num_labels=1)),
                 tok, spec={"kind": "scalar"})


def test_adapter_head_over_a_headless_base(plain_lm, tmp_path):
    """The head comes from the adapter only: served as PEFT reads it, and the base scores nothing."""
    adapter = make_adapter(plain_lm, tmp_path / "rm", "SEQ_CLS", 8, modules_to_save=["score"])
    model = RewardModel.load("rm", plain_lm, adapters={"rm": adapter})
    assert not model.base_scores
    served, batch = _score_by(model, PAIRS, "rm")
    reference = peft_forward(plain_lm, adapter, "SEQ_CLS")
    assert [o.score for o in served] == pytest.approx([sequence_score(reference, e) for e in batch], abs=TOL)


def test_random_head_refused(plain_lm, tmp_path):
    """An adapter without the head over a base without one: the head would stay random."""
    adapter = make_adapter(plain_lm, tmp_path / "nohead", "CAUSAL_LM", 9)
    with pytest.raises(ModelLoadError, match=r"adapter 'nohead'.*score\.weight.*random"):
        RewardModel.load("rm", plain_lm, adapters={"nohead": adapter})


def test_mismatched_adapters_refused(tiny_model_dirs, tmp_path):
    base = tiny_model_dirs["llama-scalar"]
    tok = _llama_tokenizer()
    wider = LlamaConfig(**{**SMALL, "hidden_size": 96}, vocab_size=len(tok), num_labels=1)
    other = _save(tmp_path / "wider", LlamaForSequenceClassification(wider), tok, spec=None)
    misfit = make_adapter(other, tmp_path / "misfit", "SEQ_CLS", 10, modules_to_save=["score"])
    with pytest.raises(ModelLoadError, match=r"(?s)adapter 'misfit'.*does not fit.*size mismatch"):
        RewardModel.load("scalar", base, adapters={"misfit": misfit})

    elsewhere = shutil.copytree(make_adapter(base, tmp_path / "ok", "SEQ_CLS", 11), tmp_path / "elsewhere")
    config = json.loads((elsewhere / "adapter_config.json").read_text())
    (elsewhere / "adapter_config.json").write_text(json.dumps(config | {"target_modules": ["nope_proj"]}))
    with pytest.raises(ModelLoadError, match=r"adapter 'elsewhere'.*does not fit"):
        RewardModel.load("scalar", base, adapters={"elsewhere": elsewhere})

    with pytest.raises(ModelLoadError, match=r"adapter 'missing'.*adapter_config.json"):
        RewardModel.load("scalar", base, adapters={"missing": tmp_path})
