"""The commands that score a reference set and keep what they compute from it: `calibrate`
(a model's reference statistics), `baseline` (a model's or pipeline's drift baseline) and
`canary-record` (a model's golden set)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import yaml

from models.heads import RewardOutput
from models.spec import SPEC_FILENAME, load_spec
from service.cli.pipeline_reference import PipelineRefused, score_pipeline_reference
from service.cli.scoring import cli_settings, line_count, loaded_runner, refusal, score_chunk_outputs, score_lines
from service.config.model import BUILTIN_DIR
from service.engine.runner import ModelRunner


def _score_reference(runner: ModelRunner, source: Path, truncate: str | None, quiet: bool) -> list[RewardOutput]:
    """Every line of a reference file scored, in order; exits naming the first bad line
    (a reference set with holes would describe something else)."""
    outputs: list[RewardOutput] = []
    with source.open() as lines:
        for result in score_lines(runner, lines, line_count(source), truncate, quiet):
            if not isinstance(result, RewardOutput):
                sys.exit(refusal(source, result))
            outputs.append(result)
    return outputs


def _refuse_package_write(target: Path) -> None:
    """Exits when a --write would land inside the installed package (an embedded model's
    directory): that would change the package itself, and the next install would undo it."""
    if target.resolve().is_relative_to(BUILTIN_DIR.resolve()):
        model_dir = target.parent
        sys.exit(f"{target} is inside the installed rewardserve package: copy {model_dir} to a directory of "
                 f"your own, point the model's `path` at the copy in a config file, and rerun with --config")


def _described(source: Path, truncate: str | None) -> str:
    """How a reference file is named in what is computed from it: name, content hash, truncation."""
    described = f"{source.name} (sha256:{hashlib.sha256(source.read_bytes()).hexdigest()[:16]}"
    return described + (f", truncate={truncate})" if truncate else ")")


def calibrate(args) -> None:
    """Score a reference JSONL file (the `score` command's items) and print the model's
    reference_stats as YAML; with --write, put them into the model directory's
    reward_spec.yaml (which changes the model's revision)."""
    from service.core.normalize import compute_reference_stats

    settings = cli_settings(args)
    runner = loaded_runner(settings, args.model or settings.default_model_name)
    spec = runner.model.spec
    config = runner.config
    if args.write and config.spec is not None:
        sys.exit(f"model {runner.name} has an inline spec in the config: put the reference_stats there instead")
    if args.write:
        _refuse_package_write(config.resolved_path() / SPEC_FILENAME)
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
    """Score a reference set and write a model's drift baseline (drift_baseline.jsonl beside
    the model) or a pipeline's (the file its drift_baseline names): per drift dimension,
    frozen quantile bin edges, reference statistics and limits calibrated for windows of
    drift.min_samples values; prints a summary line per dimension. A pipeline's items are
    scored as a server scores them, and its dimensions are what its drift windows see."""
    from service.monitoring.baseline import BASELINE_FILENAME, compute_baseline, write_baseline

    settings = cli_settings(args)
    name = args.model or settings.default_model_name
    source = Path(args.file)
    pipeline = next((p for p in settings.pipelines if p.name == name), None)
    if pipeline is None:
        runner = loaded_runner(settings, name)
        target = runner.config.resolved_path() / BASELINE_FILENAME
        if args.write:
            _refuse_package_write(target)
        outputs = _score_reference(runner, source, args.truncate, args.quiet)
        revision = runner.model.revision
    else:
        if args.write and pipeline.drift_baseline is None:
            sys.exit(f"pipeline {name} names no file to write: set its `drift_baseline` key "
                     "(pipelines[].drift_baseline in the config) to the baseline's path")
        try:
            outputs, revision = score_pipeline_reference(settings, name, source, args.truncate, args.quiet)
        except PipelineRefused as err:
            sys.exit(str(err))
        target = pipeline.drift_baseline and Path(pipeline.drift_baseline).expanduser()
    try:
        dimensions = compute_baseline(name, revision, _described(source, args.truncate), outputs,
                                      bins=args.bins, threshold_window=settings.drift.min_samples)
    except ValueError as err:
        sys.exit(f"cannot compute a baseline from {source}: {err}")
    for dimension, dim in dimensions.items():
        limits = " ".join(f"{s}<={limit:.3f}" for s, limit in dim.thresholds.items())
        print(f"{dimension}\tcount={dim.count}\tmean={dim.mean:.4f}\tstd={dim.std:.4f}\tbins={len(dim.counts)}\t"
              f"{limits}")
    if args.write:
        target.parent.mkdir(parents=True, exist_ok=True)
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

    settings = cli_settings(args)
    runner = loaded_runner(settings, args.model or settings.default_model_name)
    target = runner.config.resolved_path() / CANARY_FILENAME
    if args.write:
        _refuse_package_write(target)
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
        result = score_chunk_outputs(runner, [json.dumps(item)], index, truncate)[0]
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
