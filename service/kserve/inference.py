"""Scoring over KServe v2 (Open Inference Protocol, Triton), independent of transport:
the data plane (service/kserve/dataplane.py) hands a reward model's `InferRequest` here,
whose tensors become a `ScoreJob`, and the `Scored` result becomes the output tensors.
Items are validated by /v1/score's own request model, so an input gets the same error by
every protocol, with its field named in tensor terms (`items[2].input_ids[7]` becomes
`input_ids[2, 7]`).

Inputs (one group per request; N items):

    prompt BYTES [N] + response BYTES [N]           scalar, multi-objective
    messages_json BYTES [N]                          scalar, multi-objective: a JSON list of
                                                     {"role", "content"} per item
    prompt BYTES [N] + steps_json BYTES [N]          process: a JSON list of step strings
    input_ids INT64 [N, L]                           every kind; rows end at `lengths` [N]
      (+ lengths INT64 [N], prompt_length INT64 [N])   or at the first -1 (padding)
    + ground_truth, data_source, extra_info BYTES [N]  pipelines, optional: what their rules
                                                     read (ground_truth a plain string, or a
                                                     JSON object or list; extra_info a JSON
                                                     object; an empty element: none)

Outputs (all by default, or those requested):

    score FP32 [N]; num_tokens INT32 [N]; truncated BOOL [N]
    dimensions FP32 [N, K]                           multi-objective, pipelines (the components'
                                                     values; names: model parameters)
    uncertainty FP32 [N]                             pipelines with an ensemble
    gating_weights FP32 [N, G]                       gated multi-objective
    step_rewards FP32 [N, S] (NaN-padded) + num_steps INT32 [N]   process

Request parameters: `truncate` ("left"/"right"), `aggregate` (process), `priority`
("interactive"/"bulk", or Triton's integer: 1 interactive, 2 and up bulk), `timeout`
(Triton, microseconds) or `timeout_ms`.
"""

from __future__ import annotations

import re

import numpy as np

from service.core.errors import APIError
from service.core.score_request import parse_score_request, score_job
from service.core.scoring import Scored, ScoreJob, Scorer
from service.kserve.models import CONTEXT_INPUTS, Served, dimensions, input_specs, output_specs
from service.kserve.tensors import TensorSpec, bad_input, parse_json
from service.kserve.types import InferRequest

GROUPS = {  # the inputs of each item form, the first being the one that names an item
    "tokens": ("input_ids", "lengths", "prompt_length"),
    "steps": ("steps_json", "prompt"),
    "chat": ("messages_json",),
    "text": ("prompt", "response"),
}
CONTEXT = {spec.name for spec in CONTEXT_INPUTS}
REQUIRED = {"tokens": {"input_ids"}, "steps": {"steps_json", "prompt"}, "chat": {"messages_json"},
            "text": {"prompt", "response"}}


def _group(runner: Served, names: set[str]) -> str:
    allowed = {spec.name for spec in input_specs(runner)}
    unknown = sorted(names - allowed)
    if unknown:
        raise bad_input(unknown[0], f"no such input; model {runner.name!r} takes {sorted(allowed)}")
    names = names - CONTEXT
    if "input_ids" in names:
        group = "tokens"
    elif "steps_json" in names:
        group = "steps"
    elif "messages_json" in names:
        group = "chat"
    elif names:
        group = "text"
    else:
        raise APIError(400, "invalid_input", "the request has no inputs", "inputs")
    extra = sorted(names - set(GROUPS[group]))
    if extra:
        raise bad_input(extra[0], f"cannot be sent with '{GROUPS[group][0]}'; send one of: prompt + response, "
                        "messages_json, prompt + steps_json, input_ids (+ lengths, prompt_length)")
    missing = sorted(REQUIRED[group] - names)
    if missing:
        raise bad_input(missing[0], f"missing; it goes with '{sorted(names)[0]}'")
    return group


def _vector(name: str, array: np.ndarray) -> np.ndarray:
    """An [N] tensor ([N, 1] is accepted, as Triton clients often send it)."""
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise bad_input(name, f"must have shape [N], not {list(array.shape)}")
    return array


def _texts(name: str, array: np.ndarray) -> list[str]:
    if array.dtype != np.object_:
        raise bad_input(name, f"must be BYTES, not {array.dtype}")
    out = []
    for i, value in enumerate(_vector(name, array)):
        try:
            out.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
        except UnicodeDecodeError:
            raise bad_input(f"{name}[{i}]", "not valid UTF-8") from None
    return out


def _json_lists(name: str, array: np.ndarray) -> list:
    values = []
    for i, text in enumerate(_texts(name, array)):
        value = parse_json(text, f"{name}[{i}]")
        if not isinstance(value, list):
            raise bad_input(f"{name}[{i}]", "must be a JSON list")
        values.append(value)
    return values


def _integers(name: str, array: np.ndarray) -> np.ndarray:
    if array.dtype.kind not in "iu":
        raise bad_input(name, f"must be an integer tensor (INT64), not {array.dtype}")
    if array.dtype == np.uint64 and array.size and array.max() > np.iinfo(np.int64).max:
        raise bad_input(name, f"{int(array.max())} is out of range for a token id")
    return array.astype(np.int64, copy=False)


