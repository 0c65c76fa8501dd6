"""The installed environment is the one pyproject asks for and holds together: the current
tritonclient (its gRPC extra needs protobuf 6) beside our own gRPC code generation, with
no broken requirement anywhere; the wheel built from the tree ships the served code alone."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

from google.protobuf import __version__ as protobuf_version

ROOT = Path(__file__).resolve().parent.parent


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
    packages), the wheel holds service/ and models/ and no training or test-builder module."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache", ".cache"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                             "-q", "-w", str(tmp_path / "dist"), str(source)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("rewardserve-*.whl")
    names = [n for n in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in n]
    assert {n.split("/")[0] for n in names} == {"service", "models"}
    unshipped = {p.stem for p in (ROOT / "training").glob("*.py")} | {p.stem for p in (ROOT / "tests").glob("*.py")}
    shipped = {Path(n).stem for n in names if n.endswith(".py")}
    assert not shipped & (unshipped - {"__init__"})
