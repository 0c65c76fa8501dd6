"""`rewardserve serve | score FILE.jsonl | calibrate FILE.jsonl | baseline FILE.jsonl |
canary-record [FILE.jsonl] | gate --live A --candidate B --data FILE | models | export-onnx |
convert FAMILY SRC DST`: the parser and the commands of a line or two; offline scoring is
service.cli.scoring, the reference-set commands service.cli.reference, the launch gate
service.cli.gate. Each command's implementation is imported when it runs, so building the
parser (`--help`, `--version`) loads no torch, transformers or server module."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

import service
from models.families import FAMILIES
from service.cli.choices import FORMATS


def _lazy(module: str, name: str) -> Callable:
    """A command whose module (and the model stack it loads) is imported only when it runs."""
    def run(args) -> None:
        getattr(importlib.import_module(module), name)(args)
    return run


def serve(args) -> None:
    from service.cli.serve import serve as serve_models

    serve_models(args)


def list_models(args) -> None:
    from service.cli.scoring import cli_settings, loaded_runner

    settings = cli_settings(args)
    for config in settings.models:
        info = loaded_runner(settings, config.name).info
        extra = f" dimensions={','.join(info.dimensions)}" if info.dimensions else ""
        if info.step_aggregate:
            extra += f" step_aggregate={info.step_aggregate}"
        print(f"{info.name}\t{info.kind.value}\tmax_length={info.max_length}\t{info.architecture}\t{info.revision}{extra}")


def export_onnx(args) -> None:
    """Export a configured model's graph to ONNX for `backend: onnxruntime`."""
    from models.backends.onnx import ONNX_FILENAME
    from models.onnx_export import export_onnx as export
    from models.reward_model import RewardModel
    from service.cli.scoring import cli_settings

    settings = cli_settings(args)
    name = args.model or settings.default_model_name
    config = next((m for m in settings.models if m.name == name), None)
    if config is None:
        sys.exit(f"no model named {name!r}; configured: {[m.name for m in settings.models]}")
    model = RewardModel.load(name, config.resolved_path(), config.spec)  # the torch reference, fp32 on CPU
    target = Path(args.output) if args.output else config.resolved_path() / ONNX_FILENAME
    print(export(model, target))


def convert_checkpoint(args) -> None:
    """A published checkpoint with a custom head -> our head file and reward spec."""
    from models.convert import convert
    from models.errors import ModelLoadError

    try:
        print(convert(args.family, Path(args.src), Path(args.dst)))
    except ModelLoadError as err:
        sys.exit(f"convert {args.family}: {err}")


