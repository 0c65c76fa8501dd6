"""Scoring JSONL lines offline, in-process with one model: `rewardserve score`, and what the
reference-set commands score their files with."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from models.errors import TRUNCATE_HINT, InputError
from models.heads import RewardOutput
from service.config import Settings, load_settings
from service.core.inputs import item_input
from service.core.score_request import item_result
from service.engine.runner import ModelRunner
from service.protocol.enums import ModelKind, StepAggregate
from service.protocol.errors import field_path
from service.protocol.scoring import ScoreItem

CHUNK = 256
# The model layer's hint for an input too long, in the flag's spelling the CLI takes.
CLI_TRUNCATE_HINT = "rerun with --truncate left (keep the end) or --truncate right (keep the start) to cut it"
parse_item = TypeAdapter(ScoreItem).validate_json


def cli_settings(args, **overrides) -> Settings:
    """The settings, `serve`'s --host, --port and --grpc-port over the server section's, and
    `overrides` (None: not overridden) over the rest."""
    flags = {key: getattr(args, key, None) for key in ("host", "port", "grpc_port")}
    return load_settings(args.config, server={k: v for k, v in flags.items() if v is not None}, **overrides)


def loaded_runner(settings: Settings, name: str) -> ModelRunner:
    config = next((m for m in settings.models if m.name == name), None)
    if config is None:
        sys.exit(f"no model named {name!r}; configured: {[m.name for m in settings.models]}")
    runner = ModelRunner(config, settings)
    runner.load()
    if runner.status != "ready":
        sys.exit(f"model {name} failed to load: {runner.error}")
    return runner


def score_file(args) -> None:
    """Offline bulk scoring: one item per input line, one result (or error) per output line,
    in input order. A bad line is reported on its own line and does not stop the run; the
    exit status is 1 when any line failed, so a script notices the holes."""
    settings = cli_settings(args)
    runner = loaded_runner(settings, args.model or settings.default_model_name)
    if args.aggregate and runner.model.spec.kind != ModelKind.process:
        sys.exit(f"--aggregate applies to process models only; {runner.name} is {runner.model.spec.kind.value}")
    source = Path(args.file)
    out = open(args.output, "w") if args.output else sys.stdout
    total, failed = line_count(source), 0
    with source.open() as lines:
        for index, output in enumerate(score_lines(runner, lines, total, args.truncate, args.quiet)):
            if isinstance(output, RewardOutput):
                if args.aggregate:
                    output = output.with_step_aggregate(StepAggregate(args.aggregate))
                output = item_result(index, output).model_dump(exclude_none=True)
            else:
                failed += 1
            out.write(json.dumps(output) + "\n")
    if out is not sys.stdout:
        out.close()
    if failed:
        where = args.output or "the output"
        sys.exit(f"{failed} of {total} lines failed; see the records with an \"error\" in {where}")


def score_lines(runner: ModelRunner, lines: Iterable[str], total: int, truncate: str | None,
                quiet: bool) -> Iterator[RewardOutput | dict]:
    """Per line of /v1/score items, in order, the model's output or an error record naming
    the line's index; scored a chunk at a time, with a progress bar on stderr."""
    from tqdm import tqdm

    lines = iter(lines)
    with tqdm(total=total, unit="item", file=sys.stderr, disable=quiet) as bar:
        index = 0
        while chunk := list(islice(lines, CHUNK)):
            yield from score_chunk_outputs(runner, chunk, index, truncate)
            index += len(chunk)
            bar.update(len(chunk))


def score_chunk_outputs(runner: ModelRunner, lines: list[str], first: int,
                        truncate: str | None) -> list[RewardOutput | dict]:
    """Per line, the model's output or an error record naming the line's index."""
    results: list[RewardOutput | dict] = [{} for _ in lines]
    good, encoded = [], []
    for offset, line in enumerate(lines):
        index = first + offset
        try:
            encoded.append(runner.model.encode(item_input(parse_item(line)), truncate))
            good.append(offset)
        except ValidationError as err:
            results[offset] = error_record(index, *parse_error(err))
        except InputError as err:
            results[offset] = error_record(index, err.code, err.message.replace(TRUNCATE_HINT, CLI_TRUNCATE_HINT),
                                           err.field)
    for offset, output in zip(good, runner.forward_all(encoded)):
        results[offset] = output
    return results


def parse_error(err: ValidationError) -> tuple[str, str, str]:
    """A line that is no /v1/score item: its error's code, message and field."""
    first_error = err.errors()[0]
    code = "invalid_json" if first_error["type"] == "json_invalid" else "invalid_request"
    return code, first_error["msg"], field_path(tuple(first_error["loc"]))


def error_record(index: int, code: str, message: str, field: str | None) -> dict:
    return {"index": index, "error": {"code": code, "message": message, "field": field}}


def refusal(source: Path, record: dict) -> str:
    """Why a reference run stops at a bad line: the line's number, its error, what to do."""
    error = record["error"]
    return (f"{source}: line {record['index'] + 1}: {error['code']}: {error['message']}"
            + (f" ({error['field']})" if error["field"] else "") + "; fix or remove it")


def line_count(source: Path) -> int:
    data = source.read_bytes()
    return data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
