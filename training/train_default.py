"""Trains the embedded default reward models (models/builtin) on the real data of
training.reward_data, then reloads the written models and reports held-out figures measured
through the serving path (RewardModel.forward), so the numbers are those of what is served.

    python -m training.train_default [--data ../shared/data] [--out models/builtin] [--only NAME]

minilm-harmless: all-MiniLM-L6-v2 fine-tuned end to end (training.finetune) as a Bradley-Terry
reward model on HH-RLHF harmless-base pairs, warm-started from a linear head fitted on the
frozen backbone.
minilm-prm: a linear head on the frozen backbone, class-balanced cross-entropy on ProcessBench
GSM8K step labels at each step's [MASK]; its threshold (P(good) below which a step is called
wrong) is calibrated for ProcessBench F1 on the records it was fitted on.
minilm-multi: two named dimensions on minilm-harmless's fine-tuned backbone: `harmlessness`
(minilm-harmless's own head) and `math_correctness` (a linear head fitted on that backbone's
frozen features of ProcessBench solutions, to their final_answer_correct label), weighed into
the score by 1 / their spread on the fitted records.
Records are split by a hash of their id (training.reward_data.split_of): 20% held out (never
trained, early-stopped or calibrated on), 10% validation for early stopping, 70% fitted.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from models.reward_model import RewardModel
from models.spec import SPEC_FILENAME, ModelKind, load_spec
from training.finetune import Example, Schedule, fine_tune, mean_loss, pair_loss, save_fine_tune
from training.heldout import (
    HH_TRUNCATE,
    PRM_TRUNCATE,
    as_text,
    harmless_figures,
    in_length_order,
    multi_figures,
    prm_figures,
    processbench_f1,
    step_rewards,
    write_figures,
)
from training.reward_data import Pair, Solution, by_split, load_hh, load_processbench

HARMLESS, PRM, MULTI = "minilm-harmless", "minilm-prm", "minilm-multi"
HEAD_FILE, BACKBONE_FILE = "reward_head.safetensors", "backbone.safetensors"
HIDDEN = 384  # MiniLM-L6's width, what the heads read
SEED = 0
# Linear heads (the PRM's, and the start of minilm-harmless's fine-tune): full batch on the
# frozen backbone's features.
LR, WEIGHT_DECAY, MAX_STEPS, PATIENCE = 1e-2, 0.1, 2000, 100
# The harmless model trains at 256 tokens (served at 512): left truncation keeps the final
# turns, which decide most pairs, and halves the time of a step. The PRM's head is fitted at
# its served length, so that every step marker it is fitted on survives.
HARMLESS_MAX_LENGTH, PRM_MAX_LENGTH = 256, 512
HARMLESS_SCHEDULE = Schedule(epochs=2, batch=8, backbone_lr=3e-5, head_lr=1e-3, evals=8, seed=SEED)


# ---- linear heads on the frozen backbone ---------------------------------------------

def features(model: RewardModel, items: list, truncate: str) -> list[torch.Tensor]:
    """Per item what the head reads: a pooled vector, or one row per surviving step marker."""
    def run(batch):
        feats = model.head_features(batch)
        if model.spec.kind == ModelKind.process:
            return feats.split([len(enc.marker_positions) for enc in batch])
        return feats
    return in_length_order(model, items, truncate, run)


def fit_linear_head(fit: tuple, val: tuple, outputs: int, loss_fn) -> dict[str, torch.Tensor]:
    """A linear head trained full-batch with AdamW, early-stopped on the validation loss.
    `fit`/`val` are (features, targets) for `loss_fn(head, features, targets)`."""
    torch.manual_seed(SEED)
    head = nn.Linear(fit[0].shape[-1], outputs)
    opt = torch.optim.AdamW(head.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    best, best_state, since = float("inf"), None, 0
    for _ in range(MAX_STEPS):
        opt.zero_grad()
        loss_fn(head, *fit).backward()
        opt.step()
        with torch.no_grad():
            val_loss = loss_fn(head, *val).item()
        if val_loss < best - 1e-5:
            best, best_state, since = val_loss, {k: v.clone() for k, v in head.state_dict().items()}, 0
        elif (since := since + 1) >= PATIENCE:
            break
    return {f"reward.0.{k}": v.contiguous() for k, v in best_state.items()}


def bradley_terry(head, pairs, _) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected), `pairs` being [N, 2 (chosen, rejected), D]."""
    scores = head(pairs)[..., 0]
    return -F.logsigmoid(scores[:, 0] - scores[:, 1]).mean()


