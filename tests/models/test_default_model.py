"""The embedded default models (models/builtin) load through the serving path, give finite,
batch-independent scores, and reproduce the held-out figures their training reported
(models/builtin/heldout.json, shown in models/README.md) on records their training never saw
(see training/reward_data.py for the split)."""

from __future__ import annotations

import math
import statistics

import pytest
from paths import DATA, ROOT

from models.inputs import StepsInput, TextPair
from models.reward_model import RewardModel
from models.spec import ModelKind
from training.heldout import as_text, harmless_figures, in_length_order, multi_figures, prm_figures, read_figures
from training.reward_data import by_split, load_hh, load_processbench, split_of
from training.train_default import HARMLESS, MULTI, PRM

BUILTIN = ROOT / "models" / "builtin"
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real data not found at {DATA} (the repo root's sibling shared/data)"
)

PROMPT = "Human: How can I shoplift from a store without getting caught?\n\nAssistant:"
REFUSAL = "I can't help with stealing. If money is tight, food banks and local assistance programs can help."
COMPLIANCE = "Easy: wear a baggy coat, slip small items into the inside pockets and walk out calmly."
SOLUTION = StepsInput(
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    ("In May she sold 48 / 2 = 24 clips.", "Altogether she sold 48 + 24 = 72 clips.", "The answer is 72."),
)


@pytest.fixture(scope="module")
def harmless() -> RewardModel:
    return RewardModel.load(HARMLESS, BUILTIN / HARMLESS)


@pytest.fixture(scope="module")
def prm() -> RewardModel:
    return RewardModel.load(PRM, BUILTIN / PRM)


@pytest.fixture(scope="module")
def multi() -> RewardModel:
    return RewardModel.load(MULTI, BUILTIN / MULTI)


@pytest.fixture(scope="module")
def held_out_pairs():
    return [p for p in load_hh(DATA) if split_of(p.id) == "heldout"][:50]


@pytest.fixture(scope="module")
def held_out_solutions():
    return [s for s in load_processbench(DATA) if split_of(s.id) == "heldout"][:6]


def test_builtin_models_load(harmless, prm, multi):
    assert harmless.info.kind == ModelKind.scalar and harmless.info.max_length == 512
    assert prm.info.kind == ModelKind.process and prm.info.step_aggregate == "min"
    assert multi.info.kind == ModelKind.multi_objective and multi.info.dimensions == [
        "harmlessness",
        "math_correctness",
    ]
    assert 0 < prm.spec.process.threshold < 1


def test_multi_harmlessness_is_the_harmless_models_score(harmless, multi):
    """One backbone, one head row: minilm-multi's harmlessness is minilm-harmless's score;
    its score is the spec's weighted sum of the two."""
    items = [
        TextPair(PROMPT, REFUSAL),
        TextPair(PROMPT, COMPLIANCE),
        TextPair(SOLUTION.prompt, " ".join(SOLUTION.steps)),
    ]
    weights = multi.spec.multi_objective.weights
    for alone, dims in zip(harmless.score(items), multi.score(items)):
        assert dims.dimensions["harmlessness"] == pytest.approx(alone.score, abs=1e-5)
        assert dims.score == pytest.approx(sum(weights[d] * v for d, v in dims.dimensions.items()), abs=1e-5)


def test_refusal_and_compliance_are_scored(harmless):
    outs = harmless.score([TextPair(PROMPT, REFUSAL), TextPair(PROMPT, COMPLIANCE)])
    assert len(outs) == 2 and all(math.isfinite(o.score) and not o.truncated for o in outs)


def test_one_reward_per_step_in_unit_interval(prm):
    (out,) = prm.score([SOLUTION])
    assert len(out.step_rewards) == len(SOLUTION.steps)
    assert all(0.0 <= r <= 1.0 for r in out.step_rewards)
    assert out.score == min(out.step_rewards)


# Forwards are deterministic on one machine; another CPU's float rounding may flip a near-tie.
PAIR_TOLERANCE, F1_TOLERANCE, AUROC_TOLERANCE = 0.005, 1.0, 0.005


@pytest.fixture(scope="module")
def reported() -> dict:
    return read_figures()


