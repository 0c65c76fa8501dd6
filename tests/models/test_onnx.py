"""The onnxruntime backend: every model kind exported with `rewardserve export-onnx` gives the
torch reference's numbers within 1e-4 on mixed-length batches, through the model layer and
through the server."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from http_helpers import (
    assert_result_matches,
    reference,
    sample_items,
    served_input,
    write_config,
)
from tiny_models import BUILDERS

from models.backends.base import Backend
from models.backends.config import OnnxRuntimeConfig
from models.backends.onnx import ONNX_FILENAME
from models.errors import ModelLoadError
from models.onnx_export import export_onnx
from models.reward_model import RewardModel
from service.config import ModelConfig

pytest.importorskip("onnxruntime")
TOL = 1e-4
ONNX = OnnxRuntimeConfig()


@pytest.fixture(scope="module")
def exported(tiny_model_dirs, load_tiny, tmp_path_factory):
    """Copies of every tiny model with reward.onnx beside it."""
    root = tmp_path_factory.mktemp("onnx")
    dirs = {name: shutil.copytree(path, root / name) for name, path in tiny_model_dirs.items()}
    for name, directory in dirs.items():
        export_onnx(load_tiny(name), directory / ONNX_FILENAME)
    return dirs


def test_cli_exports_into_the_model_directory(tiny_model_dirs, tmp_path):
    directory = shutil.copytree(tiny_model_dirs["bert-scalar"], tmp_path / "bert-scalar")
    config = write_config(tmp_path / "config.yaml", {"bert": directory})
    done = subprocess.run([sys.executable, "-m", "service.cli", "export-onnx", "--config", str(config)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(directory / ONNX_FILENAME)
    assert RewardModel.load("bert", directory, backend=ONNX).info.architecture == "onnx:BertForSequenceClassification"


@pytest.mark.parametrize("name", list(BUILDERS))
def test_onnx_matches_torch_on_mixed_lengths(name, exported, load_tiny, assert_outputs_match):
    torch_model = load_tiny(name)
    onnx_model = RewardModel.load(name, exported[name], backend=ONNX)
    assert onnx_model.info.architecture == f"onnx:{torch_model.info.architecture}"
    assert isinstance(onnx_model.backend, Backend) and onnx_model.backend.graph is None
    assert onnx_model.revision != torch_model.revision
    items = [served_input(item) for item in sample_items(torch_model)]
    batched = onnx_model.score(items)
    assert_outputs_match(batched, [torch_model.score([item])[0] for item in items], tol=TOL)
    assert_outputs_match(batched, [onnx_model.score([item])[0] for item in items], tol=TOL)


def test_server_with_onnx_backend(served, exported, load_tiny):
    names = ["llama-gating", "qwen2-prm", "bert-scalar"]
    with served([ModelConfig(name=n, path=str(exported[n]), backend=ONNX) for n in names], grpc=False) as server:
        client = server.http
        for name in names:
            items = sample_items(load_tiny(name))
            body = client.post("/v1/score", json={"model": name, "items": items}).json()
            for result, item in zip(body["results"], items):
                assert_result_matches(result, reference(load_tiny(name), item), tol=TOL)


def test_missing_onnx_file_is_a_clear_load_error(tiny_model_dirs):
    with pytest.raises(ModelLoadError, match="export-onnx"):
        RewardModel.load("x", tiny_model_dirs["llama-scalar"], backend=ONNX)


def test_an_onnx_file_elsewhere_is_named_by_backend_file(exported, tmp_path):
    moved = shutil.copy(exported["llama-scalar"] / ONNX_FILENAME, tmp_path / "elsewhere.onnx")
    model = RewardModel.load("x", exported["llama-scalar"], backend=OnnxRuntimeConfig(file=str(moved)))
    assert model.info.architecture == "onnx:LlamaForSequenceClassification"


def test_without_onnxruntime_the_load_error_names_the_extra(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` sees when it is not installed
    with pytest.raises(ModelLoadError, match=r"onnxruntime is not installed .*pip install 'rewardserve\[onnx\]'"):
        RewardModel.load("x", exported["llama-scalar"], backend=ONNX)