def _token_items(tensors: dict[str, np.ndarray]) -> list[dict]:
    ids = _integers("input_ids", tensors["input_ids"])
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2:
        raise bad_input("input_ids", f"must have shape [N, L], not {list(ids.shape)}")
    n, width = ids.shape
    lengths = None
    if "lengths" in tensors:
        lengths = _integers("lengths", _vector("lengths", tensors["lengths"]))
        if len(lengths) != n:
            raise bad_input("lengths", f"has {len(lengths)} elements for {n} rows of input_ids")
    prompt_lengths = None
    if "prompt_length" in tensors:
        prompt_lengths = _integers("prompt_length", _vector("prompt_length", tensors["prompt_length"]))
        if len(prompt_lengths) != n:
            raise bad_input("prompt_length", f"has {len(prompt_lengths)} elements for {n} rows of input_ids")
    items = []
    for row in range(n):
        if lengths is not None:
            length = int(lengths[row])
            if not 0 <= length <= width:
                raise bad_input(f"lengths[{row}]", f"{length} is not within the row width {width} of input_ids")
        else:
            padding = np.flatnonzero(ids[row] == -1)
            length = int(padding[0]) if len(padding) else width
            if len(padding) and np.any(ids[row, length:] != -1):
                raise bad_input(f"input_ids[{row}]", "-1 is padding and may only end a row")
        item: dict = {"input_ids": ids[row, :length].tolist()}
        if prompt_lengths is not None and prompt_lengths[row] != -1:
            item["prompt_length"] = int(prompt_lengths[row])
        items.append(item)
    return items


def _same_count(counts: dict[str, int]) -> None:
    if len(set(counts.values())) > 1:
        first = next(iter(counts))
        other = next(name for name in counts if counts[name] != counts[first])
        raise bad_input(other, f"has {counts[other]} elements but '{first}' has {counts[first]}")


def _context(tensors: dict[str, np.ndarray], main: str, count: int) -> list[dict]:
    """Each item's ground_truth, data_source and extra_info, where its element is not empty."""
    items: list[dict] = [{} for _ in range(count)]
    for name in sorted(CONTEXT & set(tensors)):
        texts = _texts(name, tensors[name])
        _same_count({main: count, name: len(texts)})
        for i, text in enumerate(texts):
            if not text:
                continue
            if name == "extra_info" or (name == "ground_truth" and text.lstrip()[:1] in ("{", "[")):
                items[i][name] = parse_json(text, f"{name}[{i}]")
            else:
                items[i][name] = text
    return items


def decode_items(runner: Served, tensors: dict[str, np.ndarray]) -> tuple[str, list[dict]]:
    group, items = _decode_forms(runner, tensors)
    contexts = _context(tensors, GROUPS[group][0], len(items))
    return group, [{**item, **context} for item, context in zip(items, contexts, strict=True)]


def _decode_forms(runner: Served, tensors: dict[str, np.ndarray]) -> tuple[str, list[dict]]:
    group = _group(runner, set(tensors))
    if group == "tokens":
        return group, _token_items(tensors)
    if group == "chat":
        return group, [{"messages": messages} for messages in _json_lists("messages_json", tensors["messages_json"])]
    prompts = _texts("prompt", tensors["prompt"])
    if group == "steps":
        steps = _json_lists("steps_json", tensors["steps_json"])
        _same_count({"prompt": len(prompts), "steps_json": len(steps)})
        return group, [{"prompt": p, "steps": s} for p, s in zip(prompts, steps)]
    responses = _texts("response", tensors["response"])
    _same_count({"prompt": len(prompts), "response": len(responses)})
    return group, [{"prompt": p, "response": r} for p, r in zip(prompts, responses)]


def request_options(parameters: dict) -> dict:
    """/v1/score options from KServe request parameters (unknown ones are ignored, as Triton
    passes them through)."""
    options = {}
    for name in ("truncate", "aggregate"):
        if name in parameters:
            options[name] = parameters[name]
    if "priority" in parameters:
        value = parameters["priority"]
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise APIError(400, "invalid_request", "parameter 'priority' must be 'interactive', 'bulk' or an integer",
                           "priority")
        if isinstance(value, int):
            value = None if value == 0 else "interactive" if value == 1 else "bulk"
        if value is not None:
            options["priority"] = value
    if "timeout_ms" in parameters:
        options["timeout_ms"] = parameters["timeout_ms"]
    elif "timeout" in parameters:  # Triton: microseconds
        value = parameters["timeout"]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise APIError(400, "invalid_request", "parameter 'timeout' must be a number of microseconds", "timeout")
        options["timeout_ms"] = value / 1000
    return options


