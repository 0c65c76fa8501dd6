"""/v1/compare and /v1/rerank (best-of-n) on a pairwise preference model: the candidates
compared in pairs (`Scorer.preferences`), on the schedule of `service.core.tournament`, each
candidate's score its Bradley–Terry log-strength from the model's probabilities. Compare
reads every pair and answers the model's own win matrix; rerank reads the pairs its
schedule calls for (every pair for a few candidates, else Swiss, or a knockout)."""

from __future__ import annotations

import itertools
import uuid

from service.core.errors import APIError
from service.core.pairwise import PairJob, Preferences
from service.core.ranking import best, softmax
from service.core.scoring import Scorer
from service.core.tournament import Game, Played, bradley_terry, play, resolve_schedule
from service.protocol.enums import ModelKind
from service.protocol.ranking import (
    PAIRWISE_DEFAULT_MAX,
    Candidate,
    CompareRequest,
    CompareResponse,
    CompareResult,
    Message,
    RankingOptions,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
)
from service.protocol.scoring import Usage

AUTO_ALL_PAIRS_MAX = 8  # schedule 'auto': every pair up to this many candidates (28 pairs), Swiss past it


def refuse_pointwise_options(body: RankingOptions) -> None:
    """Options a pairwise model has no meaning for, refused by name."""
    if body.aggregate is not None:
        raise APIError(422, "invalid_request", "aggregate applies to process models only", "aggregate")
    if body.normalize == "zscore":
        raise APIError(422, "invalid_request", "a pairwise model's scores are log-strengths fitted to its "
                       "comparisons; there are no reference statistics to z-score against", "normalize")


def texts_of(candidates: list[Candidate], list_name: str) -> list[str]:
    """A pairwise model compares text responses: `steps` or `input_ids` candidates are 422."""
    for i, candidate in enumerate(candidates):
        if candidate.text is None:
            raise APIError(422, "invalid_request", f"a pairwise model compares text responses: {list_name}[{i}] "
                           "must be a string or {text}", f"{list_name}[{i}]")
    return [candidate.text for candidate in candidates]


def prompt_of(prompt: str | None, messages: list[Message] | None, prompt_field: str) -> str | list[tuple[str, str]]:
    if prompt is not None and messages is not None:
        raise APIError(422, "invalid_request", f"give {prompt_field} or messages, not both", "messages")
    if prompt is None and messages is None:
        raise APIError(422, "invalid_request", f"responses are compared as answers to {prompt_field} (or messages)",
                       prompt_field)
    return prompt if prompt is not None else [(m.role, m.content) for m in messages]


def as_request_field(err: APIError, list_name: str, prompt_field: str) -> APIError:
    """`Scorer.preferences`' field names (`candidates[i]...`, `prompt`) as this request's."""
    field = err.field or ""
    if field.startswith("candidates"):
        err.field = list_name + field.removeprefix("candidates")
        err.message = err.message.replace("candidates[", f"{list_name}[")
    elif field == "prompt":
        err.field = prompt_field
    return err


class Comparisons:
    """The candidates' pairs read round by round, with what the reads cost each candidate."""

    def __init__(self, scorer: Scorer, job: PairJob, prompt, texts: list[str], list_name: str, prompt_field: str):
        self.scorer, self.job, self.prompt, self.texts = scorer, job, prompt, texts
        self.list_name, self.prompt_field = list_name, prompt_field
        self.tokens = [0] * len(texts)
        self.truncated = [False] * len(texts)
        self.read: Preferences | None = None

    async def __call__(self, pairs: list[tuple[int, int]]) -> list[float]:
        try:
            read = await self.scorer.preferences(self.job, self.prompt, self.texts, pairs)
        except APIError as err:
            raise as_request_field(err, self.list_name, self.prompt_field) from err
        self.tokens = [a + b for a, b in zip(self.tokens, read.tokens)]
        self.truncated = [a or b for a, b in zip(self.truncated, read.truncated)]
        self.read = read
        return read.probabilities


