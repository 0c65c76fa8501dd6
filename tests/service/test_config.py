"""Server configuration: a YAML file, REWARDSERVE_* environment variables over it, and
explicit overrides (CLI flags) over both; model entries validated and resolved."""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml
from http_helpers import write_config
from paths import ROOT
from pydantic import ValidationError

from models.backends.config import OnnxRuntimeConfig, TorchConfig, TritonConfig
from models.inputs import StepsInput
from service.config import BUILTIN_DIR, CONFIG_ENV, DEFAULT_MODELS, ModelConfig, Settings, load_settings
from service.config.flat import FLAT_KEYS
from service.engine.runner import ModelRunner


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No REWARDSERVE_* variable from the outer environment; whatever a test sets is undone."""
    for name in [n for n in os.environ if n.startswith("REWARDSERVE_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def config_file(tmp_path, tiny_model_dirs):
    return write_config(tmp_path / "config.yaml", {"scalar": tiny_model_dirs["llama-scalar"]},
                        server={"port": 9000, "log_level": "warning"},
                        batching={"max_batch_size": 8, "max_batch_tokens": 1024})


def test_values_come_from_the_yaml_file(config_file, tiny_model_dirs):
    settings = load_settings(config_file)
    batching = settings.batching
    assert (settings.server.port, batching.max_batch_size, batching.max_batch_tokens) == (9000, 8, 1024)
    assert settings.server.log_level == "warning"
    assert [(m.name, m.path) for m in settings.models] == [("scalar", str(tiny_model_dirs["llama-scalar"]))]
    assert settings.server.host == "127.0.0.1" and settings.server.max_items_per_request == 4096  # defaults kept


def test_environment_beats_file(config_file, monkeypatch):
    monkeypatch.setenv("REWARDSERVE_SERVER__PORT", "9100")
    monkeypatch.setenv("REWARDSERVE_BATCHING__MAX_BATCH_SIZE", "3")
    settings = load_settings(config_file)
    assert (settings.server.port, settings.batching.max_batch_size) == (9100, 3)
    assert settings.batching.max_batch_tokens == 1024  # not overridden: still the file's
    assert settings.server.log_level == "warning"  # the rest of the file's section kept


def test_explicit_overrides_beat_environment_and_file(config_file, monkeypatch):
    monkeypatch.setenv("REWARDSERVE_SERVER__PORT", "9100")
    settings = load_settings(config_file, server={"port": 9200, "host": "0.0.0.0"})
    assert (settings.server.port, settings.server.host, settings.server.log_level) == (9200, "0.0.0.0", "warning")
    assert load_settings(config_file, server=None).server.port == 9100  # an unset flag overrides nothing


def test_config_env_var_names_the_file(config_file, monkeypatch):
    monkeypatch.setenv(CONFIG_ENV, str(config_file))
    assert load_settings().server.port == 9000


def test_loading_a_file_leaves_environment_and_later_settings_alone(config_file):
    load_settings(config_file)
    assert CONFIG_ENV not in os.environ
    assert Settings().server.port == 8000
    assert [m.name for m in load_settings().models] == [m.name for m in DEFAULT_MODELS]


def test_invalid_environment_value_is_rejected(config_file, monkeypatch):
    monkeypatch.setenv("REWARDSERVE_BATCHING__MAX_BATCH_SIZE", "0")
    with pytest.raises(ValidationError, match=r"batching\.max_batch_size"):
        load_settings(config_file)


def test_lists_and_mappings_come_from_json_in_the_environment(monkeypatch):
    monkeypatch.setenv("REWARDSERVE_AUTH__API_KEYS", '["k1", "k2"]')
    monkeypatch.setenv("REWARDSERVE_DRIFT__THRESHOLDS", '{"psi": 0.1}')
    settings = Settings()
    assert [k.get_secret_value() for k in settings.auth.api_keys] == ["k1", "k2"]
    assert settings.drift.thresholds == {"psi": 0.1}


def test_an_unknown_key_in_a_section_is_refused_naming_it(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"batching": {"max_batchsize": 4}}))
    with pytest.raises(ValidationError, match=r"batching\.max_batchsize\n  Extra inputs are not permitted"):
        load_settings(path)
    monkeypatch.setenv("REWARDSERVE_QUEUE__MAX_ITEM", "4")
    with pytest.raises(ValidationError, match=r"queue\.max_item\n"):
        Settings()


@pytest.mark.parametrize("how", ["argument", "env"])
def test_missing_config_file_raises(how, tmp_path, monkeypatch):
    missing = tmp_path / "nope.yaml"
    if how == "env":
        monkeypatch.setenv(CONFIG_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_settings(missing if how == "argument" else None)


def test_unknown_setting_in_file_is_rejected(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"server": {"port": 9000}, "max_batchsize": 4}))
    with pytest.raises(ValidationError, match="max_batchsize"):
        load_settings(path)


def test_without_models_the_builtin_defaults_are_served(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("server: {port: 9000}\n")
    settings = load_settings(path)
    assert [m.path for m in settings.models] == ["builtin:minilm-harmless", "builtin:minilm-prm",
                                                 "builtin:minilm-multi"]
    assert settings.default_model_name == "minilm-harmless"


def test_builtin_paths_resolve_to_the_embedded_models(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "prm", "path": "builtin:minilm-prm"}]}))
    resolved = load_settings(path).models[0].resolved_path()
    assert resolved == BUILTIN_DIR / "minilm-prm"
    assert (resolved / "reward_spec.yaml").is_file()
    assert ModelConfig(name="m", path="~/models/rm").resolved_path().is_absolute()


def test_duplicate_model_names_are_rejected(tmp_path, tiny_model_dirs):
    path = tmp_path / "config.yaml"
    directory = str(tiny_model_dirs["llama-scalar"])
    path.write_text(yaml.safe_dump({"models": [{"name": "rm", "path": directory}, {"name": "rm", "path": directory}]}))
    with pytest.raises(ValidationError, match="unique"):
        load_settings(path)


def test_empty_model_list_is_rejected(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("models: []\n")
    with pytest.raises(ValidationError, match="at least one model"):
        load_settings(path)


def test_default_model(config_file, tmp_path, tiny_model_dirs):
    assert load_settings(config_file).default_model_name == "scalar"
    dirs = {"a": tiny_model_dirs["llama-scalar"], "b": tiny_model_dirs["qwen2-scalar"]}
    assert load_settings(write_config(tmp_path / "b.yaml", dirs, default_model="b")).default_model_name == "b"
    with pytest.raises(ValidationError, match="default_model 'c'"):
        load_settings(write_config(tmp_path / "c.yaml", dirs, default_model="c"))


@pytest.mark.parametrize("entry", [
    {"name": "bad name", "path": "/x"},
    {"name": "rm", "path": "/x", "dtype": "int8"},
    {"name": "rm", "path": "/x", "revision": "main"},
])
def test_invalid_model_entries_are_rejected(entry, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"models": [entry]}))
    with pytest.raises(ValidationError):
        load_settings(path)


def test_a_shadow_names_another_configured_model_and_a_share_in_0_1(tmp_path):
    def models(**shadow) -> list[dict]:
        return [{"name": "live", "path": "/x", "shadow": shadow}, {"name": "next", "path": "/y"}]

    shadow = Settings(models=models(model="next", share=0.25, queue_items=8)).models[0].shadow
    assert (shadow.model, shadow.share, shadow.queue_items, shadow.window) == ("next", 0.25, 8, 1000)
    assert Settings(models=models(model="next")).models[0].shadow.share == 0.1
    for shadow, message in [({"model": "gone"}, "not among the configured models"),
                            ({"model": "live"}, "names the model itself"),
                            ({"model": "next", "share": 0}, "greater than 0"),
                            ({"model": "next", "share": 1.5}, "less than or equal to 1"),
                            ({"model": "next", "queue_items": 0}, "greater than or equal to 1")]:
        with pytest.raises(ValidationError, match=message):
            Settings(models=models(**shadow))


def test_inline_spec_overrides_the_directory_spec(tmp_path, tiny_model_dirs, load_tiny):
    """qwen2-prm's reward_spec.yaml aggregates steps by min over 256 tokens; an inline
    spec in the config makes it aggregate by last with max_length 64."""
    directory = tiny_model_dirs["qwen2-prm"]
    spec = yaml.safe_load((directory / "reward_spec.yaml").read_text())
    spec["process"]["aggregate"] = "last"
    spec["max_length"] = 64
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "prm", "path": str(directory), "spec": spec}]}))
    settings = load_settings(path)

    runner = ModelRunner(settings.models[0], settings)
    runner.load()

    assert runner.status == "ready", runner.error
    info, from_dir = runner.info, load_tiny("qwen2-prm").info
    assert (from_dir.step_aggregate, from_dir.max_length) == ("min", 256)
    assert (info.step_aggregate, info.max_length) == ("last", 64)
    assert info.revision != from_dir.revision  # the spec is part of the revision
    out = runner.model.score([StepsInput("What is 3 + 4?", ("3 + 4 = 7", "So 7.", "The answer is 7."))])[0]
    assert len(out.step_rewards) == 3 and out.score == out.step_rewards[-1]
    runner.close()


def test_backend_is_chosen_by_its_type_with_its_defaults(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"models": [
        {"name": "t", "path": "/m"},
        {"name": "o", "path": "/m", "backend": {"type": "onnxruntime", "file": "/m/x.onnx"}},
        {"name": "r", "path": "/m", "backend": {"type": "triton", "url": "triton:8001"}},
    ]}))
    plain, onnx, remote = load_settings(path).models
    assert plain.backend == TorchConfig() and plain.backend.device_map is None
    assert onnx.backend == OnnxRuntimeConfig(file="/m/x.onnx")
    assert remote.backend == TritonConfig(url="triton:8001", protocol="grpc", model=None, version="", timeout_s=60)


@pytest.mark.parametrize("backend, message", [
    ({"type": "tensorrt"}, "tag 'tensorrt' .* expected tags: 'torch', 'onnxruntime', 'triton'"),
    ({"file": "x.onnx"}, "Unable to extract tag using discriminator 'type'"),
    ({"type": "onnxruntime", "url": "x:1"}, r"backend\.onnxruntime\.url\n  Extra inputs are not permitted"),
    ({"type": "triton", "url": "http://x:1"}, r"backend\.triton\.url\n  String should match"),
    ({"type": "triton", "url": "x:1", "protocol": "udp"}, r"backend\.triton\.protocol"),
])
def test_a_wrong_backend_is_refused_naming_the_field(backend, message):
    with pytest.raises(ValidationError, match=message):
        ModelConfig(name="rm", path="/m", backend=backend)


def test_flat_backend_keys_still_work_with_a_warning_naming_the_new_form(monkeypatch, caplog):
    """The keys of earlier releases, here in REWARDSERVE_MODELS, mean what they meant."""
    monkeypatch.setenv("REWARDSERVE_MODELS", json.dumps([
        {"name": "rm", "path": "/m", "backend": "triton", "triton_url": "h:8001", "triton_timeout_s": 5},
        {"name": "onnx", "path": "/m", "backend": "onnxruntime", "onnx_file": "/m/x.onnx"},
        {"name": "big", "path": "/m", "device_map": "auto", "offload_folder": "/tmp/off"},
    ]))
    with caplog.at_level("WARNING", logger="rewardserve"):
        remote, onnx, big = load_settings().models
    assert remote.backend == TritonConfig(url="h:8001", timeout_s=5)
    assert onnx.backend == OnnxRuntimeConfig(file="/m/x.onnx")
    assert big.backend == TorchConfig(device_map="auto", offload_folder="/tmp/off")
    assert ("model rm: `backend: triton`, `triton_url`, `triton_timeout_s` deprecated; "
            "write `backend: {type: triton, url: h:8001, timeout_s: 5}`") in caplog.text
    assert "model big: `device_map`, `offload_folder` deprecated; write `backend: {type: torch, " in caplog.text


@pytest.mark.parametrize("entry, message", [
    ({"backend": "triton", "onnx_file": "x.onnx", "triton_url": "h:1"},
     "onnx_file applies to backend 'onnxruntime' only, not 'triton'"),
    ({"backend": {"type": "triton", "url": "h:1"}, "triton_url": "h:2"}, "triton_url and backend.url both given"),
])
def test_flat_keys_that_contradict_the_backend_are_refused(entry, message):
    with pytest.raises(ValidationError, match=message):
        ModelConfig(name="rm", path="/m", **entry)


def test_the_readmes_configuration_examples_are_valid_settings():
    readme = (ROOT / "README.md").read_text()
    examples = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", readme, re.S)]
    configs = [example for example in examples if isinstance(example, dict) and "models" in example]
    assert configs
    for config in configs:
        assert not set(config) & set(FLAT_KEYS), "the README writes the sections, not the flat keys"
        Settings(**config)


def test_flat_keys_of_earlier_releases_still_work_with_a_warning_naming_the_new_key(tmp_path, monkeypatch, caplog):
    """In the file, in the environment and as arguments, each moved into its section."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"port": 9000, "max_queue_tokens": 1000, "tls_handshake_timeout_s": 3,
                                    "drift_thresholds": {"psi": 0.3}, "batching": {"max_wait_ms": 7}}))
    monkeypatch.setenv("REWARDSERVE_MAX_BATCH_SIZE", "3")
    monkeypatch.setenv("REWARDSERVE_API_KEYS", '["k1"]')
    with caplog.at_level("WARNING", logger="rewardserve"):
        settings = load_settings(path, redis_url="redis://127.0.0.1:6379/0")
    assert (settings.server.port, settings.queue.max_tokens, settings.tls.handshake_timeout_s) == (9000, 1000, 3)
    assert settings.drift.thresholds == {"psi": 0.3} and settings.batching.max_wait_ms == 7
    assert settings.batching.max_batch_size == 3 and [k.get_secret_value() for k in settings.auth.api_keys] == ["k1"]
    assert settings.cache.redis_url == "redis://127.0.0.1:6379/0"
    assert ("max_queue_tokens (REWARDSERVE_MAX_QUEUE_TOKENS) is deprecated; "
            "use queue.max_tokens (REWARDSERVE_QUEUE__MAX_TOKENS)") in caplog.text
    assert "max_batch_size (REWARDSERVE_MAX_BATCH_SIZE) is deprecated; use batching.max_batch_size" in caplog.text
    assert "redis_url (REWARDSERVE_REDIS_URL) is deprecated; use cache.redis_url" in caplog.text


