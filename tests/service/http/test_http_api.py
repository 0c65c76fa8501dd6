"""The HTTP API end to end: a real uvicorn server on a loopback socket serving the tiny
models, driven by httpx. Numbers must equal the unbatched reference `RewardModel.score`,
errors must be JSON naming the offending field, and the OpenAPI schema must describe
what the server really sends."""

from __future__ import annotations

import asyncio
import math
import threading

import httpx
import pytest
from http_helpers import (
    LONG_TEXT,
    assert_error,
    assert_result_matches,
    live_server,
    poll,
    reference,
    sample_items,
    served_input,
    wait_until_loaded,
)
from sched_helpers import intercept_forward
from tiny_models import BUILDERS, HELPSTEER

from service.app import create_app
from service.config import ModelConfig, Settings
from service.engine.registry import ModelRegistry
from service.engine.scheduler import dedup_key
from service.protocol.scoring import ChatItem, ScoreRequest, StepsItem, TextItem, TokensItem

MODEL_NAMES = list(BUILDERS)
MAX_ITEMS = 8
PAIR = {"prompt": "Hi", "response": "Hello!"}
STEPS = {"prompt": "What is 3 + 4?", "steps": ["3 + 4 = 7", "The answer is 7."]}


def _settings(model_dirs: dict, **extra) -> Settings:
    return Settings(models=[ModelConfig(name=name, path=str(path)) for name, path in model_dirs.items()], **extra)


@pytest.fixture(scope="module")
def app(tiny_model_dirs):
    """Every tiny model, with batch budgets small enough that one request spans batches."""
    return create_app(_settings(tiny_model_dirs, batching={"max_batch_size": 2, "max_batch_tokens": 120},
                                server={"max_items_per_request": MAX_ITEMS}))


@pytest.fixture(scope="module")
def base_url(app):
    with live_server(app) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            ready = wait_until_loaded(client)
        assert ready.status_code == 200, ready.text
        yield url


@pytest.fixture
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


# ---- lifecycle ------------------------------------------------------------------------


def test_health_when_everything_loaded(client):
    live = client.get("/health/live")
    assert live.status_code == 200 and live.json()["status"] == "live"
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "models": {name: "ready" for name in MODEL_NAMES}}


def test_readiness_turns_from_loading_to_ready(tiny_model_dirs, monkeypatch):
    """Held before loading: live at once, not ready, models 'loading' and refusing to
    score; released: ready within a bounded wait, and scoring."""
    release = threading.Event()
    original = ModelRegistry.load_all

    def gated_load_all(self):
        assert release.wait(timeout=60), "test never released loading"
        original(self)

    monkeypatch.setattr(ModelRegistry, "load_all", gated_load_all)
    app = create_app(_settings({"llama-scalar": tiny_model_dirs["llama-scalar"]}))
    try:
        with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("/health/live").status_code == 200
            loading = client.get("/health/ready")
            assert loading.status_code == 503
            assert loading.json() == {"status": "loading", "models": {"llama-scalar": "loading"}}
            card = client.get("/v1/models/llama-scalar").json()
            assert {k: card[k] for k in ("id", "name", "status")} == {"id": "llama-scalar", "name": "llama-scalar",
                                                                     "status": "loading"}
            assert "kind" not in card and "max_model_len" not in card  # known once loaded
            assert_error(client.post("/v1/score", json={"items": [PAIR]}), 503, "model_loading", "model")

            release.set()
            ready = poll(lambda: client.get("/health/ready"), lambda r: r.status_code == 200, timeout=60)
            assert ready.json() == {"status": "ready", "models": {"llama-scalar": "ready"}}
            assert client.post("/v1/score", json={"items": [PAIR]}).status_code == 200
    finally:
        release.set()


