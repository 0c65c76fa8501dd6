"""Compiles service/grpc/proto/*.proto into Python modules beside them with grpcio-tools (the
command line is `python -m service.grpc.proto.build`).

The generated `*_pb2.py`, `*_pb2_grpc.py` and `*_pb2.pyi` are not committed: importing
`service.grpc.proto` runs `ensure_generated()`, which compiles them when they are missing or
older than their .proto (so a fresh clone works after `pip install -e .`), and the
Dockerfile runs `python -m service.grpc.proto.build` so an image never compiles at start-up.

protoc runs with the directory holding the `service` package as its include root, so the
generated code imports its siblings package-qualified (`from service.grpc.proto import
rewardserve_pb2`) and works wherever the package is installed.
"""

from __future__ import annotations

import os
import re
import tempfile
from importlib import resources
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parents[2]  # holds the `service` package
SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


def protos() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def outputs(proto: Path) -> list[Path]:
    return [proto.with_name(proto.stem + suffix) for suffix in SUFFIXES]


def stale() -> list[Path]:
    """The .proto files whose generated modules are missing, older than they are, or made
    by a newer protoc than the installed protobuf runtime accepts (left by an earlier
    install)."""
    found = []
    for proto in protos():
        source = proto.stat().st_mtime
        if any(not out.exists() or out.stat().st_mtime < source for out in outputs(proto)) or \
                _too_new_for_runtime(proto.with_name(proto.stem + "_pb2.py")):
            found.append(proto)
    return found


def _too_new_for_runtime(module: Path) -> bool:
    from google.protobuf import __version__ as runtime

    match = re.search(r"^# Protobuf Python Version: ([\d.]+)$", module.read_text(), re.MULTILINE)
    return match is not None and _version(match[1]) > _version(runtime)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def generate(sources: list[Path] | None = None) -> list[Path]:
    """Compile `sources` (default: every .proto here); returns the files written. Each file
    is written to a temporary directory first and moved into place, so a concurrent import
    never sees half a module."""
    from grpc_tools import protoc

    sources = protos() if sources is None else sources
    if not sources:
        return []
    include = resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    written = []
    with tempfile.TemporaryDirectory(dir=PROTO_DIR, prefix=".protoc-") as tmp:
        args = ["grpc_tools.protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={tmp}",
                f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *(str(p.relative_to(ROOT)) for p in sources)]
        cwd = os.getcwd()
        os.chdir(ROOT)  # protoc resolves the relative .proto paths against the include root
        try:
            code = protoc.main(args)
        finally:
            os.chdir(cwd)
        if code != 0:
            raise RuntimeError(f"protoc failed ({code}) on {[str(p) for p in sources]}; see its messages above")
        generated = Path(tmp) / PROTO_DIR.relative_to(ROOT)
        for proto in sources:
            for out in outputs(proto):
                os.replace(generated / out.name, out)
                written.append(out)
    return written


def ensure_generated() -> None:
    """Compile what is missing or out of date; a no-op (a few stat calls) otherwise."""
    todo = stale()
    if todo:
        try:
            generate(todo)
        except (ImportError, PermissionError, OSError) as err:
            raise RuntimeError(
                f"the gRPC modules for {[p.name for p in todo]} are missing or older than their .proto and could "
                f"not be generated ({type(err).__name__}: {err}); run `python -m service.grpc.proto.build` with "
                "grpcio-tools installed and write access to the package"
            ) from err