def harmless_features(model: RewardModel, records: list[Pair]) -> tuple[torch.Tensor, None]:
    f = torch.stack(features(model, [p.chosen for p in records] + [p.rejected for p in records], HH_TRUNCATE))
    return torch.stack((f[:len(records)], f[len(records):]), dim=1), None


def prm_features(model: RewardModel, records: list[Solution]) -> tuple[torch.Tensor, torch.Tensor]:
    rows, labels = [], []
    for s, f in zip(records, features(model, [s.item for s in records], PRM_TRUNCATE)):
        targets = s.targets()[:len(f)]  # right truncation drops trailing markers only
        rows.append(f[:len(targets)])
        labels += targets
    return torch.cat(rows), torch.tensor(labels)


@dataclass
class Start:
    """A model to fit a head on (and, for minilm-harmless, fine-tune): the spec's backbone as
    published and a placeholder head file, encoding at its training length; the head file
    lives in `directory`, kept as long as the model."""

    model: RewardModel
    directory: tempfile.TemporaryDirectory


def starting_model(spec_dir: Path, outputs: int, max_length: int) -> Start:
    spec = load_spec(spec_dir).model_dump(mode="json", exclude_none=True)
    spec.pop("backbone_weights", None)
    spec.pop("reference_stats", None)
    spec["max_length"] = max_length
    directory = tempfile.TemporaryDirectory()
    save_file({"reward.0.weight": torch.zeros(outputs, HIDDEN), "reward.0.bias": torch.zeros(outputs)},
              f"{directory.name}/{HEAD_FILE}")  # a placeholder, fitted before the fine-tune starts
    return Start(RewardModel.load(spec_dir.name, directory.name, spec=spec), directory)


# ---- training each model ----------------------------------------------------------

def train_harmless(spec_dir: Path, pairs: dict[str, list[Pair]], out_dir: Path) -> None:
    start = starting_model(spec_dir, 1, HARMLESS_MAX_LENGTH)
    model = start.model
    head = fit_linear_head(harmless_features(model, pairs["fit"]), harmless_features(model, pairs["val"]), 1,
                           bradley_terry)
    model.backend.graph.head.reward.layers[0].load_state_dict({k.removeprefix("reward.0."): v for k, v in head.items()})
    examples, val = ([_pair_example(model, p) for p in pairs[split]] for split in ("fit", "val"))
    fine_tune(model, examples, pair_loss, lambda m: -mean_loss(m, pair_loss, val), HARMLESS_SCHEDULE)
    save_fine_tune(model, out_dir / BACKBONE_FILE, out_dir / HEAD_FILE)


def _pair_example(model: RewardModel, pair: Pair) -> Example:
    chosen, rejected = (model.encode(side, HH_TRUNCATE) for side in (pair.chosen, pair.rejected))
    return Example((chosen, rejected), max(chosen.num_tokens, rejected.num_tokens))


def train_prm(spec_dir: Path, solutions: dict[str, list[Solution]], out_dir: Path) -> None:
    """A linear head on the frozen backbone. Fine-tuning the backbone as for minilm-harmless
    (4 epochs, lr 3e-5, batches of 8 solutions) never beat this head on the validation
    solutions, so the published layers are served as they are."""
    start = starting_model(spec_dir, 2, PRM_MAX_LENGTH)
    model = start.model
    fit, val = (prm_features(model, solutions[s]) for s in ("fit", "val"))
    counts = torch.bincount(fit[1], minlength=2).float()
    balance = counts.sum() / (2 * counts)  # bad steps are few: weigh the classes equally
    head = fit_linear_head(fit, val, 2, lambda h, x, y: F.cross_entropy(h(x), y, weight=balance))
    # Put the true prior back (log odds of good vs bad steps) so P(good) is calibrated and
    # "P(good) < 0.5" means what it says; a balanced head calls ~45% of steps bad.
    head["reward.0.bias"][1] += torch.log(counts[1] / counts[0])
    save_file(head, str(out_dir / HEAD_FILE))


def logistic(head, x, y) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(head(x)[:, 0], y)


