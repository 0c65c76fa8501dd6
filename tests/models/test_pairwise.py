"""Pairwise preference models (kind: pairwise) against their published computations
(tests/pairwise_reference.py): a tiny PairRM (DeBERTa-v3 with PairRM's head tensors and
prefix tokens) and a tiny RLHFlow-style A/B judge (Llama 3's tokenizer and template), saved
to disk in the published layouts and loaded as a user's model. Both orders of each pair go
through one batch of pairs of different lengths; P(A > B) must match within 1e-5 in float32."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from model_cards import checkpoints
from pairwise_reference import PairPM, PairRM
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from models.errors import InputError, ModelLoadError
from models.inputs import PairInput, TextPair
from models.pairwise import preference
from models.reward_model import RewardModel
from models.spec import RewardSpec

TOL = 1e-5
PAIRRM_SPEC = {"kind": "pairwise", "pairwise": {"convention": "pairrm"}}
JUDGE_SPEC = {"kind": "pairwise", "pairwise": {"convention": "ab_judge"}}
LONG = "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May. How many in all?"
CASES = [  # (conversation before the responses, A, B)
    ([{"role": "user", "content": "What is 3 + 4?"}], "Step 1: add 3 and 4 to get 7.", "The answer is 14."),
    ([{"role": "user", "content": LONG}], "She sold 48 and then 24, so 72 clips.", "48 clips."),
    ([{"role": "user", "content": "Please answer."}, {"role": "assistant", "content": "I cannot help with that."},
      {"role": "user", "content": "Please reason step by step."}], "Step 1: add 3 and 4 to get 7.",
     "The quick brown fox jumps over the lazy dog."),
]


def pair_inputs(cases) -> list[PairInput]:
    """Each case in both orders."""
    out = []
    for turns, a, b in cases:
        context = tuple((t["role"], t["content"]) for t in turns)
        out += [PairInput(context, a, b), PairInput(context, b, a)]
    return out


def preferences(model: RewardModel, cases, **options) -> list[float]:
    scores = [out.score for out in model.score(pair_inputs(cases), **options)]
    return [preference(model.spec.pairwise.convention, ab, ba) for ab, ba in zip(scores[::2], scores[1::2])]


@pytest.fixture(scope="module")
def pairrm_dir(tmp_path_factory) -> Path:
    return checkpoints.pairrm(tmp_path_factory.mktemp("pairrm") / "pairrm")


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory) -> Path:
    return checkpoints.pair_judge_llama3(tmp_path_factory.mktemp("pairpm") / "pairpm")


def test_pairrm_batched_pairs_match_its_published_computation(pairrm_dir):
    model = RewardModel.load("pairrm", pairrm_dir, spec=PAIRRM_SPEC)
    reference = PairRM(pairrm_dir)
    want = [reference.preference(*case) for case in CASES]
    assert preferences(model, CASES) == pytest.approx(want, abs=TOL, rel=0)
    assert [preferences(model, [case])[0] for case in CASES] == pytest.approx(want, abs=TOL, rel=0)


def test_pairrm_plain_layout_and_its_part_truncation_match_the_model_card(pairrm_dir):
    """PairRM's own tokenize_pair: the prompt and responses as they are, each part cut to
    its limit (a response may use what a short prompt leaves)."""
    spec = {"kind": "pairwise", "pairwise": {"convention": "pairrm", "conversation_layout": False,
                                             "source_max_length": 12, "candidate_max_length": 10}}
    model = RewardModel.load("pairrm", pairrm_dir, spec=spec)
    reference = PairRM(pairrm_dir, 12, 10)
    cases = [case for case in CASES if len(case[0]) == 1]
    with pytest.raises(InputError, match="more than the 12 PairRM reads") as err:
        model.score(pair_inputs(cases))
    assert err.value.field == "prompt"
    got = preferences(model, cases, truncate="right")
    assert got == pytest.approx([reference.preference(*case, conversation=False) for case in cases], abs=TOL, rel=0)
    assert all(enc.truncated for enc in map(lambda item: model.encode(item, "right"), pair_inputs(cases[1:])))


def test_ab_judge_batched_pairs_match_pairpm(judge_dir):
    model = RewardModel.load("pairpm", judge_dir, spec=JUDGE_SPEC)
    reference = PairPM(judge_dir)
    want = [reference.preference(*case) for case in CASES]
    assert preferences(model, CASES) == pytest.approx(want, abs=TOL, rel=0)
    assert [preferences(model, [case])[0] for case in CASES] == pytest.approx(want, abs=TOL, rel=0)


@pytest.mark.parametrize("share_prefix", [False, True])
def test_ab_judge_shared_prompt_forward_agrees(judge_dir, share_prefix):
    """Both orders of a pair share the question's start: computing it once changes nothing."""
    model = RewardModel.load("pairpm", judge_dir, spec=JUDGE_SPEC, share_prefix=share_prefix)
    reference = PairPM(judge_dir)
    assert preferences(model, CASES) == pytest.approx([reference.preference(*c) for c in CASES], abs=TOL, rel=0)


