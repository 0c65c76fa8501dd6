"""Pairwise models in the scoring core: which ordered pairs a request makes and how their
readings become its answers. Every pair is read in both orders, each order one item of
one runner call (so pairs batch, cache and deduplicate as any items do); models.pairwise
combines the two orders into P(A > B).

`/v1/score` gives one number per item: `vs_reference`, P(response > the item's reference);
`group`, the item's win rate, its mean P(item > other) over the other items of the request
with the same prompt. Ranking code compares candidates through `Scorer.preferences`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from models.heads import RewardOutput
from models.inputs import Chat, PairInput, ScoreInput, TextPair
from models.pairwise import Convention, preference, win_rate
from service.core.errors import APIError
from service.protocol.enums import CacheMode, PairwiseMode, Priority, Truncate

Context = tuple[tuple[str, str], ...]  # the conversation before the responses: (role, content) turns


@dataclass(frozen=True)
class PairJob:
    """The options a comparison runs under, as a ScoreJob's."""

    model: str | None = None
    truncate: Truncate | None = None
    priority: Priority | None = None
    timeout_ms: float | None = None
    deterministic: bool | None = None  # items scored alone; None: the model's setting
    cache: CacheMode = CacheMode.use
    adapter: str | None = None  # the LoRA adapter that reads the pairs; None: the base model


@dataclass(frozen=True)
class Preferences:
    """What comparing candidates gave: P(i > j) per asked pair, the model that read them,
    and per candidate the tokens of the reads it comes first in (so every read counts once)
    and whether any read with it was cut."""

    probabilities: list[float]
    model: str
    revision: str
    tokens: list[int]
    truncated: list[bool]


def preferences_read(convention: Convention, outputs: Sequence[RewardOutput], pairs: Sequence[tuple[int, int]],
                     reads: Sequence[tuple[int, int]], n: int, model: str, revision: str) -> Preferences:
    """The Preferences of `pairs` from their ordered reads' outputs (read (i, j) first has i)."""
    first: dict[int, int] = {}
    for (i, j), (ab, ba) in zip(pairs, reads):
        first[ab], first[ba] = i, j
    tokens, truncated = [0] * n, [False] * n
    for read, candidate in first.items():
        tokens[candidate] += outputs[read].num_tokens
    for (i, j), (ab, ba) in zip(pairs, reads):
        cut = outputs[ab].truncated or outputs[ba].truncated
        truncated[i], truncated[j] = truncated[i] or cut, truncated[j] or cut
    probabilities = [preference(convention, outputs[ab].score, outputs[ba].score) for ab, ba in reads]
    return Preferences(probabilities, model, revision, tokens, truncated)


@dataclass
class PairPlan:
    """The ordered pairs to read (`inputs`) and, per pair, the request fields of its first
    and second response and the prefix its prompt's field is named under (`names`)."""

    inputs: list[PairInput] = field(default_factory=list)
    names: list[tuple[str, str, str]] = field(default_factory=list)
    _index: dict[PairInput, int] = field(default_factory=dict)

    def ordered(self, context: Context, a: tuple[str, str], b: tuple[str, str], prompt: str) -> tuple[int, int]:
        """The indices of (A, B) and (B, A), each added once; `a` and `b` are (text, field)."""
        return self._add(PairInput(context, a[0], b[0]), (a[1], b[1], prompt)), \
            self._add(PairInput(context, b[0], a[0]), (b[1], a[1], prompt))

    def _add(self, pair: PairInput, names: tuple[str, str, str]) -> int:
        if pair not in self._index:
            self._index[pair] = len(self.inputs)
            self.inputs.append(pair)
            self.names.append(names)
        return self._index[pair]

    def field(self, index: int, rest: str) -> str:
        """The request field of the model layer's `items[index]{rest}` (models.pair_encoding)."""
        first, second, prompt = self.names[index]
        if rest.startswith(".first"):
            return first
        if rest.startswith(".second"):
            return second
        return f"{prompt}{rest}" if prompt else rest.removeprefix(".")


