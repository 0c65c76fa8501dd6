"""The installed environment is the one pyproject asks for and holds together: the current
tritonclient (its gRPC extra needs protobuf 6) beside our own gRPC code generation, with
no broken requirement anywhere."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

from google.protobuf import __version__ as protobuf_version


def test_current_tritonclient_installs_beside_our_grpc_code():
    import tritonclient.grpc  # noqa: F401 - its generated code checks the protobuf runtime on import

    from service.grpc.proto import rewardserve_pb2  # noqa: F401 - so does ours

    assert tuple(int(p) for p in version("tritonclient").split(".")[:2]) >= (2, 73)
    assert protobuf_version.startswith("6.")


def test_pip_finds_no_broken_requirement():
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