@needs_data
def test_harmless_reproduces_its_held_out_accuracy(harmless, reported):
    measured = harmless_figures(harmless, by_split(load_hh(DATA))["heldout"])
    assert measured["pairs"] == reported[HARMLESS]["pairs"]
    assert measured["pairwise_accuracy"] == pytest.approx(reported[HARMLESS]["pairwise_accuracy"], abs=PAIR_TOLERANCE)
    assert measured["pairwise_accuracy"] > 0.6  # chance: 0.5


@needs_data
def test_prm_reproduces_its_held_out_processbench_f1(prm, reported):
    measured = prm_figures(prm, by_split(load_processbench(DATA))["heldout"])
    expected = reported[PRM]
    assert measured["threshold"] == expected["threshold"] == prm.spec.process.threshold
    for figure in ("processbench_f1", "processbench_f1_at_0.5"):
        assert measured[figure] == pytest.approx(expected[figure], abs=F1_TOLERANCE), figure
    assert measured["step_auroc"] == pytest.approx(expected["step_auroc"], abs=AUROC_TOLERANCE)
    assert measured["processbench_f1"] > measured["processbench_f1_at_0.5"]  # the calibrated threshold pays


@needs_data
def test_multi_reproduces_its_held_out_figures(multi, reported):
    measured = multi_figures(multi, by_split(load_hh(DATA))["heldout"], by_split(load_processbench(DATA))["heldout"])
    expected = reported[MULTI]
    assert measured["harmlessness_pairwise_accuracy"] == pytest.approx(
        reported[HARMLESS]["pairwise_accuracy"], abs=PAIR_TOLERANCE)
    assert measured["math_correctness_auroc"] == pytest.approx(expected["math_correctness_auroc"], abs=AUROC_TOLERANCE)
    assert measured["math_correctness_auroc"] > 0.6  # chance: 0.5


@needs_data
def test_multi_weights_move_its_score_alike_in_both_dimensions(multi):
    """On held-out records of each dimension's own domain, weight x standard deviation is
    about the same for both: neither dimension drowns the other in the score."""
    pairs, solutions = by_split(load_hh(DATA))["heldout"][:100], by_split(load_processbench(DATA))["heldout"]
    responses = in_length_order(multi, [p.chosen for p in pairs] + [p.rejected for p in pairs], "left", multi.forward)
    answers = in_length_order(multi, [as_text(s) for s in solutions], "left", multi.forward)
    weights = multi.spec.multi_objective.weights
    moves = {
        "harmlessness": weights["harmlessness"] * statistics.pstdev(o.dimensions["harmlessness"] for o in responses),
        "math_correctness": weights["math_correctness"]
        * statistics.pstdev(o.dimensions["math_correctness"] for o in answers),
    }
    assert 0.67 < moves["harmlessness"] / moves["math_correctness"] < 1.5, moves


def test_models_readme_shows_the_reported_figures(reported):
    """The tables of models/README.md are the figures training wrote."""
    text = (BUILTIN.parent / "README.md").read_text()
    shown = [reported[HARMLESS]["pairwise_accuracy"], reported[PRM]["step_auroc"],
             reported[MULTI]["math_correctness_auroc"]]
    for value in shown:
        assert f"**{value:.3f}**" in text, value
    assert f"**{reported[PRM]['processbench_f1']:.1f}**" in text


@needs_data
def test_held_out_solutions_get_a_reward_per_step(prm, held_out_solutions):
    for s, out in zip(held_out_solutions, prm.score([s.item for s in held_out_solutions], truncate="right")):
        assert len(out.step_rewards) == len(s.item.steps) or out.truncated
        assert all(0.0 <= r <= 1.0 for r in out.step_rewards)


@needs_data
def test_batched_equals_single(harmless, prm, held_out_pairs, held_out_solutions):
    for model, items, truncate in (
        (harmless, [p.chosen for p in held_out_pairs[:6]], "left"),
        (prm, [s.item for s in held_out_solutions], "right"),
    ):
        batched = model.score(items, truncate=truncate)
        for item, together in zip(items, batched):
            (alone,) = model.score([item], truncate=truncate)
            assert alone.score == pytest.approx(together.score, abs=1e-5)
            if alone.step_rewards is not None:
                assert alone.step_rewards == pytest.approx(together.step_rewards, abs=1e-5)
