"""The real labelled data the embedded default models are trained and measured on (the
project's ../shared/data): Anthropic HH-RLHF harmless-base preference pairs and ProcessBench
GSM8K step labels, with one fixed split by record id shared by training, reports and tests."""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from models.inputs import StepsInput, TextPair

HH_FILE = "hh-rlhf-harmless-base-test.jsonl.gz"
PROCESSBENCH_FILE = "processbench-gsm8k.json"
ASSISTANT = "\n\nAssistant:"


def split_of(record_id: str) -> str:
    """Fixed split on d = sha256(id): d % 5 == 0 held out (20%), d % 10 == 1 validation
    (10%), the rest fitted."""
    digest = int(hashlib.sha256(record_id.encode()).hexdigest(), 16)
    return "heldout" if digest % 5 == 0 else "val" if digest % 10 == 1 else "fit"


@dataclass(frozen=True)
class Pair:
    id: str
    chosen: TextPair
    rejected: TextPair


@dataclass(frozen=True)
class Solution:
    id: str
    item: StepsInput
    label: int  # index of the earliest wrong step, -1 when all are right
    final_answer_correct: bool

    def targets(self) -> list[int]:
        """1 (good) for steps before the first error, 0 (bad) at it; later steps are
        unlabelled and left out."""
        n = len(self.item.steps)
        return [1] * n if self.label < 0 else [1] * self.label + [0]


def split_dialogue(text: str) -> TextPair:
    """The dialogue up to and including its last assistant marker is the prompt, the
    assistant's last reply the response."""
    cut = text.rindex(ASSISTANT) + len(ASSISTANT)
    return TextPair(text[:cut].strip(), text[cut:].strip())


def load_hh(data: Path) -> list[Pair]:
    """HH-RLHF pairs, with their line number as id. Each side is split at its own last assistant
    marker: the two share the prompt in all but a handful of records."""
    with gzip.open(data / HH_FILE, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return [Pair(f"hh-{i}", split_dialogue(r["chosen"]), split_dialogue(r["rejected"])) for i, r in enumerate(rows)]


def load_processbench(data: Path) -> list[Solution]:
    rows = json.loads((data / PROCESSBENCH_FILE).read_text(encoding="utf-8"))
    return [Solution(r["id"], StepsInput(r["problem"], tuple(r["steps"])), r["label"], bool(r["final_answer_correct"]))
            for r in rows]


def by_split(records: list) -> dict[str, list]:
    out = {"fit": [], "val": [], "heldout": []}
    for r in records:
        out[split_of(r.id)].append(r)
    return out
