"""The installed environment is the one pyproject asks for and holds together: the current
tritonclient (its gRPC extra needs protobuf 6) beside our generated gRPC code, no broken
requirement anywhere; the committed gRPC code is what the .proto compiles to; a plain
install is the client alone; one torch pin; the wheel built from the tree ships the served
code alone."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import version
from pathlib import Path

from google.protobuf import __version__ as protobuf_version
from packaging.requirements import Requirement

from service.grpc.proto import build

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SERVER_PACKAGES = {"torch", "transformers", "fastapi", "uvicorn", "numpy", "redis", "onnxruntime", "tritonclient",
                   "accelerate"}


def requirements(extra: str | None = None) -> dict[str, Requirement]:
    listed = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    return {(r := Requirement(line)).name: r for line in listed}


def test_current_tritonclient_installs_beside_our_grpc_code():
    import tritonclient.grpc  # noqa: F401 - its generated code checks the protobuf runtime on import

    from service.grpc.proto import rewardserve_pb2  # noqa: F401 - so does ours

    assert tuple(int(p) for p in version("tritonclient").split(".")[:2]) >= (2, 73)
    assert protobuf_version.startswith("6.")


def test_pip_finds_no_broken_requirement():
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_wheel_holds_the_served_packages_alone(tmp_path):
    """Built from a copy of the whole tree (training/, tests/ and loadtests/ beside the served
    packages), the wheel holds service/ and models/ and no training or test-builder module, and
    its metadata the license text."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache", ".cache"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                             "-q", "-w", str(tmp_path / "dist"), str(source)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("rewardserve-*.whl")
    every = zipfile.ZipFile(wheel).namelist()
    assert any(Path(n).name == "LICENSE" and ".dist-info/" in n for n in every), "LICENSE not in the metadata"
    names = [n for n in every if ".dist-info/" not in n]
    assert {n.split("/")[0] for n in names} == {"service", "models"}
    unshipped = {p.stem for p in (ROOT / "training").glob("*.py")} | {p.stem for p in (ROOT / "tests").glob("*.py")}
    shipped = {Path(n).stem for n in names if n.endswith(".py")}
    assert not shipped & (unshipped - {"__init__"})


def test_committed_grpc_code_is_what_the_proto_compiles_to(tmp_path):
    written = build.generate(tmp_path)
    assert written, "no .proto compiled"
    for path in written:
        committed = build.PROTO_DIR / path.name
        assert committed.read_bytes() == path.read_bytes(), f"{committed.name} is stale: run `make protos`"


def test_a_plain_install_is_the_client_alone():
    base = set(requirements())
    assert base == {"pydantic", "httpx", "grpcio", "protobuf"}
    assert not base & SERVER_PACKAGES
    assert {"torch", "transformers", "fastapi", "uvicorn"} <= set(requirements("serve"))
    assert PROJECT["scripts"]["rewardserve"] == "service.launcher:main"


def test_no_dependency_installs_a_package_named_models():
    """llama-models ships a top-level `models` that shadows ours; the tests read its wheel."""
    listed = [line for extra in PROJECT["optional-dependencies"].values() for line in extra]
    assert not [line for line in listed if Requirement(line).name == "llama-models"]


def test_one_torch_pin():
    """The Makefile's and the Dockerfile's default torch build is one version, inside the
    range pyproject's serve extra accepts."""
    makefile = re.search(r"^TORCH \?= (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)[1]
    dockerfile = re.search(r"^ARG TORCH=(\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)[1]
    assert makefile == dockerfile
    pinned = Requirement(makefile)
    assert pinned.name == "torch" and len(pinned.specifier) == 1
    assert next(iter(pinned.specifier)).version in requirements("serve")["torch"].specifier
