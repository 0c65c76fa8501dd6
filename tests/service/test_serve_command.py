"""`rewardserve serve PATH ...` run for real in a subprocess: the models named on the command
line are served under their names, the start-up says where it listens and how each model
loaded, and each first-run mistake ends in its short message, with no traceback unless
--debug asks for one."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch
from cli_helpers import cli_env, rewardserve_command
from http_helpers import assert_result_matches, free_port, poll, reference
from safetensors.torch import load_file
from sched_helpers import wait_for
from tiny_models import build_llama_scalar

from models.reward_model import RewardModel
from service.cli.serve import default_name

START_S = 180  # a bound on start-up and loading, never a measured time
TRACEBACK = "Traceback"


@pytest.fixture(scope="module")
def scalar_dir(tmp_path_factory) -> Path:
    """A single-label sequence classifier with no reward_spec.yaml (its kind is inferred)."""
    return build_llama_scalar(tmp_path_factory.mktemp("serve") / "llama-scalar")


@contextmanager
def serving(args: list[str], log_path: Path, **env: str) -> Iterator[tuple[subprocess.Popen, Callable]]:
    """`rewardserve serve ARGS` running, with its output so far; stopped on the way out."""
    with log_path.open("w") as log:
        process = subprocess.Popen([*rewardserve_command(), "serve", *args], stdout=log, stderr=subprocess.STDOUT,
                                   env=cli_env(**env), cwd=log_path.parent)
        try:
            yield process, log_path.read_text
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


def wait_for_line(process: subprocess.Popen, output: Callable[[], str], text: str) -> None:
    wait_for(lambda: text in output() or process.poll() is not None, f"{text!r} in the output", timeout=START_S)
    assert text in output(), f"server exited ({process.returncode}) without {text!r}:\n{output()}"


def test_serve_a_directory_under_its_name(scalar_dir, tmp_path):
    port = free_port()
    args = [str(scalar_dir), "--name", "rm", "--port", str(port), "--grpc-port", "0"]
    with serving(args, tmp_path / "serve.log") as (process, output):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            ready = poll(lambda: client.get("/health/ready"), lambda r: r.status_code == 200, timeout=START_S,
                         interval=0.25)
            assert list(ready.json()["models"]) == ["rm"]
            item = {"prompt": "Hi", "response": "Hello!"}
            scored = client.post("/v1/score", json={"model": "rm", "items": [item]})
            assert scored.status_code == 200, scored.text
        assert_result_matches(scored.json()["results"][0], reference(RewardModel.load("rm", scalar_dir), item))
        wait_for_line(process, output, "model rm ready")
        assert f"listening on http://127.0.0.1:{port}, gRPC off" in output()


def _pickled(scalar_dir: Path, out: Path) -> Path:
    """The same checkpoint saved the old way: pytorch_model.bin, no safetensors."""
    shutil.copytree(scalar_dir, out)
    torch.save(load_file(out / "model.safetensors"), out / "pytorch_model.bin")
    (out / "model.safetensors").unlink()
    return out


def _two_labels(scalar_dir: Path, out: Path) -> Path:
    """A two-label classification head with no spec saying how to read it."""
    shutil.copytree(scalar_dir, out)
    config = json.loads((out / "config.json").read_text())
    config["id2label"] = {"0": "bad", "1": "good"}
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def failed_models(scalar_dir, tmp_path_factory) -> tuple[Path, str]:
    """One server given four models that cannot load: their directory, and the output once every one has said why."""
    root = tmp_path_factory.mktemp("failing").resolve()
    args = [str(root / "missing"), "org/absent-model", str(_pickled(scalar_dir, root / "pickled")),
            str(_two_labels(scalar_dir, root / "two-labels")), "--port", str(free_port()), "--grpc-port", "0"]
    with serving(args, root / "serve.log", HF_HUB_CACHE=str(root / "hub")) as (process, output):
        for name in ("missing", "absent-model", "pickled", "two-labels"):
            wait_for_line(process, output, f"model {name} failed")
        return root, output()


@pytest.mark.parametrize(("name", "messages"), [
    ("missing", ["no such directory {root}/missing"]),
    ("absent-model", ["org/absent-model: not in the hub cache", "HF_HUB_OFFLINE is set"]),
    ("pickled", ["re-save as safetensors: model.save_pretrained(dir, safe_serialization=True)"]),
    ("two-labels", ["a 2-label head", "add a reward_spec.yaml: models/README.md"]),
])
def test_a_model_that_cannot_load_says_why_on_its_status_line(failed_models, name, messages):
    root, output = failed_models
    status = next(line for line in output.splitlines() if f"model {name} failed" in line)
    for message in messages:
        assert message.format(root=root) in status, status
    assert TRACEBACK not in output


def run_serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*rewardserve_command(), "serve", *args], capture_output=True, text=True, timeout=START_S,
                          env=cli_env())


@pytest.mark.parametrize("debug", [False, True])
def test_a_config_typo_names_the_key(tmp_path, debug):
    config = tmp_path / "config.yaml"
    config.write_text("server:\n  prot: 8001\n")
    done = run_serve("--config", str(config), *(["--debug"] if debug else []))
    assert done.returncode != 0
    if debug:
        assert TRACEBACK in done.stderr
    else:
        assert "config: server.prot: unknown key" in done.stderr and TRACEBACK not in done.stderr, done.stderr


@pytest.mark.parametrize("flag", ["--port", "--grpc-port"])
def test_a_busy_port_says_which_and_what_to_do(scalar_dir, flag):
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        ports = {"--port": str(free_port()), "--grpc-port": str(free_port())} | {flag: str(port)}
        done = run_serve(str(scalar_dir), *[part for item in ports.items() for part in item])
    assert done.returncode == 1
    assert f"port {port} is in use: pass {flag} or stop what holds it" in done.stderr
    assert TRACEBACK not in done.stderr + done.stdout


@pytest.mark.parametrize(("path", "name"), [
    ("builtin:minilm-prm", "minilm-prm"),
    ("org/some-rm@v2", "some-rm"),
    ("/models/my rm (final)/", "my-rm-final-"),
    ("/models/.hidden", "hidden"),
])
def test_a_model_is_named_by_the_last_part_of_its_path(path, name):
    assert default_name(path) == name
