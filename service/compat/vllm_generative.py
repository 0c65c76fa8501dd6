"""vLLM's generative scoring (`/generative_scoring`): per item, the query's and the item's
token ids end to end, and the probability of the first of two label tokens as the next token,
of the two. A label-token judge (spec.label_tokens) computes exactly that, so the request is
scored by one, its labels being the request's `label_token_ids`; the response is vLLM's score
list (service.compat.vllm)."""

from __future__ import annotations

import asyncio
import time
import uuid

from pydantic import Field

from models.encoding import single_token_id
from models.inputs import ScoreInput, TokenIds
from models.reward_model import RewardModel
from service.compat.vllm import ScoreData, VllmScoreResponse, scored_request, vllm_usage
from service.compat.vllm_inputs import VllmRequest, checked
from service.core.errors import APIError
from service.core.scoring import Scorer
from service.pipelines.rules import RuleInput


class GenerativeScoringRequest(VllmRequest):
    query: str | list[int] = Field(description="text (tokenized with add_special_tokens) or token ids")
    items: list[str] | list[list[int]] = Field(min_length=1, description="texts (no special tokens added) or ids")
    label_token_ids: list[int] = Field(min_length=1, description="the judge model's two labels, the scored one first")
    apply_softmax: bool = Field(True, description="true: normalized over the labels (the only reading served)")
    item_first: bool = Field(False, description="the item's ids before the query's")
    add_special_tokens: bool = Field(True, description="for the query text")


def judge_labels(model: RewardModel, asked: list[int]) -> None:
    """Refuse a request this model does not answer: it must be a label-token judge whose
    labels are the requested ids, in the same order."""
    spec = model.spec.label_tokens
    if spec is None:
        raise APIError(422, "invalid_request", f"{model.name} is not a label-token judge (label_tokens in its spec); "
                       "generative scoring needs one", "model")
    tokenizer = model.encoder.tokenizer
    own = [single_token_id(tokenizer, label, "label") for label in spec.labels]
    if asked != own:
        raise APIError(422, "invalid_request", f"{model.name} answers with the labels {spec.labels}, token ids "
                       f"{own}: give those, in that order", "label_token_ids")


async def generative_scoring(scorer: Scorer, body: GenerativeScoringRequest) -> VllmScoreResponse:
    """vLLM generative scoring by a label-token judge: each item's input is the query's ids
    then the item's (`item_first`: the other way round), read as they are (no judge
    template: the prompt is the caller's), scored P(label_token_ids[0]) of the two."""
    if not body.apply_softmax:
        raise APIError(422, "invalid_request", "only probabilities normalized over the two labels are served",
                       "apply_softmax")
    if isinstance(body.query, str):
        checked("query", body.query)
    for i, item in enumerate(body.items):
        if isinstance(item, str):
            checked(f"items[{i}]", item)

    async def build(model: RewardModel) -> list[ScoreInput]:
        judge_labels(model, body.label_token_ids)
        tokenizer = model.encoder.tokenizer

        def ids(text: str | list[int], specials: bool) -> list[int]:
            return tokenizer.encode(text, add_special_tokens=specials, verbose=False) if isinstance(text, str) \
                else list(text)

        def tokenize() -> list[ScoreInput]:
            query = ids(body.query, body.add_special_tokens)
            rows = [(ids(item, False), query) for item in body.items]
            return [TokenIds(tuple(item + query if body.item_first else query + item)) for item, query in rows]

        return await asyncio.to_thread(tokenize)

    query = body.query if isinstance(body.query, str) else None
    texts = [RuleInput(item, query) if isinstance(item, str) else None for item in body.items]
    scored = await scored_request(scorer, body, build, texts, "items")
    data = [ScoreData(index=i, score=out.score, truncated=out.truncated) for i, out in enumerate(scored.outputs)]
    return VllmScoreResponse(id=f"generative-scoring-{uuid.uuid4().hex}", created=int(time.time()),
                             model=scored.model, data=data, usage=vllm_usage(scored.total_tokens))