def test_a_flat_key_keeps_the_precedence_of_where_it_is_given(tmp_path, monkeypatch):
    """The environment's old name still beats the file's new one, and the reverse."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"server": {"port": 9000}, "max_batch_size": 8}))
    monkeypatch.setenv("REWARDSERVE_PORT", "9100")
    monkeypatch.setenv("REWARDSERVE_BATCHING__MAX_BATCH_SIZE", "3")
    settings = load_settings(path)
    assert (settings.server.port, settings.batching.max_batch_size) == (9100, 3)


@pytest.mark.parametrize("where", ["file", "environment", "arguments"])
def test_a_key_given_both_ways_in_one_place_is_refused_naming_both(where, tmp_path, monkeypatch):
    values = {"max_batch_size": 8, "batching": {"max_batch_size": 4}}
    path = None
    if where == "file":
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(values))
    elif where == "environment":
        monkeypatch.setenv("REWARDSERVE_MAX_BATCH_SIZE", "8")
        monkeypatch.setenv("REWARDSERVE_BATCHING__MAX_BATCH_SIZE", "4")
    message = ("max_batch_size (REWARDSERVE_MAX_BATCH_SIZE) and batching.max_batch_size "
               "(REWARDSERVE_BATCHING__MAX_BATCH_SIZE) both given; keep batching.max_batch_size")
    with pytest.raises(ValueError, match=re.escape(message)):
        load_settings(path, **values) if where == "arguments" else load_settings(path)

