"""The rewardserve.v1.RewardService (service/grpc/proto/rewardserve.proto). Requests are
validated by the same request models as HTTP's and run by the same core operations, so a
gRPC call gets the numbers and the errors an HTTP request gets; an `APIError` becomes the
matching gRPC status (service.grpc.calls)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from google.protobuf import json_format
from pydantic import ValidationError

from models.heads import RewardOutput
from service.core import operations
from service.core.errors import APIError, status_message, validation_error
from service.core.score_request import parse_score_request, score_job
from service.core.scoring import Scored, Scorer
from service.grpc.calls import (
    abort,
    deadline_ms,
    grpc_code,
    internal_error,
    retry_after,
    serve_concurrently,
)
from service.grpc.proto import rewardserve_pb2 as pb
from service.grpc.proto import rewardserve_pb2_grpc as pb_grpc
from service.protocol.catalog import ModelCard
from service.protocol.ranking import CompareRequest, RerankRequest, StepsRequest
from service.protocol.scoring import ScoreRequest

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RewardService"].full_name


# ---- requests and results -------------------------------------------------------------


def _item_body(index: int, item: pb.Item) -> dict:
    return {**_form_body(index, item), **_context(item)}


def _form_body(index: int, item: pb.Item) -> dict:
    form = item.WhichOneof("form")
    if form in ("text", "chat"):
        body = ({"prompt": item.text.prompt, "response": item.text.response} if form == "text" else
                {"messages": [{"role": m.role, "content": m.content} for m in item.chat.messages]})
        form_message = getattr(item, form)
        if form_message.HasField("reference"):
            body["reference"] = form_message.reference
        return body
    if form == "tokens":
        body = {"input_ids": list(item.tokens.input_ids)}
        if item.tokens.HasField("prompt_length"):
            body["prompt_length"] = item.tokens.prompt_length
        return body
    if form == "steps":
        return {"prompt": item.steps.prompt, "steps": list(item.steps.steps)}
    raise APIError(422, "invalid_request", "an item must set one of text, chat, tokens or steps", f"items[{index}]")


def _context(item: pb.Item) -> dict:
    """The item's context fields it sets, as JSON values (a whole number as an integer, as
    JSON would carry it; protobuf's Value holds every number as a double)."""
    body = {}
    if item.HasField("ground_truth"):
        body["ground_truth"] = _whole(json_format.MessageToDict(item.ground_truth))
    if item.HasField("data_source"):
        body["data_source"] = item.data_source
    if item.HasField("extra_info"):
        body["extra_info"] = _whole(json_format.MessageToDict(item.extra_info))
    return body


