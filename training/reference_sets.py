"""Reference sets of the embedded default models: real inputs from the held-out split of their
training data (records no head was fitted, early-stopped or calibrated on; see
training/train_default.py), written as `/v1/score` items, one per line. Each model's
`reference_stats` (for `normalize: "zscore"`), drift baseline (with its calibrated limits) and
golden set come from them:

    python -m training.reference_sets OUT_DIR [--data ../shared/data]
    rewardserve calibrate OUT_DIR/minilm-harmless.jsonl --model minilm-harmless --truncate left --write
    rewardserve calibrate OUT_DIR/minilm-prm.jsonl --model minilm-prm --truncate right --write
    rewardserve calibrate OUT_DIR/minilm-multi.jsonl --model minilm-multi --truncate left --write
    rewardserve baseline OUT_DIR/minilm-harmless-chosen.jsonl --model minilm-harmless --truncate left --write
    rewardserve baseline OUT_DIR/minilm-prm.jsonl --model minilm-prm --truncate right --write
    rewardserve baseline OUT_DIR/minilm-multi.jsonl --model minilm-multi --truncate left --write
    rewardserve canary-record OUT_DIR/minilm-harmless.jsonl --model minilm-harmless --truncate left --limit 32 --write
    rewardserve canary-record OUT_DIR/minilm-prm.jsonl --model minilm-prm --truncate right --limit 16 --write
    rewardserve canary-record OUT_DIR/minilm-multi.jsonl --model minilm-multi --truncate left --limit 32 --write

minilm-harmless's drift baseline is the chosen responses alone: the traffic it watches is a
policy's responses, and a policy whose answers turn from chosen-like to rejected-like is the
shift to flag. minilm-multi's set mixes both of its domains: HH-RLHF responses and whole
ProcessBench solutions. A z-score is an affine map of the score, so calibrating changes no
ordering and no accuracy figure in models/README.md. `hh-rlhf-heldout.jsonl` and
`processbench-heldout.jsonl` are the held-out records themselves, labels and all, for
`rewardserve gate` (docs/gate.md).
"""

from __future__ import annotations

import argparse
import gzip
import json
from itertools import zip_longest
from pathlib import Path

from training.heldout import as_text
from training.reward_data import HH_FILE, PROCESSBENCH_FILE, by_split, load_hh, load_processbench, split_of
from training.train_default import HARMLESS, MULTI, PRM

HARMLESS_PAIRS = 300  # both responses of each: 600 items


def harmless_items(data: Path) -> list[dict]:
    pairs = by_split(load_hh(data))["heldout"][:HARMLESS_PAIRS]
    return [{"prompt": side.prompt, "response": side.response} for p in pairs for side in (p.chosen, p.rejected)]


def chosen_items(data: Path) -> list[dict]:
    return [{"prompt": p.chosen.prompt, "response": p.chosen.response} for p in by_split(load_hh(data))["heldout"]]


def prm_items(data: Path) -> list[dict]:
    return [
        {"prompt": s.item.prompt, "steps": list(s.item.steps)} for s in by_split(load_processbench(data))["heldout"]
    ]


def heldout_pairs(data: Path) -> list[dict]:
    with gzip.open(data / HH_FILE, "rt", encoding="utf-8") as f:
        return [json.loads(line) for i, line in enumerate(f) if split_of(f"hh-{i}") == "heldout"]


def heldout_solutions(data: Path) -> list[dict]:
    rows = json.loads((data / PROCESSBENCH_FILE).read_text(encoding="utf-8"))
    return [row for row in rows if split_of(row["id"]) == "heldout"]


def multi_items(data: Path) -> list[dict]:
    """HH-RLHF responses and solutions taking turns while both last (a golden set of the
    first N items covers both domains)."""
    solutions = [as_text(s) for s in by_split(load_processbench(data))["heldout"]]
    turns = zip_longest(harmless_items(data), [{"prompt": t.prompt, "response": t.response} for t in solutions])
    return [item for pair in turns for item in pair if item is not None]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    sets = {HARMLESS: harmless_items, f"{HARMLESS}-chosen": chosen_items, PRM: prm_items, MULTI: multi_items,
            "hh-rlhf-heldout": heldout_pairs, "processbench-heldout": heldout_solutions}
    for name, items in sets.items():
        path = args.out / f"{name}.jsonl"
        rows = items(args.data)
        path.write_text("".join(json.dumps(item) + "\n" for item in rows))
        print(f"{path}\t{len(rows)} items")


if __name__ == "__main__":
    main()