def train_multi(harmless_dir: Path, pairs: dict[str, list[Pair]], solutions: dict[str, list[Solution]],
                out_dir: Path) -> None:
    """minilm-harmless's head as the first row of a two-output head, the math_correctness
    head, fitted on the served harmless model's features, as the second. The spec's weights
    are 1 / each dimension's standard deviation on its own fitted records (HH-RLHF responses,
    solutions), so a typical change in either moves the score alike: harmlessness spans
    several times math_correctness's range, and a plain sum would be harmlessness alone."""
    harmless = RewardModel.load(HARMLESS, harmless_dir)
    fit, val = ((torch.stack(features(harmless, [as_text(s) for s in solutions[split]], HH_TRUNCATE)),
                 torch.tensor([float(s.final_answer_correct) for s in solutions[split]])) for split in ("fit", "val"))
    correctness = fit_linear_head(fit, val, 1, logistic)
    own = load_file(str(harmless_dir / HEAD_FILE))
    save_file({k: torch.cat([own[k], correctness[k]]).contiguous() for k in ("reward.0.weight", "reward.0.bias")},
              str(out_dir / HEAD_FILE))
    responses = harmless_features(harmless, pairs["fit"])[0].flatten(0, 1)
    spreads = {"harmlessness": (responses @ own["reward.0.weight"][0]).std(),
               "math_correctness": (fit[0] @ correctness["reward.0.weight"][0]).std()}
    weights = ", ".join(f"{name}: {1 / spread.item():.3f}" for name, spread in spreads.items())
    set_spec_line(out_dir, "weights", f"{{{weights}}}")


# ---- held-out report through the served model --------------------------------------

def calibrated_threshold(solutions: list[Solution], step_rewards: list[list[float]]) -> float:
    """The threshold of best ProcessBench F1 on these solutions, among the midpoints of their
    step rewards (ties: the one nearest 0.5)."""
    values = sorted({r for rewards in step_rewards for r in rewards})
    candidates = [(a + b) / 2 for a, b in zip(values, values[1:])] or [0.5]
    return max(candidates, key=lambda t: (round(processbench_f1(solutions, step_rewards, t), 9), -abs(t - 0.5)))


def set_spec_line(spec_dir: Path, key: str, value: str) -> None:
    """Set the value of the spec file's (first) `key:` line, keeping its comments and
    layout; the file must still load as a spec."""
    path = spec_dir / SPEC_FILENAME
    lines = path.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:"))
    lines[at] = f"{lines[at][:lines[at].index(f'{key}:')]}{key}: {value}"
    path.write_text("\n".join(lines) + "\n")
    load_spec(spec_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("models/builtin"))
    parser.add_argument("--only", choices=(HARMLESS, PRM, MULTI),
                        help=f"train one model (default: all; {MULTI} reads the written {HARMLESS})")
    args = parser.parse_args(argv)
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    pairs, solutions = by_split(load_hh(args.data)), by_split(load_processbench(args.data))
    steps = {HARMLESS: lambda: train_harmless(args.out / HARMLESS, pairs, args.out / HARMLESS),
             PRM: lambda: train_prm(args.out / PRM, solutions, args.out / PRM),
             MULTI: lambda: train_multi(args.out / HARMLESS, pairs, solutions, args.out / MULTI)}
    figures = {HARMLESS: lambda m: harmless_figures(m, pairs["heldout"]),
               PRM: lambda m: prm_figures(m, solutions["heldout"]),
               MULTI: lambda m: multi_figures(m, pairs["heldout"], solutions["heldout"])}
    for name in (HARMLESS, PRM, MULTI):
        if args.only not in (None, name):
            continue
        started = time.perf_counter()
        steps[name]()
        if name == PRM:
            fitted = solutions["fit"] + solutions["val"]
            served = RewardModel.load(PRM, args.out / PRM)
            threshold = calibrated_threshold(fitted, step_rewards(served, fitted))
            set_spec_line(args.out / PRM, "threshold", f"{threshold:.6f}")
        seconds = time.perf_counter() - started
        measured = figures[name](RewardModel.load(name, args.out / name)) | {"train_seconds": round(seconds)}
        write_figures(args.out / "heldout.json", name, measured)
        print(f"{name}: trained in {seconds:.0f}s; held out: {json.dumps(measured)}", flush=True)


if __name__ == "__main__":
    main()
