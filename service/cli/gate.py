"""`rewardserve gate --live A --candidate B --data FILE`: a launch gate for a new model
version. Both configured models score the same labelled set; per dimension and bucket the
report gives each one's figure and the candidate's paired difference with 95% intervals,
how far the two agree, the candidate's deviation on the live model's golden set, and a
verdict; the exit status is 1 when the candidate regresses past --max-regression points, so
a CI job can gate on it. The figure is pairwise accuracy (pairwise data), AUC (scalar labels)
or ProcessBench first-error and final-answer accuracy (step labels, at the model's threshold)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from models.heads import RewardOutput
from service.cli.gate_data import DEFAULT_TRUNCATE, Record, bucket_names, detect_format, read_rows, records
from service.cli.gate_stats import Comparison, compare_auc, compare_hits, verdict
from service.cli.scoring import cli_settings, loaded_runner, score_chunk_outputs, score_lines
from service.core.ranking import first_below
from service.engine.runner import ModelRunner
from service.monitoring.canary import canary_file, deviation, read_canary, spearman

ALL = "all"
METRICS = {"pairwise": "pairwise accuracy", "scalar": "AUC", "steps": "accuracy"}


def scored(runner: ModelRunner, recs: list[Record], truncate: str, quiet: bool) -> list[list[RewardOutput]]:
    """Each record's items scored, in order; exits naming the first record that cannot be."""
    owner = [number for number, rec in enumerate(recs, 1) for _ in rec.items]
    lines = [json.dumps(item) for rec in recs for item in rec.items]
    flat = []
    for result in score_lines(runner, lines, len(lines), truncate, quiet):
        if not isinstance(result, RewardOutput):
            error = result["error"]
            sys.exit(f"{runner.name}: record {owner[result['index']]}: {error['code']}: {error['message']}")
        flat.append(result)
    outputs, start = [], 0
    for rec in recs:
        outputs.append(flat[start:start + len(rec.items)])
        start += len(rec.items)
    return outputs


def read(out: RewardOutput, dimension: str) -> float:
    return out.score if dimension == "score" else out.dimensions[dimension]


def first_errors(runner: ModelRunner, outputs: list[list[RewardOutput]]) -> np.ndarray:
    """The first step each solution's rewards fall below the model's threshold at, -1 none."""
    threshold = runner.model.spec.process.threshold
    found = (first_below(outs[0].step_rewards, threshold) for outs in outputs)
    return np.array([-1 if step is None else step for step in found])


def readings(form: str, runner: ModelRunner, recs: list[Record], outputs: list[list[RewardOutput]],
             dimensions: list[str]) -> dict[str, np.ndarray]:
    """Per dimension, what is compared: per-record hits (pairwise, steps) or scores (scalar)."""
    if form == "pairwise":
        return {d: np.array([read(c, d) > read(r, d) for c, r in outputs]) for d in dimensions}
    if form == "scalar":
        return {d: np.array([read(outs[0], d) for outs in outputs]) for d in dimensions}
    found = first_errors(runner, outputs)
    hits = {"first_error": found == np.array([rec.label for rec in recs])}
    if all(rec.final_answer_correct is not None for rec in recs):
        hits["final_answer"] = (found == -1) == np.array([rec.final_answer_correct for rec in recs])
    return hits


def comparisons(form: str, recs: list[Record], live: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                buckets: list[str], order: list[str]) -> list[tuple[str, str, Comparison]]:
    """(dimension, bucket, comparison) for every dimension, on all records then per bucket."""
    labels = np.array([bool(rec.label) for rec in recs])
    rows = []
    for dimension in live:
        for bucket in [ALL, *order]:
            mask = np.array([bucket in (ALL, name) for name in buckets])
            if form == "scalar":
                found = compare_auc(labels[mask], live[dimension][mask], candidate[dimension][mask])
            else:
                found = compare_hits(live[dimension][mask], candidate[dimension][mask])
            if found is not None:
                rows.append((dimension, bucket, found))
    return rows


