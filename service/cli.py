"""`rewardserve serve | score FILE.jsonl | calibrate FILE.jsonl | baseline FILE.jsonl |
canary-record [FILE.jsonl] | models | export-onnx | convert FAMILY SRC DST`."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from itertools import islice
from pathlib import Path

import yaml
from pydantic import TypeAdapter, ValidationError

from models.convert import CONVERTERS, convert
from models.errors import InputError, ModelLoadError
from models.heads import RewardOutput
from models.spec import SPEC_FILENAME, load_spec
from service.config import Settings, load_settings
from service.core.inputs import item_input
from service.core.scoring import item_result
from service.engine.runner import ModelRunner
from service.protocol.enums import ModelKind, StepAggregate
from service.protocol.errors import field_path
from service.protocol.scoring import ScoreItem

CHUNK = 256
parse_item = TypeAdapter(ScoreItem).validate_json


def _settings(args) -> Settings:
    """The settings, `serve`'s --host and --port over server.host and server.port."""
    flags = {"host": getattr(args, "host", None), "port": getattr(args, "port", None)}
    return load_settings(args.config, server={k: v for k, v in flags.items() if v is not None})


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
    from service.app import DrainingServer, create_app

    settings = _settings(args)
    logging.basicConfig(level=settings.server.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    DrainingServer(create_app(settings), settings).run()


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
    records = []
    for offset, output in enumerate(_score_chunk_outputs(runner, lines, first, args.truncate)):
        if isinstance(output, RewardOutput):
            if args.aggregate:
                output = output.with_step_aggregate(StepAggregate(args.aggregate))
            output = item_result(first + offset, output).model_dump(exclude_none=True)
        records.append(output)
    return records


def _score_chunk_outputs(runner: ModelRunner, lines: list[str], first: int,
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
            first_error = err.errors()[0]
            code = "invalid_json" if first_error["type"] == "json_invalid" else "invalid_request"
            results[offset] = _error(index, code, first_error["msg"], field_path(tuple(first_error["loc"])))
        except InputError as err:
            results[offset] = _error(index, err.code, err.message, err.field)
    for offset, output in zip(good, runner.forward_all(encoded)):
        results[offset] = output
    return results


def _score_reference(runner: ModelRunner, source: Path, truncate: str | None, quiet: bool) -> list[RewardOutput]:
    """Every line of a reference file scored, in order; exits naming the first bad line
    (a reference set with holes would describe something else)."""
    from tqdm import tqdm

    data = source.read_bytes()
    total = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    outputs: list[RewardOutput] = []
    with source.open() as lines, tqdm(total=total, unit="item", file=sys.stderr, disable=quiet) as bar:
        while chunk := list(islice(lines, CHUNK)):
            for result in _score_chunk_outputs(runner, chunk, len(outputs), truncate):
                if not isinstance(result, RewardOutput):
                    error = result["error"]
                    sys.exit(f"{source}: line {result['index'] + 1}: {error['code']}: {error['message']}"
                             + (f" ({error['field']})" if error["field"] else "") + "; fix or remove it")
                outputs.append(result)
            bar.update(len(chunk))
    return outputs


def _described(source: Path, truncate: str | None) -> str:
    """How a reference file is named in what is computed from it: name, content hash, truncation."""
    described = f"{source.name} (sha256:{hashlib.sha256(source.read_bytes()).hexdigest()[:16]}"
    return described + (f", truncate={truncate})" if truncate else ")")


def _error(index: int, code: str, message: str, field: str | None) -> dict:
    return {"index": index, "error": {"code": code, "message": message, "field": field}}


def calibrate(args) -> None:
    """Score a reference JSONL file (the `score` command's items) and print the model's
    reference_stats as YAML; with --write, put them into the model directory's
    reward_spec.yaml (which changes the model's revision)."""
    from service.core.normalize import compute_reference_stats

    settings = _settings(args)
    runner = _runner(settings, args.model or settings.default_model_name)
    spec = runner.model.spec
    config = runner.config
    if args.write and config.spec is not None:
        sys.exit(f"model {runner.name} has an inline spec in the config: put the reference_stats there instead")
    source = Path(args.file)
    outputs = _score_reference(runner, source, args.truncate, args.quiet)
    scores = [out.score for out in outputs]
    dims: dict[str, list[float]] = (
        {name: [] for name in spec.multi_objective.dimensions} if spec.multi_objective else {}
    )
    for out in outputs:
        for name, value in (out.dimensions or {}).items():
            dims[name].append(value)
    described = _described(source, args.truncate)
    aggregate = spec.process.aggregate if spec.process else None
    try:
        stats = compute_reference_stats(scores, dims, aggregate, described)
    except ValueError as err:
        sys.exit(f"cannot calibrate on {source}: {err}")
    body = stats.model_dump(mode="json", exclude_none=True)
    if not body["dimensions"]:
        del body["dimensions"]
    block = yaml.safe_dump({"reference_stats": body}, sort_keys=False)
    print(block, end="")
    if args.write:
        _write_reference_stats(runner, block)


def _write_reference_stats(runner: ModelRunner, block: str) -> None:
    """Replace (or add) the top-level `reference_stats` block of the model directory's
    spec file, keeping the rest of the file, comments included, as it was."""
    model_dir = runner.config.resolved_path()
    spec_file = model_dir / SPEC_FILENAME
    old_text = spec_file.read_text() if spec_file.is_file() else None
    if old_text is None:  # an inferred spec: write it out, with the stats
        inferred = runner.model.spec.model_dump(mode="json", exclude_defaults=True, exclude={"reference_stats"})
        kept = yaml.safe_dump(inferred, sort_keys=False)
    else:
        kept = _without_top_level_key(old_text, "reference_stats")
    spec_file.write_text(kept.rstrip("\n") + "\n" + block)
    try:
        load_spec(model_dir)
    except Exception as err:  # noqa: BLE001 - whatever the check refuses, the old file is put back
        if old_text is None:
            spec_file.unlink()
        else:
            spec_file.write_text(old_text)
        sys.exit(f"{spec_file}: the new spec does not validate ({err}); left unchanged")
    print(f"wrote reference_stats to {spec_file}; the model's revision (was {runner.model.revision}) changes "
          "with it: restart servers to serve them", file=sys.stderr)


def _without_top_level_key(text: str, key: str) -> str:
    lines = text.splitlines(keepends=True)
    out, skipping = [], False
    for line in lines:
        if line.startswith(f"{key}:"):
            skipping = True
            continue
        if skipping and (not line.strip() or line[0] in " \t"):
            continue
        skipping = False
        out.append(line)
    return "".join(out)


def baseline(args) -> None:
    """Score a reference set and write the model's drift baseline (drift_baseline.jsonl
    beside the model: per drift dimension, frozen quantile bin edges, reference statistics
    and limits calibrated for windows of drift.min_samples values); prints a summary line
    per dimension."""
    from service.monitoring.baseline import BASELINE_FILENAME, compute_baseline, write_baseline

    settings = _settings(args)
    runner = _runner(settings, args.model or settings.default_model_name)
    source = Path(args.file)
    outputs = _score_reference(runner, source, args.truncate, args.quiet)
    try:
        dimensions = compute_baseline(runner.name, runner.model.revision, _described(source, args.truncate), outputs,
                                      bins=args.bins, threshold_window=settings.drift.min_samples)
    except ValueError as err:
        sys.exit(f"cannot compute a baseline from {source}: {err}")
    for name, dim in dimensions.items():
        limits = " ".join(f"{s}<={limit:.3f}" for s, limit in dim.thresholds.items())
        print(f"{name}\tcount={dim.count}\tmean={dim.mean:.4f}\tstd={dim.std:.4f}\tbins={len(dim.counts)}\t{limits}")
    if args.write:
        target = runner.config.resolved_path() / BASELINE_FILENAME
        write_baseline(target, dimensions)
        print(f"wrote {target}; servers read it at start-up", file=sys.stderr)


def canary_record(args) -> None:
    """Record a golden set: items (a JSONL file of /v1/score items, or the model's existing
    canary.jsonl when none is given) with the scores the model gives them now."""
    from service.monitoring.canary import (
        CANARY_FILENAME,
        CanaryItem,
        expected_of,
        read_canary,
        write_canary,
    )

    settings = _settings(args)
    runner = _runner(settings, args.model or settings.default_model_name)
    target = runner.config.resolved_path() / CANARY_FILENAME
    if args.file:
        source = Path(args.file)
        items = []
        for number, line in enumerate(source.read_text().splitlines()[:args.limit], 1):
            try:
                items.append((json.loads(line), args.truncate))
            except ValueError as err:
                sys.exit(f"{source}: line {number}: invalid_json: {err}")
        described = _described(source, args.truncate)
    elif target.is_file():
        old = read_canary(target)
        items = [(c.item, c.truncate) for c in old]
        described = old[0].source if old else ""
    else:
        sys.exit(f"{target} does not exist: give a JSONL file of items to record")
    recorded = []
    for index, (item, truncate) in enumerate(items):  # one at a time: the unbatched reference
        result = _score_chunk_outputs(runner, [json.dumps(item)], index, truncate)[0]
        if not isinstance(result, RewardOutput):
            error = result["error"]
            sys.exit(f"item {index + 1}: {error['code']}: {error['message']}"
                     + (f" ({error['field']})" if error["field"] else ""))
        recorded.append(CanaryItem(item=item, truncate=truncate, expected=expected_of(result),
                                   revision=runner.model.revision, source=described))
    for canary in recorded:
        print(json.dumps({"expected": canary.expected.model_dump(exclude_none=True)}))
    if args.write:
        write_canary(target, recorded)
        print(f"wrote {len(recorded)} items to {target}; servers re-score them at start-up, every "
              "canary.interval_s and on POST /v1/admin/canary", file=sys.stderr)


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
    from models.backends.onnx import ONNX_FILENAME
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


def convert_checkpoint(args) -> None:
    """A published checkpoint with a custom head -> our head file and reward spec."""
    try:
        print(convert(args.family, Path(args.src), Path(args.dst)))
    except ModelLoadError as err:
        sys.exit(f"convert {args.family}: {err}")


def _reference_run_parser(sub, name: str, help_text: str, write_help: str) -> argparse.ArgumentParser:
    """A command that scores a reference JSONL file and writes what it computes beside the model."""
    p = sub.add_parser(name, help=help_text)
    p.add_argument("file", help="JSONL reference set: one item per line, shaped like /v1/score items")
    p.add_argument("--model", help="model name (default: the default model)")
    p.add_argument("--config")
    p.add_argument("--write", action="store_true", help=write_help)
    p.add_argument("--truncate", choices=["left", "right"])
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


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

    p = _reference_run_parser(sub, "calibrate", "reference statistics of a model's scores, for normalize='zscore'",
                              "write them into the model directory's reward_spec.yaml")
    p.set_defaults(run=calibrate, aggregate=None)

    p = _reference_run_parser(sub, "baseline", "a model's drift baseline, from a reference scoring run",
                              "write drift_baseline.jsonl into the model directory")
    p.add_argument("--bins", type=int, default=10, help="equal-share reference bins for PSI and JS (default 10)")
    p.set_defaults(run=baseline)

    p = sub.add_parser("canary-record", help="record a model's golden set: fixed items and the scores it gives them")
    p.add_argument("file", nargs="?", help="JSONL items (default: re-record the model's existing canary.jsonl)")
    p.add_argument("--model", help="model name (default: the default model)")
    p.add_argument("--config")
    p.add_argument("--limit", type=int, help="the first N lines of the file only")
    p.add_argument("--write", action="store_true", help="write canary.jsonl into the model directory")
    p.add_argument("--truncate", choices=["left", "right"])
    p.set_defaults(run=canary_record)

    p = sub.add_parser("convert", help="turn a checkpoint with a custom (remote-code) head into a head file and "
                                       "reward spec, served without trust_remote_code")
    p.add_argument("family", choices=sorted(CONVERTERS))
    p.add_argument("src", help="the published checkpoint's directory (left untouched; becomes the backbone)")
    p.add_argument("dst", help="directory for reward_spec.yaml and reward_head.safetensors: serve this one")
    p.set_defaults(run=convert_checkpoint)

    p = sub.add_parser("models", help="load and describe the configured models")
    p.add_argument("--config")
    p.set_defaults(run=list_models)

    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models are served from local disk, never fetched
    args.run(args)


if __name__ == "__main__":
    main()
