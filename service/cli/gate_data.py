"""A labelled set for `rewardserve gate`: read from JSON Lines or one JSON array (gzipped or
not), its format told from its fields, each record turned into the /v1/score items it is
scored as, and grouped into buckets.

- pairwise: `chosen`, `rejected` and a `prompt`, or without one each side a whole dialogue
  (HH-RLHF), split at its last `Assistant:` turn; both responses are scored.
- scalar: `prompt`, `response` and a `label` (boolean or 0/1).
- steps: `prompt` (or `problem`), `steps`, `label` (the first wrong step, -1 for none) and
  optionally `final_answer_correct` (ProcessBench).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# HH dialogues keep their latest turns when too long; a solution keeps its problem and first steps.
DEFAULT_TRUNCATE = {"pairwise": "left", "scalar": "left", "steps": "right"}
ASSISTANT = "\n\nAssistant:"
LENGTH = "length"


@dataclass(frozen=True)
class Record:
    items: list[dict]  # pairwise: [chosen, rejected]; else one
    label: int | bool | None = None  # scalar: positive or not; steps: the first wrong step, -1 none
    final_answer_correct: bool | None = None

    @property
    def length(self) -> int:
        """Characters of what is judged: the responses, or the steps."""
        return sum(len(item.get("response", "")) + sum(map(len, item.get("steps", []))) for item in self.items)


def read_rows(path: Path, limit: int | None) -> list[dict]:
    """The file's first `limit` records (all without one)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines()
                                                                    if line.strip()]
    return rows[:limit]


def detect_format(row: dict) -> str:
    if "chosen" in row and "rejected" in row:
        return "pairwise"
    if "steps" in row and "label" in row:
        return "steps"
    if "response" in row and "label" in row:
        return "scalar"
    raise ValueError(f"cannot tell the format from the fields {sorted(row)}: give --format")


def split_dialogue(text: str) -> dict:
    """A whole dialogue as a prompt (up to its last assistant turn) and that turn's response."""
    cut = text.rindex(ASSISTANT) + len(ASSISTANT)
    return {"prompt": text[:cut].strip(), "response": text[cut:].strip()}


def to_record(row: dict, form: str) -> Record:
    if form == "pairwise":
        if "prompt" in row:
            return Record([{"prompt": row["prompt"], "response": row[side]} for side in ("chosen", "rejected")])
        return Record([split_dialogue(row["chosen"]), split_dialogue(row["rejected"])])
    if form == "scalar":
        return Record([{"prompt": row["prompt"], "response": row["response"]}], label=bool(row["label"]))
    prompt = row["prompt"] if "prompt" in row else row["problem"]
    correct = row.get("final_answer_correct")
    return Record([{"prompt": prompt, "steps": list(row["steps"])}], label=int(row["label"]),
                  final_answer_correct=None if correct is None else bool(correct))


def records(rows: list[dict], form: str) -> list[Record]:
    """Every row as a record; a row missing a field is refused by its number."""
    out = []
    for number, row in enumerate(rows, 1):
        try:
            out.append(to_record(row, form))
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"record {number} is no {form} record: {type(err).__name__}: {err}") from None
    return out


def bucket_names(rows: list[dict], recs: list[Record], field: str | None) -> tuple[list[str], list[str]]:
    """Each record's bucket, and the buckets in order: the values of the rows' `field`; for
    `length` (the default) when the rows have no such field, terciles of the records' length
    in characters, shortest first."""
    field = field or LENGTH
    if all(field in row for row in rows):
        names = [str(row[field]) for row in rows]
        return names, sorted(set(names))
    if field != LENGTH:
        raise ValueError(f"not every record has the field {field!r}")
    lengths = np.array([r.length for r in recs])
    low, high = (int(q) for q in np.quantile(lengths, [1 / 3, 2 / 3]))
    order = [f"length<={low}", f"length {low + 1}-{high}", f"length>{high}"]
    names = [order[int(n > low) + int(n > high)] for n in lengths]
    return names, [name for name in order if name in names]