def _whole(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    return value


def _options(request) -> dict:
    """The request options a message sets, as HTTP body fields (empty strings and false: not set)."""
    fields = request.DESCRIPTOR.fields_by_name
    body = {name: getattr(request, name) for name in _OPTIONS if name in fields and getattr(request, name)}
    for name in ("timeout_ms", "deterministic"):
        if name in fields and request.HasField(name):
            body[name] = getattr(request, name)
    return body


_OPTIONS = ("model", "truncate", "aggregate", "normalize", "priority", "cache", "on_item_error", "adapter",
            "token_rewards", "pairwise_mode", "schedule")


def score_request(request: pb.ScoreRequest) -> ScoreRequest:
    """The core's request model (the one HTTP validates with) for a gRPC ScoreRequest,
    validated by the same rules (so the same input gets the same error)."""
    return parse_score_request({"items": [_item_body(i, item) for i, item in enumerate(request.items)],
                                **_options(request)})


def item_result(index: int, out: RewardOutput) -> pb.ItemResult:
    result = pb.ItemResult(index=index, score=out.score, num_tokens=out.num_tokens, truncated=out.truncated,
                           cached=getattr(out, "cached", False))
    if out.dimensions is not None:
        result.dimensions.update(out.dimensions)
    if out.gating_weights is not None:
        result.gating_weights.extend(out.gating_weights)
    if out.step_rewards is not None:
        result.step_rewards.extend(out.step_rewards)
    if out.token_rewards is not None:
        dense = out.token_rewards
        result.token_rewards.CopyFrom(pb.TokenRewards(start=dense.start, token_ids=dense.token_ids,
                                                      values=dense.values))
    for name, value in (getattr(out, "components", None) or {}).items():  # a pipeline's
        result.components[name].CopyFrom(pb.ComponentResult(
            value=value.value, status=value.status, message=value.message or "", spread=value.spread,
            extras=value.extras))
    if getattr(out, "uncertainty", None) is not None:
        result.uncertainty = out.uncertainty
    return result


def score_response(scored: Scored) -> pb.ScoreResponse:
    return pb.ScoreResponse(
        model=scored.model, revision=scored.revision, kind=scored.kind.value,
        results=[pb.ItemResult(index=i, error=error_message(scored.errors[i])) if out is None else item_result(i, out)
                 for i, out in enumerate(scored.outputs)],
        usage=pb.Usage(total_tokens=scored.total_tokens), normalized=getattr(scored, "normalized", False),
    )


def error_message(err: APIError) -> pb.Error:
    retry = retry_after(err)
    return pb.Error(grpc_code=grpc_code(err).value[0], http_status=err.status, code=err.code,
                    message=status_message(err), field=err.field or "", retry_after_s=float(retry) if retry else 0.0)


def model_card(card: ModelCard) -> pb.ModelCard:
    fields = card.model_dump(mode="json", exclude_none=True)
    return pb.ModelCard(
        **{name: value for name, value in fields.items() if name in pb.ModelCard.DESCRIPTOR.fields_by_name}
    )


# ---- the operations: the core's own, so HTTP and gRPC score and rank alike -------------


def _candidate(index: int, candidate: pb.Candidate, list_name: str) -> dict:
    form = candidate.WhichOneof("form")
    if form == "text":
        return {"text": candidate.text}
    if form == "steps":
        return {"steps": list(candidate.steps.steps)}
    if form == "tokens":
        return _item_body(index, pb.Item(tokens=candidate.tokens))
    raise APIError(422, "invalid_request", "a candidate must set one of text, steps or tokens",
                   f"{list_name}[{index}]")


def _ranking_body(request, deadline: float | None, **fields) -> dict:
    """A ranking request body (JSON values) from a gRPC request: its options, the shared `prompt`/`query` and
    `messages` when set, and `fields`; the call's deadline bounds timeout_ms."""
    body = _options(request)
    for name in ("prompt", "query"):
        if name in request.DESCRIPTOR.fields_by_name and request.HasField(name):
            body[name] = getattr(request, name)
    if "messages" in request.DESCRIPTOR.fields_by_name and request.messages:
        body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
    given = body.get("timeout_ms")
    if deadline is not None and (given is None or 0 < deadline < given):
        body["timeout_ms"] = max(deadline, 0.001)
    return {**body, **fields}


def _validated(model, body: dict):
    try:
        return model.model_validate(body)
    except ValidationError as err:
        raise validation_error(err.errors()) from None


def _to_message(response, message_type, **replace):
    """A core response model as the gRPC message of the same shape."""
    data = {**response.model_dump(mode="json"), **replace}
    return json_format.ParseDict(data, message_type(), ignore_unknown_fields=True)


async def score(scorer: Scorer, request: pb.ScoreRequest, deadline: float | None) -> pb.ScoreResponse:
    return score_response(await scorer.score(score_job(score_request(request), deadline)))


async def compare(scorer: Scorer, request: pb.CompareRequest, deadline: float | None) -> pb.CompareResponse:
    responses = [_candidate(i, c, "responses") for i, c in enumerate(request.responses)]
    fields = {"responses": responses, "tie_margin": request.tie_margin}
    if request.HasField("pairwise"):
        fields["pairwise"] = request.pairwise
    body = _validated(CompareRequest, _ranking_body(request, deadline, **fields))
    response = await operations.compare_responses(scorer, body)
    return _to_message(response, pb.CompareResponse, pairwise=[{"values": row} for row in response.pairwise or []])


async def rerank(scorer: Scorer, request: pb.RerankRequest, deadline: float | None) -> pb.RerankResponse:
    fields = {"documents": [_candidate(i, c, "documents") for i, c in enumerate(request.documents)]}
    if request.top_n:
        fields["top_n"] = request.top_n
    if request.HasField("return_documents"):
        fields["return_documents"] = request.return_documents
    if request.aggregation:
        fields["aggregation"] = request.aggregation
    if request.weights:
        fields["weights"] = dict(request.weights)
    if request.HasField("rounds"):
        fields["rounds"] = request.rounds
    body = _validated(RerankRequest, _ranking_body(request, deadline, **fields))
    return _to_message(await operations.rerank_documents(scorer, body), pb.RerankResponse)


async def steps(scorer: Scorer, request: pb.StepsRequest, deadline: float | None) -> pb.StepsResponse:
    fields = {"items": [_item_body(i, item) for i, item in enumerate(request.items)]}
    if request.HasField("threshold"):
        fields["threshold"] = request.threshold
    body = _validated(StepsRequest, _ranking_body(request, deadline, **fields))
    return _to_message(await operations.score_steps(scorer, body), pb.StepsResponse)


# ---- the service ----------------------------------------------------------------------


class RewardService(pb_grpc.RewardServiceServicer):
    def __init__(self, scorer: Scorer):
        self.scorer = scorer

    async def Score(self, request: pb.ScoreRequest, context) -> pb.ScoreResponse:
        return await self._unary(score, request, context)

    async def ScoreStream(self, requests, context) -> AsyncIterator[pb.ScoreStreamResponse]:
        async def handle(request: pb.ScoreRequest) -> pb.ScoreStreamResponse:
            try:
                response = await score(self.scorer, request, deadline_ms(context))
            except APIError as err:
                return pb.ScoreStreamResponse(request_id=request.request_id, error=error_message(err))
            except Exception as err:  # noqa: BLE001 - one request's failure does not end the stream
                return pb.ScoreStreamResponse(request_id=request.request_id, error=error_message(internal_error(err)))
            return pb.ScoreStreamResponse(request_id=request.request_id, response=response)

        async for response in serve_concurrently(requests, handle):
            yield response

    async def _unary(self, work, request, context):
        try:
            return await work(self.scorer, request, deadline_ms(context))
        except APIError as err:
            await abort(context, err)
        except Exception as err:  # noqa: BLE001 - reported as INTERNAL, like HTTP's 500
            await abort(context, internal_error(err))

    async def Compare(self, request: pb.CompareRequest, context) -> pb.CompareResponse:
        return await self._unary(compare, request, context)

    async def Rerank(self, request: pb.RerankRequest, context) -> pb.RerankResponse:
        return await self._unary(rerank, request, context)

    async def Steps(self, request: pb.StepsRequest, context) -> pb.StepsResponse:
        return await self._unary(steps, request, context)

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[model_card(card) for card in self.scorer.model_cards()])
