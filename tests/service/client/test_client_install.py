"""A client-only install, for real: a fresh venv gets `pip install` of this repository with
no extra (from PyPI, so the `e2e` mark), which brings no torch; a script run there scores
against a live server started from the test's own environment, over HTTP and gRPC, and gets
the numbers the server gives this environment's client; the `rewardserve` command there names
the extra the server needs."""

from __future__ import annotations

import json
import shutil
import subprocess
import venv
from pathlib import Path

import pytest
from http_helpers import within_tol
from paths import ROOT

from service.client import RewardClient

pytestmark = pytest.mark.e2e

SHIPPED = ("pyproject.toml", "README.md", "service", "models")  # what the wheel is built from
INSTALL_TIMEOUT_S = 600
MODEL = "llama-scalar"
PAIRS = [("What is 2 + 2?", "It is 4."), ("Say hi.", "Hello there, how can I help you today?")]
SCRIPT = """
import importlib.util, json, sys
from service.client import RewardClient
scores = {}
for url in sys.argv[1:]:
    with RewardClient(url, model=%r, retries=0, timeout_s=60) as rm:
        scores[url] = [r.score for r in rm.score(%r).results]
print(json.dumps({"scores": scores, "torch": importlib.util.find_spec("torch") is not None,
                  "modules": sorted(sys.modules)}))
""" % (MODEL, PAIRS)  # noqa: UP031 - the script's own braces rule out format()


@pytest.fixture(scope="module")
def client_python(tmp_path_factory) -> Path:
    """The python of a fresh venv holding a plain install of this repository."""
    root = tmp_path_factory.mktemp("client-install")
    source = root / "source"
    source.mkdir()
    for name in SHIPPED:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    result = subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(source)], capture_output=True,
                            text=True, timeout=INSTALL_TIMEOUT_S, cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    return python


@pytest.fixture(scope="module")
def server(served):
    with served([MODEL]) as server:
        yield {"http": server.url, "grpc": f"grpc://{server.grpc_target}"}


def test_a_plain_install_scores_without_torch(client_python, server):
    result = subprocess.run([str(client_python), "-c", SCRIPT, server["http"], server["grpc"]], capture_output=True,
                            text=True, timeout=120, cwd=client_python.parent)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["torch"] is False
    assert not [m for m in answer["modules"] if m.split(".")[0] in ("torch", "numpy", "models")]
    with RewardClient(server["http"], model=MODEL) as rm:
        expected = [r.score for r in rm.score(PAIRS).results]
    for url, scores in answer["scores"].items():
        assert scores == within_tol(expected), url


def test_the_command_names_the_serve_extra(client_python):
    result = subprocess.run([str(client_python.with_name("rewardserve")), "serve"], capture_output=True, text=True,
                            timeout=60, cwd=client_python.parent)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "pip install 'rewardserve[serve]'" in result.stderr, result.stderr
