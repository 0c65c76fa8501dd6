"""Reference sets for calibrating the embedded default models (their `reference_stats`, used
by `normalize: "zscore"`): real responses from the held-out split of their training data
(records the heads were neither fitted nor early-stopped on; see models/train_default.py),
written as `/v1/score` items, one per line.

    python -m models.reference_sets OUT_DIR [--data ../shared/data]
    rewardserve calibrate OUT_DIR/minilm-harmless.jsonl --model minilm-harmless --truncate left --write
    rewardserve calibrate OUT_DIR/minilm-prm.jsonl --model minilm-prm --truncate right --write

A z-score is an affine map of the score, so calibrating changes no ordering and no accuracy
figure in models/README.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from models.train_default import HARMLESS, PRM, by_split, load_hh, load_processbench

HARMLESS_PAIRS = 300  # both responses of each: 600 items


def harmless_items(data: Path) -> list[dict]:
    pairs = by_split(load_hh(data))["heldout"][:HARMLESS_PAIRS]
    return [{"prompt": side.prompt, "response": side.response} for p in pairs for side in (p.chosen, p.rejected)]


def prm_items(data: Path) -> list[dict]:
    return [{"prompt": s.item.prompt, "steps": list(s.item.steps)} for s in by_split(load_processbench(data))["heldout"]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, items in ((HARMLESS, harmless_items(args.data)), (PRM, prm_items(args.data))):
        path = args.out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(item) + "\n" for item in items))
        print(f"{path}\t{len(items)} items")


if __name__ == "__main__":
    main()
