"""`rewardserve serve | score FILE.jsonl | models`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from itertools import islice
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from models.errors import InputError
from models.spec import ModelKind, StepAggregate
from service.config import Settings, load_settings
from service.errors import field_path
from service.runner import ModelRunner
from service.schemas import ItemResult, ScoreItem

CHUNK = 256
parse_item = TypeAdapter(ScoreItem).validate_json


def _settings(args) -> Settings:
    return load_settings(args.config, host=getattr(args, "host", None), port=getattr(args, "port", None))


def _runner(settings: Settings, name: str) -> ModelRunner:
    config = next((m for m in settings.models if m.name == name), None)
    if config is None:
        sys.exit(f"no model named {name!r}; configured: {[m.name for m in settings.models]}")
    runner = ModelRunner(config, settings)
    runner.load()
    if runner.status != "ready":
        sys.exit(f"model {name} failed to load: {runner.error}")
    return runner


def serve(args) -> None:
    import uvicorn

    from service.http_api import create_app

    settings = _settings(args)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)


def score_file(args) -> None:
    """Offline bulk scoring: one item per input line, one result (or error) per output line,
    in input order. A bad line is reported on its own line and does not stop the run."""
    from tqdm import tqdm

    settings = _settings(args)
    runner = _runner(settings, args.model or settings.default_model_name)
    if args.aggregate and runner.model.spec.kind != ModelKind.process:
        sys.exit(f"--aggregate applies to process models only; {runner.name} is {runner.model.spec.kind.value}")
    source = Path(args.file)
    total = sum(1 for _ in source.open())
    out = open(args.output, "w") if args.output else sys.stdout
    with source.open() as lines, tqdm(total=total, unit="item", file=sys.stderr, disable=args.quiet) as bar:
        index = 0
        while chunk := list(islice(lines, CHUNK)):
            for record in _score_chunk(runner, chunk, index, args):
                out.write(json.dumps(record) + "\n")
            index += len(chunk)
            bar.update(len(chunk))
    if out is not sys.stdout:
        out.close()


def _score_chunk(runner: ModelRunner, lines: list[str], first: int, args) -> list[dict]:
    records: list[dict] = [{} for _ in lines]
    good, encoded = [], []
    for offset, line in enumerate(lines):
        index = first + offset
        try:
            encoded.append(runner.model.encode(parse_item(line).to_input(), args.truncate))
            good.append(offset)
        except ValidationError as err:
            first_error = err.errors()[0]
            code = "invalid_json" if first_error["type"] == "json_invalid" else "invalid_request"
            records[offset] = _error(index, code, first_error["msg"], field_path(tuple(first_error["loc"])))
        except InputError as err:
            records[offset] = _error(index, err.code, err.message, err.field)
    for offset, output in zip(good, runner.forward_all(encoded)):
        if args.aggregate:
            output = output.with_step_aggregate(StepAggregate(args.aggregate))
        records[offset] = ItemResult.from_output(first + offset, output).model_dump(exclude_none=True)
    return records


def _error(index: int, code: str, message: str, field: str | None) -> dict:
    return {"index": index, "error": {"code": code, "message": message, "field": field}}


def list_models(args) -> None:
    settings = _settings(args)
    for config in settings.models:
        info = _runner(settings, config.name).info
        extra = f" dimensions={','.join(info.dimensions)}" if info.dimensions else ""
        if info.step_aggregate:
            extra += f" step_aggregate={info.step_aggregate}"
        print(f"{info.name}\t{info.kind.value}\tmax_length={info.max_length}\t{info.architecture}\t{info.revision}{extra}")


def export_onnx(args) -> None:
    """Export a configured model's graph to ONNX for `backend: onnxruntime`."""
    from models.engines import ONNX_FILENAME
    from models.onnx_export import export_onnx as export
    from models.reward_model import RewardModel

    settings = _settings(args)
    name = args.model or settings.default_model_name
    config = next((m for m in settings.models if m.name == name), None)
    if config is None:
        sys.exit(f"no model named {name!r}; configured: {[m.name for m in settings.models]}")
    model = RewardModel.load(name, config.resolved_path(), config.spec)  # the torch reference, fp32 on CPU
    target = Path(args.output) if args.output else config.resolved_path() / ONNX_FILENAME
    print(export(model, target))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rewardserve", description="Reward-model inference server.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve the configured models over HTTP (default: the embedded models)")
    p.add_argument("--config", help="YAML config file (also REWARDSERVE_CONFIG)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(run=serve)

    p = sub.add_parser("score", help="score a JSONL file of items offline, one result per line")
    p.add_argument("file", help="JSONL: one item per line, shaped like /v1/score items")
    p.add_argument("--config")
    p.add_argument("--model", help="model name (default: the default model)")
    p.add_argument("--output", "-o", help="output JSONL (default: stdout)")
    p.add_argument("--truncate", choices=["left", "right"])
    p.add_argument("--aggregate", choices=["min", "product", "last", "mean"])
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=score_file)

    p = sub.add_parser("export-onnx", help="export a model (backbone and reward head) to ONNX")
    p.add_argument("--config")
    p.add_argument("--model", help="model name (default: the default model)")
    p.add_argument("--output", "-o", help="the .onnx file (default: reward.onnx in the model directory)")
    p.set_defaults(run=export_onnx)

    p = sub.add_parser("models", help="load and describe the configured models")
    p.add_argument("--config")
    p.set_defaults(run=list_models)

    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models are served from local disk, never fetched
    args.run(args)


if __name__ == "__main__":
    main()