def candidate_pairs(context: Context, candidates: Sequence[str], pairs: Sequence[tuple[int, int]],
                    prompt_owner: str = "") -> tuple[PairPlan, list[tuple[int, int]]]:
    """The plan for P(candidates[i] > candidates[j]) per (i, j) of `pairs`, and each pair's
    two ordered reads; 422 naming `pairs[k]` for an index out of range or a candidate against
    itself."""
    if len(candidates) < 2:
        raise APIError(422, "invalid_request", "a pairwise comparison needs at least two candidates", "candidates")
    plan, reads = PairPlan(), []
    for k, (i, j) in enumerate(pairs):
        if not (0 <= i < len(candidates) and 0 <= j < len(candidates)) or i == j:
            raise APIError(422, "invalid_request", f"pairs[{k}] is ({i}, {j}): two different indices of the "
                           f"{len(candidates)} candidates", f"pairs[{k}]")
        reads.append(plan.ordered(context, (candidates[i], f"candidates[{i}]"), (candidates[j], f"candidates[{j}]"),
                                  prompt_owner))
    return plan, reads


def context_and_response(index: int, item: ScoreInput) -> tuple[Context, str]:
    """A /v1/score item as a pairwise model reads it: its prompt (one user turn) or the turns
    before its last, and its response."""
    if isinstance(item, TextPair):
        return (("user", item.prompt),), item.response
    if isinstance(item, Chat) and len(item.messages) >= 2 and item.messages[-1][0] == "assistant":
        return item.messages[:-1], item.messages[-1][1]
    what = "end with the assistant response" if isinstance(item, Chat) else "be text"
    raise APIError(422, "invalid_request", f"a pairwise model compares text responses: items[{index}] must {what} "
                   "(prompt and response, or messages)", f"items[{index}]")


def score_plan(inputs: Sequence[ScoreInput], references: Sequence[str | None] | None,
               mode: PairwiseMode) -> tuple[PairPlan, list[list[tuple[int, int]]]]:
    """The plan of a /v1/score request on a pairwise model, and per item the ordered reads
    (item first, other first) its score combines."""
    parsed = [context_and_response(i, item) for i, item in enumerate(inputs)]
    plan, reads = PairPlan(), []
    if mode == "vs_reference":
        for i, (context, response) in enumerate(parsed):
            reference = references[i] if references else None
            if reference is None:
                raise APIError(422, "invalid_request", f"items[{i}].reference: pairwise_mode 'vs_reference' compares "
                               "each response with its item's reference response; give one", f"items[{i}].reference")
            reads.append([plan.ordered(context, (response, f"items[{i}]"), (reference, f"items[{i}].reference"),
                                       f"items[{i}]")])
        return plan, reads
    for i, (context, response) in enumerate(parsed):
        others = [j for j, (c, _) in enumerate(parsed) if c == context and j != i]
        if not others:
            raise APIError(422, "invalid_request", f"items[{i}]: pairwise_mode 'group' compares each item with the "
                           "other items of the request with the same prompt, and this one has none", f"items[{i}]")
        reads.append([plan.ordered(context, (response, f"items[{i}]"), (parsed[j][1], f"items[{j}]"), f"items[{i}]")
                      for j in others])
    return plan, reads


def item_outputs(convention: Convention, mode: PairwiseMode, outputs: Sequence[RewardOutput],
                 reads: Sequence[Sequence[tuple[int, int]]]) -> list[RewardOutput]:
    """Each item's score: its preference over the other side (vs_reference), or its mean
    over the others (group); its tokens those of the reads it comes first in (so the usage
    counts every read once), truncated or cached as they were."""
    results = []
    for item_reads in reads:
        wins = [preference(convention, outputs[ab].score, outputs[ba].score) for ab, ba in item_reads]
        own = {k for pair in item_reads for k in pair} if mode == "vs_reference" else {ab for ab, _ in item_reads}
        results.append(RewardOutput(score=win_rate(wins), num_tokens=sum(outputs[k].num_tokens for k in own),
                                    truncated=any(outputs[k].truncated for pair in item_reads for k in pair),
                                    cached=all(outputs[k].cached for pair in item_reads for k in pair)))
    return results
