"""The golden-set canary: `rewardserve canary-record` writes fixed items with the scores the
model gives them; a server re-scores them at start-up and on `POST /v1/admin/canary`. The
same model passes (every number within float noise); a copy whose weights were nudged
slightly, loaded through the normal path, fails with a deviation past the tolerance. The
default server ships golden sets and drift baselines for both embedded models."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest
import torch
from http_helpers import assert_error, live_server, reference, sample_items, wait_until_loaded, write_config
from metrics_helpers import scrape
from safetensors.torch import load_file, save_file

from service.app import create_app
from service.cli import main
from service.config import Settings, load_settings
from service.config.sections import CanarySettings
from service.monitoring.canary import CANARY_FILENAME, read_canary

WAIT_S = 120
NUDGE = 0.02  # relative: each weight moves by about 2% of its tensor's spread


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write_items(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def nudge_weights(model_dir: Path) -> None:
    """Every floating-point weight plus seeded noise of NUDGE times its tensor's std."""
    generator = torch.Generator().manual_seed(0)
    for path in model_dir.glob("*.safetensors"):
        tensors = load_file(path)
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and tensor.numel() > 1:
                noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
                tensors[name] = (tensor.float() + NUDGE * tensor.float().std() * noise).to(tensor.dtype)
        save_file(tensors, path)