def agreement(form: str, live: ModelRunner, outs_a: list[list[RewardOutput]], candidate: ModelRunner,
              outs_b: list[list[RewardOutput]]) -> dict:
    """How alike the two judge: the share of pairs ordered alike (or of first errors found
    alike) and the Spearman correlation of every item's score."""
    scores_a = [out.score for outs in outs_a for out in outs]
    scores_b = [out.score for outs in outs_b for out in outs]
    same = None
    if form == "pairwise":
        same = float(np.mean([np.sign(a[0].score - a[1].score) == np.sign(b[0].score - b[1].score)
                              for a, b in zip(outs_a, outs_b)]))
    elif form == "steps":
        same = float(np.mean(first_errors(live, outs_a) == first_errors(candidate, outs_b)))
    return {"same_judgement": same, "spearman": spearman(scores_a, scores_b)}


def golden_set(live: ModelRunner, candidate: ModelRunner) -> dict | None:
    """The candidate on the live model's golden set (canary.jsonl): its largest absolute
    deviation from the recorded outputs (null when their shapes differ) and the Spearman
    correlation of the scores; None when the live model has no golden set."""
    path = canary_file(live)
    if not path.is_file():
        return None
    items = read_canary(path)
    outputs = [score_chunk_outputs(candidate, [json.dumps(c.item)], index, c.truncate)[0]
               for index, c in enumerate(items)]
    if not all(isinstance(out, RewardOutput) for out in outputs):
        return {"items": len(items), "max_abs_deviation": None, "spearman": None, "error": "an item failed to score"}
    worst = max(deviation(out, c.expected) for out, c in zip(outputs, items))
    return {"items": len(items), "max_abs_deviation": worst if np.isfinite(worst) else None,
            "spearman": spearman([o.score for o in outputs], [c.expected.score for c in items]),
            "recorded_revision": items[0].revision}


def run_gate(args) -> None:
    from service.cli.gate_report import print_report

    settings = cli_settings(args)
    source = Path(args.data)
    try:
        rows = read_rows(source, args.limit)
        form = args.format or detect_format(rows[0])
        recs = records(rows, form)
        buckets, order = bucket_names(rows, recs, args.buckets)
    except (OSError, ValueError, IndexError) as err:
        sys.exit(f"{source}: {err}")
    live, candidate = loaded_runner(settings, args.live), loaded_runner(settings, args.candidate)
    if form == "steps" and not (live.model.spec.process and candidate.model.spec.process):
        sys.exit("step labels are for process models: both --live and --candidate must be process models")
    dimensions = ["score"] + [d for d in live.info.dimensions or [] if d in (candidate.info.dimensions or [])]
    truncate = args.truncate or DEFAULT_TRUNCATE[form]
    outs_a, outs_b = (scored(runner, recs, truncate, args.quiet) for runner in (live, candidate))
    found = comparisons(form, recs, readings(form, live, recs, outs_a, dimensions),
                        readings(form, candidate, recs, outs_b, dimensions), buckets, order)
    report = {
        "live": {"name": live.name, "revision": live.model.revision},
        "candidate": {"name": candidate.name, "revision": candidate.model.revision},
        "data": {"file": str(source), "format": form, "records": len(recs), "truncate": truncate,
                 "buckets": args.buckets or "length"},
        "metric": METRICS[form],
        "rows": [{"dimension": d, "bucket": b, "n": c.n, "live": c.live.as_json(),
                  "candidate": c.candidate.as_json(), "difference": c.difference.as_json(), "better": c.better,
                  "regresses": c.regresses(args.max_regression)} for d, b, c in found],
        "agreement": agreement(form, live, outs_a, candidate, outs_b),
        "golden_set": golden_set(live, candidate),
        "max_regression": args.max_regression,
        "verdict": verdict([c for _, _, c in found], args.max_regression),
    }
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if report["verdict"] == "regresses":
        sys.exit(1)
