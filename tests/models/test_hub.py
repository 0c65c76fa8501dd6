"""Models named by hub id, read offline from a hub cache laid out as huggingface_hub writes it
(blobs, refs, snapshots of symlinks): the same scores as from the directory, on the server too."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from http_helpers import serve
from huggingface_hub import constants

from models.errors import ModelLoadError
from models.hub import is_hub_id
from models.inputs import TextPair
from models.reward_model import RewardModel
from service.config import ModelConfig, Settings

COMMIT = "0123456789abcdef0123456789abcdef01234567"
ITEMS = [TextPair("What is 2 + 2?", "4."), TextPair("Name a colour.", "Blue is a colour of the sky.")]


def hub_cache(root: Path, repo: str, model_dir: Path, refs: dict[str, str]) -> Path:
    """`model_dir` as the hub cache holds repo `repo` at COMMIT: each file a blob named by
    its hash, the snapshot a tree of links to them, `refs` naming the commit."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / COMMIT
    for file in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(model_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref, commit in refs.items():
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / ref).write_text(commit)
    return root


@pytest.fixture
def offline_cache(tmp_path, tiny_model_dirs, monkeypatch):
    cache = hub_cache(tmp_path / "hub", "acme/tiny-rm", tiny_model_dirs["llama-scalar"], {"main": COMMIT, "v1": COMMIT})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_a_hub_id_is_what_reads_as_one_and_is_no_directory_here(tmp_path, monkeypatch):
    assert is_hub_id("acme/tiny-rm") and is_hub_id("acme/tiny-rm@v1") and is_hub_id(f"acme/tiny-rm@{COMMIT}")
    assert not is_hub_id("builtin:minilm-prm") and not is_hub_id("/models/rm") and not is_hub_id("rm")
    (tmp_path / "org" / "local").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not is_hub_id("org/local")  # a directory that is there is a directory


@pytest.mark.parametrize("path", ["acme/tiny-rm", "acme/tiny-rm@v1", f"acme/tiny-rm@{COMMIT}"])
def test_a_cached_hub_model_loads_offline_with_the_directorys_scores(offline_cache, tiny_model_dirs, load_tiny, path):
    directory = ModelConfig(name="rm", path=path).resolved_path(download=True)
    assert directory == offline_cache / "models--acme--tiny-rm" / "snapshots" / COMMIT
    from_hub = RewardModel.load("rm", directory).score(ITEMS)
    assert [o.score for o in from_hub] == [o.score for o in load_tiny("llama-scalar").score(ITEMS)]


def test_a_hub_model_missing_offline_says_how_to_fetch_it(offline_cache):
    with pytest.raises(ModelLoadError, match=r"acme/other@v2: not in the hub cache .*HF_HUB_OFFLINE.*"
                                             r"`hf download acme/other --revision v2`"):
        ModelConfig(name="rm", path="acme/other@v2").resolved_path(download=True)
    with pytest.raises(ModelLoadError, match="not fetched into the hub cache"):
        ModelConfig(name="rm", path="acme/other").resolved_path()


def test_the_server_serves_a_hub_model_and_reports_a_missing_one(offline_cache, load_tiny):
    settings = Settings(models=[ModelConfig(name="rm", path="acme/tiny-rm@v1"),
                                ModelConfig(name="gone", path="acme/absent")])
    expected = load_tiny("llama-scalar").score(ITEMS[:1])[0].score
    with serve(settings, ready=False) as served:
        answer = served.http.post("/v1/score", json={"model": "rm", "items": [
            {"prompt": ITEMS[0].prompt, "response": ITEMS[0].response}]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["results"][0]["score"] == pytest.approx(expected, abs=1e-6)
        gone = served.http.get("/v1/models/gone").json()
        assert gone["status"] == "failed" and "`hf download acme/absent`" in gone["error"]