def test_failed_model_reported_while_others_serve(tiny_model_dirs, tmp_path):
    dirs = {"llama-scalar": tiny_model_dirs["llama-scalar"], "ghost": tmp_path / "does-not-exist"}
    with live_server(create_app(_settings(dirs))) as url, httpx.Client(base_url=url, timeout=30) as client:
        ready = wait_until_loaded(client)
        assert ready.status_code == 503
        assert ready.json() == {"status": "failed", "models": {"llama-scalar": "ready", "ghost": "failed"}}
        assert client.get("/health/live").status_code == 200

        cards = {card["name"]: card for card in client.get("/v1/models").json()["models"]}
        assert cards["ghost"] == {"name": "ghost", "status": "failed", "error": cards["ghost"]["error"]}
        assert "does-not-exist" in cards["ghost"]["error"]
        assert cards["llama-scalar"]["status"] == "ready" and cards["llama-scalar"]["kind"] == "scalar"

        error = assert_error(client.post("/v1/score", json={"model": "ghost", "items": [PAIR]}), 503,
                             "model_failed", "model")
        assert "does-not-exist" in error["message"]
        scored = client.post("/v1/score", json={"model": "llama-scalar", "items": [PAIR]})
        assert scored.status_code == 200 and scored.json()["model"] == "llama-scalar"


# ---- models ---------------------------------------------------------------------------


def test_model_cards_describe_loaded_models(client, load_tiny):
    listed = client.get("/v1/models")
    assert listed.status_code == 200
    cards = listed.json()["models"]
    assert [card["name"] for card in cards] == MODEL_NAMES
    for card in cards:
        info = load_tiny(card["name"]).info
        detail = client.get(f"/v1/models/{card['name']}").json()
        assert {k: detail[k] for k in card} == card
        assert {k: detail[k] for k in ("id", "object", "owned_by")} == {"id": card["name"], "object": "model",
                                                                         "owned_by": "rewardserve"}
        assert detail["max_model_len"] == card["max_length"]
        assert card["status"] == "ready"
        assert card["kind"] == info.kind.value
        assert card["revision"] == info.revision and card["revision"].startswith("sha256:")
        assert len(card["revision"]) == len("sha256:") + 64
        assert card["max_length"] == info.max_length
        assert card["architecture"] == info.architecture
        assert card.get("dimensions") == info.dimensions
        assert card.get("step_aggregate") == info.step_aggregate
        assert (card["device"], card["dtype"]) == ("cpu", "float32")
    by_name = {card["name"]: card for card in cards}
    assert by_name["llama-helpsteer"]["dimensions"] == HELPSTEER
    assert by_name["qwen2-prm"]["step_aggregate"] == "min"
    assert by_name["mistral-prm"]["step_aggregate"] == "product"
    assert by_name["bert-scalar"]["max_length"] == 128


def test_unknown_model_card_is_404(client):
    assert_error(client.get("/v1/models/no-such-model"), 404, "model_not_found", "name")


# ---- scoring --------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_score_matches_unbatched_reference(name, app, client, load_tiny, monkeypatch):
    """Every accepted item form, mixed lengths, more items than a batch holds: the results
    come back in request order with the numbers of each item scored alone."""
    model = load_tiny(name)
    items = sample_items(model)
    served = app.state.registry.runners[name].model
    batch_sizes: list[int] = []
    intercept_forward(
        monkeypatch, served, lambda forward: lambda batch: batch_sizes.append(len(batch)) or forward(batch)
    )

    response = client.post("/v1/score", json={"model": name, "items": items})

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["revision"], body["kind"]) == (name, model.revision, model.spec.kind.value)
    assert [r["index"] for r in body["results"]] == list(range(len(items)))
    expected = [reference(model, item) for item in items]
    for result, want in zip(body["results"], expected, strict=True):
        assert_result_matches(result, want)
    assert body["usage"] == {"total_tokens": sum(e.num_tokens for e in expected)}
    distinct = {dedup_key(model.encode(served_input(item))) for item in items}
    assert len(batch_sizes) >= 2 and max(batch_sizes) <= 2
    assert sum(batch_sizes) == len(distinct)  # identical encodings are computed once


def test_request_without_model_uses_default(client, load_tiny):
    response = client.post("/v1/score", json={"items": [PAIR]})
    assert response.status_code == 200
    assert response.json()["model"] == MODEL_NAMES[0]
    assert_result_matches(response.json()["results"][0], reference(load_tiny(MODEL_NAMES[0]), PAIR))