def _reference_run_parser(sub, name: str, help_text: str, write_help: str,
                          model_help: str = "model name") -> argparse.ArgumentParser:
    """A command that scores a reference JSONL file and writes what it computes beside the model."""
    p = sub.add_parser(name, help=help_text)
    p.add_argument("file", help="JSONL reference set: one item per line, shaped like /v1/score items")
    p.add_argument("--model", help=f"{model_help} (default: the default model)")
    p.add_argument("--config")
    p.add_argument("--write", action="store_true", help=write_help)
    p.add_argument("--truncate", choices=["left", "right"])
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rewardserve", description="Reward-model inference server.")
    parser.add_argument("--version", action="version", version=f"rewardserve {service.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve models over HTTP and gRPC (default: the configured or embedded models)")
    p.add_argument("paths", nargs="*", metavar="PATH_OR_HUB_ID", help="models to serve instead of the configured "
                   "ones: a directory, builtin:<name> or a hub id org/name[@revision]")
    p.add_argument("--name", action="append", help="a model's name, once per path (default: its last part)")
    p.add_argument("--config", help="YAML config file (also REWARDSERVE_CONFIG)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--grpc-port", type=int, help="gRPC port (0 turns gRPC off)")
    p.add_argument("--debug", action="store_true", help="tracebacks and debug logs instead of short errors")
    p.set_defaults(run=serve)

    p = sub.add_parser("score", help="score a JSONL file of items offline, one result per line")
    p.add_argument("file", help="JSONL: one item per line, shaped like /v1/score items")
    p.add_argument("--config")
    p.add_argument("--model", help="model name (default: the default model)")
    p.add_argument("--output", "-o", help="output JSONL (default: stdout)")
    p.add_argument("--truncate", choices=["left", "right"])
    p.add_argument("--aggregate", choices=["min", "product", "last", "mean"])
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_lazy("service.cli.scoring", "score_file"))

    p = sub.add_parser("export-onnx", help="export a model (backbone and reward head) to ONNX")
    p.add_argument("--config")
    p.add_argument("--model", help="model name (default: the default model)")
    p.add_argument("--output", "-o", help="the .onnx file (default: reward.onnx in the model directory)")
    p.set_defaults(run=export_onnx)

    p = _reference_run_parser(sub, "calibrate", "reference statistics of a model's scores, for normalize='zscore'",
                              "write them into the model directory's reward_spec.yaml")
    p.set_defaults(run=_lazy("service.cli.reference", "calibrate"), aggregate=None)

    p = _reference_run_parser(sub, "baseline", "a model's or pipeline's drift baseline, from a reference scoring run",
                              "write drift_baseline.jsonl into the model directory (a pipeline's: the file its "
                              "drift_baseline names)", model_help="model or pipeline name")
    p.add_argument("--bins", type=int, default=10, help="equal-share reference bins for PSI and JS (default 10)")
    p.set_defaults(run=_lazy("service.cli.reference", "baseline"))

    p = sub.add_parser("canary-record", help="record a model's golden set: fixed items and the scores it gives them")
    p.add_argument("file", nargs="?", help="JSONL items (default: re-record the model's existing canary.jsonl)")
    p.add_argument("--model", help="model name (default: the default model)")
    p.add_argument("--config")
    p.add_argument("--limit", type=int, help="the first N lines of the file only")
    p.add_argument("--write", action="store_true", help="write canary.jsonl into the model directory")
    p.add_argument("--truncate", choices=["left", "right"])
    p.set_defaults(run=_lazy("service.cli.reference", "canary_record"))

    p = sub.add_parser("gate", help="compare a candidate model with the live one on a labelled set; exit 1 when "
                                    "it regresses (docs/gate.md)")
    p.add_argument("--live", required=True, help="the served model's name")
    p.add_argument("--candidate", required=True, help="the new version's name")
    p.add_argument("--data", required=True, help="labelled set: JSONL or a JSON array, gzipped or not (pairwise "
                                                 "chosen/rejected, scalar labels or ProcessBench step labels)")
    p.add_argument("--format", choices=FORMATS, help="the data's format (default: told from its fields)")
    p.add_argument("--buckets", help="group records by this field (default: terciles of response length)")
    p.add_argument("--max-regression", type=float, default=1.0,
                   help="points a dimension or bucket may drop, beyond its interval, before the gate fails "
                        "(default 1.0)")
    p.add_argument("--limit", type=int, help="the first N records only")
    p.add_argument("--json", help="write the whole report as JSON to this file")
    p.add_argument("--config")
    p.add_argument("--truncate", choices=["left", "right"],
                   help="default: left (keep the latest turns), right for step labels (keep the first steps)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_lazy("service.cli.gate", "run_gate"))

    p = sub.add_parser("convert", help="turn a checkpoint with a custom (remote-code) head into a head file and "
                                       "reward spec, served without trust_remote_code")
    p.add_argument("family", choices=FAMILIES)
    p.add_argument("src", help="the published checkpoint's directory (left untouched; becomes the backbone)")
    p.add_argument("dst", help="directory for reward_spec.yaml and reward_head.safetensors: serve this one")
    p.set_defaults(run=convert_checkpoint)

    p = sub.add_parser("models", help="load and describe the configured models")
    p.add_argument("--config")
    p.set_defaults(run=list_models)

    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models are served from local disk, never fetched
    args.run(args)