def score_job_for(runner: Served, tensors: dict[str, np.ndarray], parameters: dict,
                  deadline: float | None = None) -> tuple[ScoreJob, str]:
    """The job for a KServe request to `runner`'s model, and the input group (for naming
    fields in errors raised later by the scorer)."""
    group, items = decode_items(runner, tensors)
    if not items:
        raise bad_input(GROUPS[group][0], "no items (N = 0)")
    body = {"model": runner.name, "items": items, **request_options(parameters)}
    try:
        request = parse_score_request(body)
    except APIError as err:
        raise tensor_error(err, group) from None
    return score_job(request, deadline), group


_ITEM_FIELD = re.compile(r"^items\[(\d+)\](.*)$")
_SUB_INDEX = re.compile(r"^\.(\w+)\[(\d+)\](.*)$")


def tensor_field(field: str | None, group: str) -> str | None:
    """An /v1/score field in tensor terms: items[2].input_ids[7] -> input_ids[2, 7],
    items[2].steps[1] -> steps_json[2][1], items[2] -> response[2] (the group's main input),
    truncate -> parameter 'truncate'."""
    if field is None:
        return None
    if field in ("truncate", "aggregate", "priority", "timeout_ms", "timeout"):
        return f"parameter '{field}'"
    if field == "items":
        return GROUPS[group][0]
    match = _ITEM_FIELD.match(field)
    if match is None:
        return field
    index, rest = int(match.group(1)), match.group(2)
    main = GROUPS[group][0] if group != "text" else "prompt/response"
    if not rest:
        return f"{main}[{index}]"
    sub = _SUB_INDEX.match(rest)
    name = (sub.group(1) if sub else rest.lstrip(".").split(".")[0].split("[")[0])
    tensor = {"steps": "steps_json", "messages": "messages_json"}.get(name, name)
    if sub and tensor == "input_ids":
        return f"input_ids[{index}, {sub.group(2)}]{sub.group(3)}"
    if sub:
        return f"{tensor}[{index}][{sub.group(2)}]{sub.group(3)}"
    return f"{tensor}[{index}]"


def tensor_error(err: APIError, group: str) -> APIError:
    """`err` with its field, and the message it leads, in tensor terms."""
    field = tensor_field(err.field, group)
    message = err.message
    if err.field and message.startswith(err.field):
        message = message[len(err.field):].lstrip(": ")
    if field and not message.startswith(field):
        message = f"{field}: {message}"
    return APIError(err.status, err.code, message, field, err.headers)


async def infer(scorer: Scorer, runner: Served,
                request: InferRequest) -> tuple[list[tuple[TensorSpec, np.ndarray]], dict[str, str]]:
    """The request scored by `runner`'s model: its output tensors and response parameters."""
    job, group = score_job_for(runner, request.inputs, request.parameters, request.deadline_ms)
    output_names(runner, request.outputs)  # an unknown output is refused before any forward
    try:
        scored = await scorer.score(job)
    except APIError as err:
        raise tensor_error(err, group) from None
    return output_tensors(runner, scored, request.outputs), response_parameters(scored)


# ---- responses --------------------------------------------------------------------------


def output_names(runner: Served, requested: list[str] | None) -> list[str]:
    """The requested outputs (all, when None), in the order requested."""
    names = [spec.name for spec in output_specs(runner)]
    for name in requested or ():
        if name not in names:
            raise bad_input(name, f"no such output; model {runner.name!r} gives {names}")
    return requested or names


def output_tensors(
    runner: Served, scored: Scored, requested: list[str] | None
) -> list[tuple[TensorSpec, np.ndarray]]:
    """The requested outputs (all, when None), in the order requested."""
    specs = {spec.name: spec for spec in output_specs(runner)}
    names = output_names(runner, requested)
    outs = scored.outputs
    arrays = {}
    for name in names:
        if name == "score":
            arrays[name] = np.array([o.score for o in outs], dtype=np.float32)
        elif name == "num_tokens":
            arrays[name] = np.array([o.num_tokens for o in outs], dtype=np.int32)
        elif name == "truncated":
            arrays[name] = np.array([o.truncated for o in outs], dtype=np.bool_)
        elif name == "dimensions":
            dims = dimensions(runner)
            arrays[name] = np.array([[o.dimensions[d] for d in dims] for o in outs], dtype=np.float32).reshape(
                len(outs), len(dims))
        elif name == "gating_weights":
            width = max((len(o.gating_weights or []) for o in outs), default=0)
            arrays[name] = _padded([o.gating_weights or [] for o in outs], width)
        elif name == "step_rewards":
            width = max((len(o.step_rewards or []) for o in outs), default=0)
            arrays[name] = _padded([o.step_rewards or [] for o in outs], width)
        elif name == "uncertainty":
            arrays[name] = np.array([o.uncertainty for o in outs], dtype=np.float32)
        elif name == "num_steps":
            arrays[name] = np.array([len(o.step_rewards or []) for o in outs], dtype=np.int32)
    return [(TensorSpec(name, specs[name].datatype, list(arrays[name].shape)), arrays[name]) for name in names]


def _padded(rows: list[list[float]], width: int) -> np.ndarray:
    out = np.full((len(rows), width), np.nan, dtype=np.float32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def response_parameters(scored: Scored) -> dict[str, str]:
    return {"revision": scored.revision, "kind": scored.kind.value}