@pytest.mark.parametrize("side", ["left", "right"])
def test_too_long_input_is_rejected_unless_truncated(side, client, load_tiny):
    item = {"prompt": "Summarize.", "response": " ".join([LONG_TEXT] * 6)}
    assert_error(client.post("/v1/score", json={"model": "llama-scalar", "items": [PAIR, item]}), 422,
                 "input_too_long", "items[1]")

    response = client.post("/v1/score", json={"model": "llama-scalar", "truncate": side, "items": [PAIR, item]})
    assert response.status_code == 200, response.text
    model = load_tiny("llama-scalar")
    short, cut = response.json()["results"]
    assert cut["truncated"] is True and cut["num_tokens"] == model.info.max_length
    assert short["truncated"] is False
    assert_result_matches(cut, reference(model, item, truncate=side))
    assert_result_matches(short, reference(model, PAIR))


def test_concurrent_requests_get_their_own_results(base_url, load_tiny):
    """16 requests in flight at once, over several models and item forms: each response
    carries exactly its own items' numbers."""
    requests = []
    for i in range(16):
        name = MODEL_NAMES[i % len(MODEL_NAMES)]
        items = sample_items(load_tiny(name))
        requests.append((name, [items[i % len(items)], items[(i + 1) % len(items)]]))

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
            calls = [client.post("/v1/score", json={"model": name, "items": items}) for name, items in requests]
            return await asyncio.wait_for(asyncio.gather(*calls), timeout=120)

    responses = asyncio.run(send_all())
    for (name, items), response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["model"] == name
        for result, item in zip(response.json()["results"], items, strict=True):
            assert_result_matches(result, reference(load_tiny(name), item))


AGGREGATES = {
    "min": min,
    "product": math.prod,
    "last": lambda rewards: rewards[-1],
    "mean": lambda rewards: sum(rewards) / len(rewards),
}


@pytest.mark.parametrize("how", list(AGGREGATES))
def test_process_score_aggregates(how, client, load_tiny):
    items = [STEPS, {"prompt": "Natalia sold clips.", "steps": ["She sold 48.", "Then 24.", "72 in all."]}]
    response = client.post("/v1/score", json={"model": "qwen2-prm", "aggregate": how, "items": items})
    assert response.status_code == 200, response.text
    for result, item in zip(response.json()["results"], items, strict=True):
        rewards = reference(load_tiny("qwen2-prm"), item).step_rewards
        assert result["step_rewards"] == pytest.approx(rewards, abs=1e-5, rel=0)
        assert result["score"] == pytest.approx(AGGREGATES[how](rewards), abs=1e-5, rel=0)


def test_aggregate_on_scalar_model_is_rejected(client):
    response = client.post("/v1/score", json={"model": "llama-scalar", "aggregate": "mean", "items": [PAIR]})
    assert_error(response, 422, field="aggregate")