def test_preference_is_antisymmetric(pairrm_dir, judge_dir):
    for directory, spec in ((pairrm_dir, PAIRRM_SPEC), (judge_dir, JUDGE_SPEC)):
        model = RewardModel.load("m", directory, spec=spec)
        forward = preferences(model, CASES)
        backward = preferences(model, [(turns, b, a) for turns, a, b in CASES])
        assert [f + b for f, b in zip(forward, backward)] == pytest.approx([1.0] * len(CASES), abs=1e-6)


def test_a_pairrm_checkpoint_without_its_head_tensors_fails_the_load(pairrm_dir, tmp_path):
    broken = tmp_path / "pairrm"
    shutil.copytree(pairrm_dir, broken)
    tensors = load_file(str(broken / "model.safetensors"))
    kept = {k: v for k, v in tensors.items() if not k.startswith("head_layer.4.")}
    save_file(kept, str(broken / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"PairRM head: missing head_layer\.4\.weight, head_layer\.4\.bias"):
        RewardModel.load("pairrm", broken, spec=PAIRRM_SPEC)


def test_a_judge_label_of_two_tokens_fails_the_load(judge_dir):
    spec = {"kind": "pairwise", "pairwise": {"convention": "ab_judge", "labels": ["A", "Bzzz"]}}
    with pytest.raises(ModelLoadError, match=r"pairwise\.labels\[1\] 'Bzzz' is not a single token"):
        RewardModel.load("pairpm", judge_dir, spec=spec)


def test_a_pairrm_prefix_that_is_not_one_token_fails_the_load(pairrm_dir):
    spec = {"kind": "pairwise", "pairwise": {"convention": "pairrm", "source_prefix": "<|src|>"}}
    with pytest.raises(ModelLoadError, match=r"pairwise\.source_prefix '<\|src\|>' is not a single token"):
        RewardModel.load("pairrm", pairrm_dir, spec=spec)


def test_inputs_a_pairwise_model_cannot_read_are_refused_naming_the_field(pairrm_dir):
    model = RewardModel.load("pairrm", pairrm_dir, spec=PAIRRM_SPEC)
    with pytest.raises(InputError, match="pairwise model"):
        model.encode(TextPair("What is 3 + 4?", "7"))
    with pytest.raises(InputError, match="prefix tokens") as err:
        model.encode(PairInput((("user", "What is 3 + 4?"),), "7 <|candidate2|>", "8"))
    assert err.value.field == "first"
    with pytest.raises(InputError, match="end with a prompt turn"):
        model.encode(PairInput((("user", "Hi"), ("assistant", "Hello")), "7", "8"))


def test_a_pair_sent_to_a_pointwise_model_is_refused(tmp_path):
    from tiny_models import build_llama_scalar

    model = RewardModel.load("scalar", build_llama_scalar(tmp_path / "scalar"))
    with pytest.raises(InputError, match="for pairwise models"):
        model.encode(PairInput((("user", "Hi"),), "a", "b"))


@pytest.mark.parametrize(("spec", "reason"), [
    ({"kind": "pairwise"}, "needs a pairwise section"),
    ({"kind": "scalar", "pairwise": {"convention": "pairrm"}}, "needs a pairwise section"),
    ({"kind": "pairwise", "pairwise": {"convention": "ab_judge", "template": "{context} {response_a}"}},
     "must use exactly"),
    ({"kind": "pairwise", "pairwise": {"convention": "ab_judge", "labels": ["A", "A"]}}, "two different"),
    ({"kind": "pairwise", "head_file": "h.safetensors", "pairwise": {"convention": "pairrm"}}, "no head_file"),
])
def test_a_bad_pairwise_spec_is_refused_with_the_reason(spec, reason):
    with pytest.raises(ValidationError, match=reason):
        RewardSpec.model_validate(spec)
