"""Models spread over devices by a device_map (models.dispatch), as a model too large for one
GPU is. Without GPUs the real multi-placement path is accelerate's offload: a CPU budget
smaller than the model puts its first modules in CPU memory and the rest on disk, and the
hooks bring those weights in during every forward. Such a model scores exactly as a plain
load, padded, packed and with shared prefixes, for every kind of read; a checkpoint that does
not fit still fails; and what cannot be dispatched is refused naming the setting."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from test_models_loading import rewrite_weights
from test_models_packed import filler, mixed_items
from test_models_shared_prefix import P, group_items

from models.backends.config import TorchConfig
from models.errors import ModelLoadError
from models.inputs import StepsInput, TokenIds
from models.reward_model import RewardModel
from service.config import ModelConfig, Settings
from service.engine.runner import ModelRunner

KINDS = ["llama-scalar", "llama-helpsteer", "llama-gating", "qwen2-prm", "mistral-prm"]  # every read
LLAMA_MODULES = ("model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "model.rotary_emb", "score")


def weight_bytes(model_dir: Path) -> int:
    return sum(path.stat().st_size for path in model_dir.glob("*.safetensors"))


def offloading(model_dir: Path) -> dict:
    """device_map "auto" with CPU memory for 3/4 of the weights: the rest goes to disk."""
    return {"backend": TorchConfig(device_map="auto", max_memory={"cpu": weight_bytes(model_dir) * 3 // 4})}


@pytest.fixture(scope="module")
def plain_and_offloaded(tiny_model_dirs):
    """name -> (plain padded unshared load, the same offloaded with `options`), once per module."""
    cache: dict[str, tuple[RewardModel, RewardModel]] = {}

    def load(name: str, **options) -> tuple[RewardModel, RewardModel]:
        key = f"{name}:{options}"
        if key not in cache:
            directory = tiny_model_dirs[name]
            plain = RewardModel.load(name, directory, packed=False, share_prefix=False)
            cache[key] = plain, RewardModel.load(name, directory, **offloading(directory), **options)
        return cache[key]

    return load


def assert_offloaded(model: RewardModel) -> None:
    """Modules really are in two places, the forward runs on CPU, and the model says where it is."""
    placements = set(model.backend.graph.model.hf_device_map.values())
    assert placements == {"cpu", "disk"}, placements
    assert model.info.device == "cpu,disk"
    assert model.backend.device == torch.device("cpu")


@pytest.mark.parametrize("name", KINDS)
def test_offloaded_padded_forward_scores_as_a_plain_load(plain_and_offloaded, assert_outputs_match, name):
    plain, offloaded = plain_and_offloaded(name, packed=False, share_prefix=False)
    assert_offloaded(offloaded)
    items = mixed_items(plain)
    assert len({plain.encode(item).num_tokens for item in items}) == len(items) >= 4
    expected = plain.score(items)
    assert_outputs_match(offloaded.score(items), expected)
    assert_outputs_match(offloaded.score(items[::-1]), expected[::-1])
    batch = [offloaded.encode(item) for item in items]
    assert_outputs_match(offloaded.forward(batch), expected)
    assert torch.allclose(offloaded.head_features(batch), plain.head_features(batch), atol=1e-5)


@pytest.mark.parametrize("name", KINDS)
def test_offloaded_packed_forward_scores_as_a_plain_load(plain_and_offloaded, assert_outputs_match, name):
    plain, packed = plain_and_offloaded(name, packed=True, share_prefix=False)
    assert_offloaded(packed)
    assert packed.packed
    items = mixed_items(plain)
    assert_outputs_match(packed.forward([packed.encode(item) for item in items]), plain.score(items))


@pytest.mark.parametrize("name", ["llama-scalar", "llama-gating"])
def test_offloaded_shared_prefix_scores_as_a_plain_load(plain_and_offloaded, assert_outputs_match, name):
    plain, shared = plain_and_offloaded(name, share_prefix=True)
    assert_offloaded(shared)
    items = group_items(shared, filler(shared, P, 1)) + [TokenIds(tuple(filler(shared, 25, 2)), prompt_length=10)]
    before = shared.prefix_sharing.groups
    assert_outputs_match(shared.score(items), plain.score(items))
    assert shared.prefix_sharing.groups == before + 1


@pytest.mark.parametrize("name", ["qwen2-prm", "mistral-prm"])
def test_offloaded_shared_prefix_reads_step_markers(plain_and_offloaded, assert_outputs_match, name):
    """Token-classifier `score` and step-tag LM-head rows (the LM head is on disk) at markers
    inside the shared prefix and after it."""
    plain, shared = plain_and_offloaded(name, share_prefix=True)
    assert_offloaded(shared)
    marker = shared.encoder.marker_id
    prefix = filler(shared, P, 3)
    prefix[12] = prefix[P - 1] = marker
    items = [TokenIds(tuple(prefix + filler(shared, n, 5 + n) + [marker])) for n in (1, 8, 20, 3)]
    items.append(StepsInput("What is 3 + 4?", ("Add 3 and 4.", "The answer is 7.")))
    before = shared.prefix_sharing.groups
    assert_outputs_match(shared.score(items), plain.score(items))
    assert shared.prefix_sharing.groups == before + 1


def test_explicit_map_all_on_cpu(tiny_model_dirs, load_tiny, assert_outputs_match):
    """One device: transformers places the model there and dispatches nothing."""
    model = RewardModel.load("llama", tiny_model_dirs["llama-scalar"],
                             backend=TorchConfig(device_map=dict.fromkeys(LLAMA_MODULES, "cpu")))
    assert not hasattr(model.backend.graph.model, "hf_device_map")
    assert (model.info.device, model.backend.device) == ("cpu", torch.device("cpu"))
    items = mixed_items(model)
    assert_outputs_match(model.score(items), load_tiny("llama-scalar").score(items))


def test_explicit_map_with_the_input_embeddings_on_disk(tiny_model_dirs, load_tiny, assert_outputs_match, tmp_path):
    """Alternating placements, the embeddings offloaded: inputs go where their hook runs them."""
    device_map = dict(zip(LLAMA_MODULES, ("disk", "cpu", "disk", "cpu", "cpu", "disk")))
    backend = TorchConfig(device_map=device_map, offload_folder=str(tmp_path / "offload"))
    model = RewardModel.load("llama", tiny_model_dirs["llama-scalar"], backend=backend)
    graph = model.backend.graph
    assert graph.model.get_input_embeddings().weight.device.type == "meta"
    assert model.backend.device == torch.device("cpu") and model.info.device == "cpu,disk"
    items = mixed_items(model)
    assert_outputs_match(model.score(items), load_tiny("llama-scalar").score(items))


@pytest.mark.parametrize("tensor", ["model.embed_tokens.weight", "model.layers.1.mlp.up_proj.weight", "score.weight"])
def test_a_missing_tensor_fails_with_a_device_map(tiny_model_dirs, tmp_path, tensor):
    """A tensor the checkpoint lacks would be random wherever the map puts it: the load fails."""
    model_dir = tmp_path / "llama"
    shutil.copytree(tiny_model_dirs["llama-scalar"], model_dir)
    budget = offloading(model_dir)
    rewrite_weights(model_dir, lambda t: t.pop(tensor))
    with pytest.raises(ModelLoadError, match=rf"missing \(would be random\): {tensor.replace('.', '[.]')}"):
        RewardModel.load("llama", model_dir, **budget)


@pytest.mark.parametrize("options, message", [
    ({"device_map": {}}, "device_map must be a strategy or a non-empty"),
    ({"device_map": {"model": "gpu7"}}, "device_map entry 'model': 'gpu7'"),
    ({"device_map": {"model": -1}}, "device_map entry 'model': -1"),
    ({"device_map": "auto", "max_memory": {"gpu": "1GiB"}}, "max_memory key 'gpu'"),
    ({"device_map": "auto", "max_memory": {"0": "lots"}}, r"max_memory\['0'\]"),
    ({"max_memory": {"cpu": "1GiB"}}, "only apply with a device_map"),
    ({"offload_folder": "/tmp/offload"}, "only apply with a device_map"),
])
def test_invalid_placements_are_refused_naming_the_setting(tiny_model_dirs, options, message):
    with pytest.raises(ModelLoadError, match=message):
        RewardModel.load("llama", tiny_model_dirs["llama-scalar"], backend=TorchConfig(**options))


@pytest.mark.parametrize("device_map", ["everywhere", ["cpu"]])
def test_a_device_map_of_the_wrong_shape_is_refused_by_the_config(device_map):
    with pytest.raises(ValidationError, match="device_map"):
        TorchConfig(device_map=device_map)


@pytest.mark.parametrize("backend", [{"type": "onnxruntime"}, {"type": "triton", "url": "127.0.0.1:8001"}])
def test_device_map_with_another_backend_is_refused(backend):
    with pytest.raises(ValidationError, match="device_map"):
        ModelConfig(name="m", path="/models/m", backend=backend | {"device_map": "auto"})
    with pytest.raises(ValidationError, match=f"device_map applies to backend 'torch' only, not '{backend['type']}'"):
        ModelConfig(name="m", path="/models/m", backend=backend, device_map="auto")  # the deprecated flat key


def test_device_map_without_accelerate_says_so(tiny_model_dirs, monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # what `import accelerate` sees when it is not installed
    with pytest.raises(ModelLoadError, match="device_map needs the accelerate package"):
        RewardModel.load("llama", tiny_model_dirs["llama-scalar"], backend=TorchConfig(device_map="auto"))


def test_model_config_validates_and_passes_the_placement(tiny_model_dirs):
    path = str(tiny_model_dirs["llama-scalar"])
    with pytest.raises(ValidationError, match="device_map"):
        ModelConfig(name="m", path=path, backend={"type": "torch", "device_map": "everywhere"})
    with pytest.raises(ValidationError, match="max_memory"):
        ModelConfig(name="m", path=path, backend={"type": "torch", "device_map": "auto", "max_memory": ["cpu"]})
    with pytest.raises(ValidationError, match="device_map places the model; leave device at 'auto'"):
        ModelConfig(name="m", path=path, device="cuda:1", backend={"type": "torch", "device_map": "auto"})
    budget = offloading(tiny_model_dirs["llama-scalar"])["backend"].max_memory["cpu"]
    config = ModelConfig(name="m", path=path,
                         backend={"type": "torch", "device_map": "auto", "max_memory": {"cpu": budget}})
    runner = ModelRunner(config, Settings(models=[config]))
    runner.load()
    assert runner.status == "ready", runner.error
    assert runner.info.device == "cpu,disk"
    runner.close()


@pytest.mark.parametrize("device_map, placed", [
    ({"": "cpu"}, ("cpu", "float32")),
    ({"model.layers": "disk", "": "cpu"}, ("cpu", "float32")),
    ({"model.layers": 0, "": "cpu"}, ("cuda", "bfloat16")),
    ({"model.layers": "cuda:1", "": "cpu"}, ("cuda", "bfloat16")),
    ("auto", ("cuda", "bfloat16")),
])
def test_auto_device_and_dtype_follow_the_device_map_on_a_gpu_host(tiny_model_dirs, monkeypatch, device_map, placed):
    """On a host with a GPU, a map that puts nothing on it runs on the CPU in float32 (bfloat16
    is slow there, and rounds scores for nothing); one that uses a GPU, or a strategy, gets
    the GPU defaults."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config = ModelConfig(name="m", path=str(tiny_model_dirs["llama-scalar"]),
                         backend={"type": "torch", "device_map": device_map})
    assert (config.resolved_device(), config.resolved_dtype()) == placed


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_auto_splits_across_gpus(tiny_model_dirs, assert_outputs_match):
    """GPU 0 bounded to 3/4 of the model, as the CPU above: its modules go to both GPUs, and
    it scores as on CPU (within float32 on another device)."""
    for name in KINDS:
        directory = tiny_model_dirs[name]
        plain = RewardModel.load(name, directory, packed=False, share_prefix=False)
        size = weight_bytes(directory)
        backend = TorchConfig(device_map="auto", max_memory={0: size * 3 // 4, 1: 4 * size})
        split = RewardModel.load(name, directory, backend=backend, dtype="float32", packed=False, share_prefix=True)
        assert set(split.backend.graph.model.hf_device_map.values()) == {0, 1}
        assert split.info.device == "cuda:0,cuda:1"
        items = mixed_items(plain)
        assert_outputs_match(split.score(items), plain.score(items), tol=1e-4)