# ---- errors ---------------------------------------------------------------------------

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
ERROR_CASES = {
    "unknown model": ({"model": "nope", "items": [PAIR]}, 404, "model_not_found", "model"),
    "missing response": ({"items": [{"prompt": "Hi"}]}, 422, "invalid_request", "items[0].response"),
    "token of wrong type": ({"items": [PAIR, {"input_ids": [1, 2, "three"]}]}, 422, "invalid_request",
                            "items[1].input_ids[2]"),
    "empty items": ({"items": []}, 422, "invalid_request", "items"),
    "items not a list": ({"items": "Hi"}, 422, "invalid_request", "items"),
    "item not an object": ({"items": [PAIR, 5]}, 422, None, "items[1]"),
    "item is null": ({"items": [None]}, 422, None, "items[0]"),
    "token outside vocabulary": ({"model": "llama-scalar", "items": [{"input_ids": [1, 10**6]}]}, 422,
                                 "invalid_input", "items[0].input_ids[1]"),
    "negative token": ({"model": "llama-scalar", "items": [{"input_ids": [-1]}]}, 422, "invalid_input",
                       "items[0].input_ids[0]"),
    "prompt_length past the end": ({"model": "llama-scalar", "items": [{"input_ids": [1, 2], "prompt_length": 3}]},
                                   422, "invalid_input", "items[0].prompt_length"),
    "gating model without prompt_length": ({"model": "llama-gating", "items": [{"input_ids": [1, 2, 3]}]}, 422,
                                           "invalid_input", "items[0].prompt_length"),
    "steps to scalar model": ({"model": "llama-scalar", "items": [STEPS]}, 422, "invalid_input", "items[0].steps"),
    "text to process model": ({"model": "qwen2-prm", "items": [STEPS, PAIR]}, 422, "invalid_input",
                              "items[1].steps"),
    "chat to process model": ({"model": "mistral-prm", "items": [{"messages": CHAT}]}, 422, "invalid_input",
                              "items[0].steps"),
    "step containing the marker": ({"model": "qwen2-prm", "items": [{"prompt": "Q", "steps": ["a", "b<extra_0>"]}]},
                                   422, "invalid_input", "items[0].steps[1]"),
    "empty steps": ({"model": "qwen2-prm", "items": [{"prompt": "Q", "steps": []}]}, 422, "invalid_request",
                    "items[0].steps"),
    "bad chat role": ({"items": [{"messages": [{"role": "wizard", "content": "Hi"}, CHAT[1]]}]}, 422,
                      "invalid_input", "items[0].messages[0].role"),
    "chat not ending with assistant": ({"items": [{"messages": CHAT[::-1]}]}, 422, "invalid_input",
                                       "items[0].messages"),
    "unknown top-level field": ({"items": [PAIR], "temperature": 1}, 422, "invalid_request", "temperature"),
    "unknown item field": ({"items": [{**PAIR, "weight": 2}]}, 422, "invalid_request", "items[0].weight"),
    "bad truncate": ({"items": [PAIR], "truncate": "middle"}, 422, "invalid_request", "truncate"),
    "bad aggregate": ({"model": "qwen2-prm", "items": [STEPS], "aggregate": "max"}, 422, "invalid_request",
                      "aggregate"),
    "too many items": ({"items": [PAIR] * (MAX_ITEMS + 1)}, 422, "too_many_items", "items"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_responses_name_the_field(case, client):
    body, status, code, field = ERROR_CASES[case]
    assert_error(client.post("/v1/score", json=body), status, code, field)


def test_invalid_json_is_400(client):
    response = client.post("/v1/score", content=b'{"items": [', headers={"content-type": "application/json"})
    assert_error(response, 400, "invalid_json", None)


def test_unknown_route_and_method_are_json_errors(client):
    assert_error(client.get("/v2/nothing"), 404, "not_found", None)
    assert_error(client.get("/v1/score"), 405, "method_not_allowed", None)


# ---- OpenAPI --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi(base_url) -> dict:
    response = httpx.get(f"{base_url}/openapi.json", timeout=30)
    assert response.status_code == 200
    return response.json()


def _resolve(schema: dict, spec: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def assert_conforms(value, schema: dict, spec: dict, where: str = "$") -> None:
    """`value` is described by the OpenAPI `schema`: no undeclared properties, every
    required one present, every value of a declared type (a small JSON-Schema subset)."""
    schema = _resolve(schema, spec)
    alternatives = schema.get("anyOf") or schema.get("oneOf")
    if alternatives:
        errors = []
        for alternative in alternatives:
            try:
                assert_conforms(value, alternative, spec, where)
                return
            except AssertionError as err:
                errors.append(str(err))
        raise AssertionError(f"{where}: matches no alternative: {errors}")
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    kind = schema.get("type")
    if kind == "object":
        assert isinstance(value, dict), f"{where}: not an object"
        properties = schema.get("properties", {})
        missing = set(schema.get("required", ())) - set(value)
        assert not missing, f"{where}: required {missing} absent"
        for key, item in value.items():
            if key in properties:
                assert_conforms(item, properties[key], spec, f"{where}.{key}")
            else:  # a map (dimensions, models) declares its values; anything else is undocumented
                assert isinstance(schema.get("additionalProperties"), dict), f"{where}: {key!r} is undocumented"
                assert_conforms(item, schema["additionalProperties"], spec, f"{where}.{key}")
    elif kind == "array":
        assert isinstance(value, list), f"{where}: not an array"
        for i, item in enumerate(value):
            assert_conforms(item, schema.get("items", {}), spec, f"{where}[{i}]")
    elif kind is not None:
        types = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "null": type(None)}
        assert isinstance(value, types[kind]), f"{where}: {value!r} is not {kind}"
        if kind in ("integer", "number"):
            assert not isinstance(value, bool), f"{where}: {value!r} is not {kind}"


def _example(schema: dict, spec: dict):
    """The smallest instance of `schema`: required properties only, shortest arrays."""
    schema = _resolve(schema, spec)
    if "enum" in schema:
        return schema["enum"][0]
    if "anyOf" in schema or "oneOf" in schema:
        options = [s for s in schema.get("anyOf") or schema["oneOf"] if s.get("type") != "null"]
        return _example(options[0], spec)
    kind = schema.get("type")
    if kind == "object":
        return {key: _example(schema["properties"][key], spec) for key in schema.get("required", ())}
    if kind == "array":
        return [_example(schema["items"], spec) for _ in range(max(1, schema.get("minItems", 1)))]
    return {"string": "text", "integer": max(1, schema.get("minimum", 1)), "number": 0.5, "boolean": True}[kind]


def test_openapi_lists_every_route(openapi):
    paths = openapi["paths"]
    assert set(paths) >= {"/v1/score", "/v1/models", "/v1/models/{name}", "/health/live", "/health/ready"}
    assert "post" in paths["/v1/score"]
    score_responses = paths["/v1/score"]["post"]["responses"]
    assert {"200", "404", "422", "503"} <= set(score_responses)
    def refs(schema: dict) -> list[str]:
        return [form["$ref"].rsplit("/", 1)[-1] for form in schema.get("oneOf") or schema["anyOf"]]

    # ours, or vLLM's for a body in vLLM's form
    assert refs(score_responses["200"]["content"]["application/json"]["schema"]) == ["ScoreResponse",
                                                                                    "VllmScoreResponse"]
    assert refs(paths["/v1/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]) == [
        "ScoreRequest", "VllmScoreRequest"]


def test_openapi_item_schema_is_the_four_forms(openapi):
    request = openapi["components"]["schemas"]["ScoreRequest"]
    items = request["properties"]["items"]["items"]
    forms = items.get("oneOf") or items.get("anyOf")
    names = [form["$ref"].rsplit("/", 1)[-1] for form in forms]
    assert names == ["TextItem", "ChatItem", "TokensItem", "StepsItem"]
    required = {name: set(openapi["components"]["schemas"][name]["required"]) for name in names}
    assert required == {"TextItem": {"prompt", "response"}, "ChatItem": {"messages"},
                        "TokensItem": {"input_ids"}, "StepsItem": {"prompt", "steps"}}
    for name in names:
        assert openapi["components"]["schemas"][name]["additionalProperties"] is False


def test_request_built_from_the_schema_validates(openapi):
    """A request made of the smallest instance of each item form the schema documents is
    accepted, and each item is read as the form the schema names."""
    schema = openapi["components"]["schemas"]["ScoreRequest"]
    body = _example(schema, openapi)
    forms = schema["properties"]["items"]["items"]["oneOf"]
    body["items"] = [_example(form, openapi) for form in forms]
    parsed = ScoreRequest.model_validate(body)
    assert [type(item) for item in parsed.items] == [TextItem, ChatItem, TokensItem, StepsItem]


def test_openapi_describes_real_responses(openapi, client):
    """Real bodies of every kind conform to the documented schemas, field by field."""
    schemas = openapi["components"]["schemas"]
    for name, item in (("llama-helpsteer", PAIR), ("llama-gating", PAIR), ("qwen2-prm", STEPS)):
        body = client.post("/v1/score", json={"model": name, "items": [item], "truncate": "right"}).json()
        assert_conforms(body, schemas["ScoreResponse"], openapi)
        assert set(body["results"][0]) <= set(schemas["ItemResult"]["properties"])
        assert set(body) <= set(schemas["ScoreResponse"]["properties"])
    assert_conforms(client.get("/v1/models").json(), schemas["ModelList"], openapi)
    assert_conforms(client.get("/v1/models/llama-gating").json(), schemas["ModelDetail"], openapi)
    assert_conforms(client.get("/health/ready").json(), schemas["Health"], openapi)
    assert_conforms(client.post("/v1/score", json={"items": []}).json(), schemas["ErrorBody"], openapi)
    assert_conforms(client.post("/v1/score", json={"model": "nope", "items": [PAIR]}).json(),
                    schemas["ErrorBody"], openapi)
