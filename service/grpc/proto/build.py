"""`python -m service.grpc.proto.build`: regenerate the committed `*_pb2.py`, `*_pb2_grpc.py`
and `*_pb2.pyi` from every .proto here with grpcio-tools (a development dependency: the
installed package only imports the generated code). protoc's include root is the directory
holding the `service` package, so the generated code imports its siblings package-qualified
(`from service.grpc.proto import rewardserve_pb2`) and works wherever the package is
installed; `tests/test_packaging.py` checks the committed code is what this writes."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parents[2]  # holds the `service` package


def generate(out_root: Path = ROOT) -> list[Path]:
    """Compile every .proto here into `out_root`/service/grpc/proto/ (default: beside the
    .proto files); returns the files written."""
    from grpc_tools import protoc

    protos = sorted(PROTO_DIR.glob("*.proto"))
    include = resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    out = out_root / PROTO_DIR.relative_to(ROOT)
    out.mkdir(parents=True, exist_ok=True)
    code = protoc.main(["grpc_tools.protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={out_root}",
                        f"--pyi_out={out_root}", f"--grpc_python_out={out_root}", *map(str, protos)])
    if code != 0:
        raise RuntimeError(f"protoc failed ({code}) on {[p.name for p in protos]}; see its messages above")
    return sorted(path for proto in protos for path in out.glob(f"{proto.stem}_pb2*"))


def main() -> None:
    for path in generate():
        print(path)


if __name__ == "__main__":
    main()