async def compare_pairwise(scorer: Scorer, body: CompareRequest, job: PairJob) -> CompareResponse:
    """Every pair of responses read: the win matrix is the model's own P(i > j), the scores
    the Bradley–Terry fit to it, the winner the strongest (ties within tie_margin)."""
    refuse_pointwise_options(body)
    texts = texts_of(body.responses, "responses")
    if len(texts) > PAIRWISE_DEFAULT_MAX:
        raise APIError(422, "invalid_request", f"{len(texts)} responses make {len(texts) * (len(texts) - 1) // 2} "
                       f"pairs; a pairwise model compares up to {PAIRWISE_DEFAULT_MAX} (/v1/rerank ranks more with "
                       "a Swiss or knockout schedule)", "responses")
    compared = Comparisons(scorer, job, prompt_of(body.prompt, body.messages, "prompt"), texts,
                           "responses", "prompt")
    pairs = list(itertools.combinations(range(len(texts)), 2))
    probabilities = await compared(pairs)
    games = [Game(i, j, p) for (i, j), p in zip(pairs, probabilities)]
    strengths = bradley_terry(len(texts), games)
    matrix = [[0.5] * len(texts) for _ in texts]
    for g in games:
        matrix[g.first][g.second], matrix[g.second][g.first] = g.p_first, 1.0 - g.p_first
    verdict = best(strengths, body.tie_margin)
    return CompareResponse(
        model=compared.read.model, revision=compared.read.revision, kind=ModelKind.pairwise, normalized=False,
        winner=verdict.winner, tied=verdict.tied, pairwise=matrix if body.pairwise is not False else None,
        results=[CompareResult(index=i, score=s, win_probability=p, num_tokens=compared.tokens[i],
                               truncated=compared.truncated[i])
                 for i, (s, p) in enumerate(zip(strengths, softmax(strengths)))],
        usage=Usage(total_tokens=sum(compared.tokens)),
    )


async def rerank_pairwise(scorer: Scorer, body: RerankRequest, job: PairJob) -> RerankResponse:
    """The documents ranked by their strengths from the games `schedule` calls for (one
    document is ranked without a game); top_n cuts the list (top_n 1 with a knockout is
    best-of-n in n - 1 comparisons)."""
    refuse_pointwise_options(body)
    if body.aggregation not in (None, "model") or body.weights is not None:
        field = "weights" if body.weights is not None else "aggregation"
        raise APIError(422, "invalid_request", "a pairwise model ranks by its comparisons alone", field)
    if body.truncate_prompt_tokens is not None:
        raise APIError(422, "invalid_request", "a pairwise model cuts each part of a pair to its own limits",
                       "truncate_prompt_tokens")
    texts = texts_of(body.documents, "documents")
    compared = Comparisons(scorer, job, prompt_of(body.query, body.messages, "query"), texts,
                           "documents", "query")
    schedule = resolve_schedule(body.schedule or "auto", len(texts), AUTO_ALL_PAIRS_MAX)
    played = (await play(len(texts), compared, schedule, body.rounds) if len(texts) > 1
              else Played(schedule, [], [0.0]))
    runner = scorer.runner(body.model)
    order = sorted(range(len(texts)), key=lambda i: (-played.strengths[i], i))[:body.top_n or None]
    results = [RerankResult(index=i, relevance_score=played.strengths[i], score=played.strengths[i],
                            document=RerankDocument(text=texts[i]) if body.return_documents else None,
                            num_tokens=compared.tokens[i], truncated=compared.truncated[i]) for i in order]
    total = sum(compared.tokens)
    return RerankResponse(
        id=f"rerank-{uuid.uuid4().hex}", model=runner.name, revision=runner.model.revision, kind=ModelKind.pairwise,
        normalized=False, aggregation="model", schedule=played.schedule, comparisons=len(played.games),
        results=results, usage=RerankUsage(prompt_tokens=total, total_tokens=total))
