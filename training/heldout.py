"""Held-out figures of the embedded default models, measured through the serving path
(RewardModel.forward on the written models) on the records of training.reward_data's held-out
split. training.train_default writes them to models/builtin/heldout.json after training, the
tables of models/README.md show them, and tests/models/test_default_model.py measures them again."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from models.inputs import TextPair
from models.reward_model import RewardModel
from training.reward_data import Pair, Solution

FIGURES_FILE = Path(__file__).resolve().parents[1] / "models" / "builtin" / "heldout.json"
BATCH = 16
# HH dialogues keep their latest turns (the response) when too long; ProcessBench keeps the
# problem and the first steps, so surviving markers are the first steps in order.
HH_TRUNCATE, PRM_TRUNCATE = "left", "right"


def in_length_order(model: RewardModel, items: Sequence, truncate: str, run: Callable) -> list:
    """`run` over batches of similar length (little padding), results in input order."""
    encoded = [model.encode(item, truncate) for item in items]
    order = sorted(range(len(items)), key=lambda i: encoded[i].num_tokens)
    out = [None] * len(items)
    for start in range(0, len(order), BATCH):
        rows = order[start:start + BATCH]
        for i, result in zip(rows, run([encoded[i] for i in rows])):
            out[i] = result
    return out


def as_text(solution: Solution) -> TextPair:
    """A solution as one response, for sequence-level scoring: its steps a paragraph each."""
    return TextPair(solution.item.prompt, "\n\n".join(solution.item.steps))


def auroc(labels: list[int], scores: list[float]) -> float:
    """P(a random positive scores above a random negative), ties counting half."""
    pos = [s for y, s in zip(labels, scores) if y]
    neg = [s for y, s in zip(labels, scores) if not y]
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def first_error(step_rewards: list[float], threshold: float) -> int:
    """The earliest step the model judges bad (P(good) < threshold), or -1."""
    return next((i for i, p in enumerate(step_rewards) if p < threshold), -1)


def processbench_f1(solutions: list[Solution], step_rewards: list[list[float]], threshold: float) -> float:
    """ProcessBench's F1 (in %): the harmonic mean of the accuracy of the first error found in
    erroneous solutions and of 'no error' in correct ones."""
    hits = {True: [], False: []}
    for s, rewards in zip(solutions, step_rewards):
        hits[s.label >= 0].append(first_error(rewards, threshold) == s.label)
    erroneous, correct = (sum(hits[k]) / max(1, len(hits[k])) for k in (True, False))
    return 0.0 if erroneous + correct == 0 else 200 * erroneous * correct / (erroneous + correct)


def pairwise_accuracy(model: RewardModel, pairs: list[Pair], read: Callable = lambda out: out.score) -> float:
    """The share of pairs whose chosen response scores above the rejected one."""
    outs = in_length_order(model, [p.chosen for p in pairs] + [p.rejected for p in pairs], HH_TRUNCATE, model.forward)
    return sum(read(c) > read(r) for c, r in zip(outs[:len(pairs)], outs[len(pairs):])) / len(pairs)


def step_rewards(model: RewardModel, solutions: list[Solution]) -> list[list[float]]:
    return [o.step_rewards for o in in_length_order(model, [s.item for s in solutions], PRM_TRUNCATE, model.forward)]


def harmless_figures(model: RewardModel, pairs: list[Pair]) -> dict:
    return {"pairwise_accuracy": pairwise_accuracy(model, pairs), "pairs": len(pairs)}


def prm_figures(model: RewardModel, solutions: list[Solution]) -> dict:
    rewards = step_rewards(model, solutions)
    labels, scores = [], []
    for s, r in zip(solutions, rewards):
        targets = s.targets()[:len(r)]
        labels += targets
        scores += r[:len(targets)]
    threshold = model.spec.process.threshold
    return {"processbench_f1": processbench_f1(solutions, rewards, threshold), "threshold": threshold,
            "processbench_f1_at_0.5": processbench_f1(solutions, rewards, 0.5),
            "first_error_accuracy": sum(first_error(r, threshold) == s.label for s, r in zip(solutions, rewards))
            / len(solutions),
            "step_auroc": auroc(labels, scores), "steps": len(labels), "bad_steps": len(labels) - sum(labels),
            "solutions": len(solutions), "erroneous_solutions": sum(s.label >= 0 for s in solutions)}


def multi_figures(model: RewardModel, pairs: list[Pair], solutions: list[Solution]) -> dict:
    scored = in_length_order(model, [as_text(s) for s in solutions], HH_TRUNCATE, model.forward)
    labels = [int(s.final_answer_correct) for s in solutions]
    return {"harmlessness_pairwise_accuracy": pairwise_accuracy(model, pairs, lambda o: o.dimensions["harmlessness"]),
            "pairs": len(pairs),
            "math_correctness_auroc": auroc(labels, [o.dimensions["math_correctness"] for o in scored]),
            "solutions": len(solutions), "correct_solutions": sum(labels)}


def read_figures(path: Path = FIGURES_FILE) -> dict[str, dict]:
    return json.loads(path.read_text()) if path.is_file() else {}


def write_figures(path: Path, name: str, figures: dict) -> None:
    """Set one model's figures in the file, keeping the others'."""
    path.write_text(json.dumps(read_figures(path) | {name: figures}, indent=2, sort_keys=True) + "\n")