def latest_canary(client: httpx.Client, names: set[str], timeout: float = WAIT_S) -> dict:
    """The canary results once every model in `names` has one."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get("/v1/admin/canary").json()
        if names <= set(body["models"]):
            return body
        assert time.monotonic() < deadline, f"no canary result for {names - set(body['models'])}: {body}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def recorded(tiny_model_dirs, load_tiny, tmp_path_factory) -> dict[str, Path]:
    """Golden sets for a multi-objective and a process model, recorded by the CLI, and a
    copy of the multi-objective model with nudged weights and the same golden set."""
    root = tmp_path_factory.mktemp("canary")
    dirs = {"helpsteer": root / "helpsteer", "prm": root / "prm"}
    shutil.copytree(tiny_model_dirs["llama-helpsteer"], dirs["helpsteer"])
    shutil.copytree(tiny_model_dirs["qwen2-prm"], dirs["prm"])
    config = write_config(root / "config.yaml", dirs)
    for name, tiny in (("helpsteer", "llama-helpsteer"), ("prm", "qwen2-prm")):
        source = write_items(root / f"{name}.jsonl", sample_items(load_tiny(tiny)))
        main(["canary-record", str(source), "--config", str(config), "--model", name, "--write"])
    dirs["nudged"] = root / "nudged"
    shutil.copytree(dirs["helpsteer"], dirs["nudged"])
    nudge_weights(dirs["nudged"])
    return dirs


def test_canary_record_writes_the_unbatched_reference(recorded, load_tiny, capsys):
    capsys.readouterr()
    for name, tiny in (("helpsteer", "llama-helpsteer"), ("prm", "qwen2-prm")):
        items = read_canary(recorded[name] / CANARY_FILENAME)
        model = load_tiny(tiny)
        assert [c.item for c in items] == sample_items(model)
        for canary in items:
            expected = reference(model, canary.item)
            assert canary.expected.score == pytest.approx(expected.score, abs=1e-6)
            assert canary.expected.dimensions == pytest.approx(expected.dimensions, abs=1e-6) \
                if expected.dimensions else canary.expected.dimensions is None
            assert canary.expected.step_rewards == pytest.approx(expected.step_rewards, abs=1e-6) \
                if expected.step_rewards else canary.expected.step_rewards is None
            assert canary.revision == model.revision and canary.source.startswith(f"{name}.jsonl (sha256:")


def test_nudged_weights_fail_the_canary(recorded, tmp_path):
    config = write_config(tmp_path / "config.yaml", recorded, canary={"interval_s": 0})
    app = create_app(load_settings(config))
    with live_server(app) as url, httpx.Client(base_url=url, timeout=WAIT_S) as client:
        assert wait_until_loaded(client).status_code == 200
        startup = latest_canary(client, set(recorded))["models"]
        manual = client.post("/v1/admin/canary", json={"model": "nudged"})
        everything = client.post("/v1/admin/canary")
        s = scrape(client)

    tolerance = startup["helpsteer"]["tolerance"]
    assert tolerance == CanarySettings().tolerance
    for name in ("helpsteer", "prm"):
        result = startup[name]
        assert result["passed"] and result["trigger"] == "startup" and result["error"] is None, result
        assert result["max_abs_deviation"] < 1e-4 and result["revision"] == result["recorded_revision"]
        assert result["items"] == len(read_canary(recorded[name] / CANARY_FILENAME))
    assert startup["helpsteer"]["spearman"] == pytest.approx(1.0)
    nudged = startup["nudged"]
    assert not nudged["passed"] and nudged["max_abs_deviation"] > tolerance, nudged
    assert nudged["revision"] != nudged["recorded_revision"]  # the weights are fingerprinted

    assert manual.status_code == 200, manual.text
    assert set(manual.json()["models"]) == {"nudged"}
    assert manual.json()["models"]["nudged"]["trigger"] == "manual"
    assert manual.json()["models"]["nudged"]["max_abs_deviation"] == pytest.approx(nudged["max_abs_deviation"],
                                                                                    abs=1e-5)
    assert set(everything.json()["models"]) == set(recorded)

    assert s.value("rewardserve_canary_max_abs_deviation", model="nudged") > tolerance
    assert s.value("rewardserve_canary_max_abs_deviation", model="helpsteer") < 1e-4
    assert s.value("rewardserve_canary_passed", model="nudged") == 0
    assert s.value("rewardserve_canary_passed", model="prm") == 1
    assert s.value("rewardserve_canary_spearman", model="helpsteer") == pytest.approx(1.0)
    assert s.value("rewardserve_canary_tolerance", model="nudged") == tolerance
    assert s.value("rewardserve_canary_runs_total", model="nudged", trigger="startup", outcome="fail") == 1
    assert s.value("rewardserve_canary_runs_total", model="nudged", trigger="manual", outcome="fail") == 2
    assert s.value("rewardserve_canary_runs_total", model="prm", trigger="manual", outcome="pass") == 1


def test_admin_canary_refusals(recorded, tiny_model_dirs, tmp_path):
    config = write_config(tmp_path / "config.yaml", {"prm": recorded["prm"], "plain": tiny_model_dirs["llama-scalar"]},
                          canary={"interval_s": 0})
    app = create_app(load_settings(config))
    with live_server(app) as url, httpx.Client(base_url=url, timeout=WAIT_S) as client:
        assert wait_until_loaded(client).status_code == 200
        assert_error(client.post("/v1/admin/canary", json={"model": "ghost"}), 404, "model_not_found", "model")
        assert_error(client.post("/v1/admin/canary", json={"model": "plain"}), 404, "not_found", "model")
        assert_error(client.post("/v1/admin/canary", json={"models": ["prm"]}), 422, "invalid_request", "models")
        assert set(latest_canary(client, {"prm"})["models"]) == {"prm"}  # only models with a golden set


def test_default_server_checks_its_embedded_models():
    """The shipped golden sets pass, and the shipped drift baselines are loaded and belong
    to the served revisions."""
    app = create_app(Settings(canary={"interval_s": 0}))
    names = {"minilm-harmless", "minilm-prm", "minilm-multi"}
    with live_server(app) as url, httpx.Client(base_url=url, timeout=WAIT_S) as client:
        assert wait_until_loaded(client, timeout=WAIT_S).status_code == 200
        canary = latest_canary(client, names)["models"]
        drift = client.get("/v1/drift").json()["models"]
        s = scrape(client)
    for name in names:
        assert canary[name]["passed"] and canary[name]["max_abs_deviation"] < 1e-3, canary[name]
        assert canary[name]["revision"] == canary[name]["recorded_revision"]
        assert s.value("rewardserve_drift_baseline_loaded", model=name) == 1
        assert "baseline_error" not in drift[name]
        assert drift[name]["baseline"]["revision"] == drift[name]["revision"] == canary[name]["revision"]
    assert {name: canary[name]["items"] for name in names} == {"minilm-harmless": 32, "minilm-prm": 16,
                                                               "minilm-multi": 32}
    assert {name: drift[name]["baseline"]["count"] for name in names} == {"minilm-harmless": 478, "minilm-prm": 87,
                                                                          "minilm-multi": 687}
