"""`rewardserve calibrate`: a reference set's score statistics, printed as YAML or written
into the model's reward_spec.yaml (changing its revision), and the round trip: z-scores of
that same set served with normalize='zscore' have mean 0 and standard deviation 1."""

from __future__ import annotations

import json
import shutil
import statistics

import pytest
import yaml
from http_helpers import reference, sample_items, served_input, write_config
from tiny_models import HELPSTEER

from models.reward_model import RewardModel
from models.spec import SPEC_FILENAME
from service.cli import main
from service.config import ModelConfig

MULTI, SCALAR, PRM = "llama-helpsteer", "llama-scalar", "qwen2-prm"
EXTRA = [{"prompt": "Hi", "response": "Go away."}, {"prompt": "What is 2 + 2?", "response": "4"},
         {"prompt": "Tell me a story.", "response": "The quick brown fox jumps over the lazy dog."}]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write_items(path, items: list[dict]):
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def calibrate(capsys, *args: str) -> tuple[dict, str]:
    main(["calibrate", *args, "--quiet"])
    captured = capsys.readouterr()
    return yaml.safe_load(captured.out)["reference_stats"], captured.err


def test_calibrate_write_round_trip(served, tiny_model_dirs, load_tiny, tmp_path, capsys):
    model_dir = tmp_path / "hs"
    shutil.copytree(tiny_model_dirs[MULTI], model_dir)
    spec_file = model_dir / SPEC_FILENAME
    spec_file.write_text("# a comment that must survive\n" + spec_file.read_text())
    before = RewardModel.load("hs", model_dir).revision
    config = write_config(tmp_path / "config.yaml", {"hs": model_dir})
    model = load_tiny(MULTI)
    items = sample_items(model) + EXTRA
    source = write_items(tmp_path / "reference.jsonl", items)

    stats, err = calibrate(capsys, str(source), "--config", str(config), "--model", "hs", "--write")

    refs = [reference(model, item) for item in items]
    assert stats["count"] == len(items) and stats["source"].startswith("reference.jsonl (sha256:")
    assert stats["score"]["mean"] == pytest.approx(statistics.fmean(r.score for r in refs), abs=1e-6)
    assert stats["score"]["std"] == pytest.approx(statistics.pstdev(r.score for r in refs), abs=1e-6)
    assert list(stats["dimensions"]) == HELPSTEER
    for dim in HELPSTEER:
        values = [r.dimensions[dim] for r in refs]
        assert stats["dimensions"][dim]["mean"] == pytest.approx(statistics.fmean(values), abs=1e-6)
        assert stats["dimensions"][dim]["std"] == pytest.approx(statistics.pstdev(values), abs=1e-6)
    assert "aggregate" not in stats
    text = spec_file.read_text()
    assert text.startswith("# a comment that must survive\n")
    assert yaml.safe_load(text)["reference_stats"] == stats
    assert "wrote reference_stats" in err and before in err
    written = RewardModel.load("hs", model_dir)
    assert written.revision != before
    assert written.spec.reference_stats.count == len(items)

    # calibrating again replaces the block rather than adding a second one
    again, _ = calibrate(capsys, str(write_items(tmp_path / "half.jsonl", items[:5])), "--config", str(config),
                         "--model", "hs", "--write")
    assert spec_file.read_text().count("reference_stats:") == 1 and again["count"] == 5
    calibrate(capsys, str(source), "--config", str(config), "--model", "hs", "--write")

    with served([ModelConfig(name="hs", path=str(model_dir))], grpc=False) as server:
        response = server.http.post("/v1/score", json={"model": "hs", "items": items, "normalize": "zscore"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    scores = [r["score"] for r in results]
    assert statistics.fmean(scores) == pytest.approx(0.0, abs=1e-5)
    assert statistics.pstdev(scores) == pytest.approx(1.0, abs=1e-5)
    for dim in HELPSTEER:
        values = [r["dimensions"][dim] for r in results]
        assert (statistics.fmean(values), statistics.pstdev(values)) == pytest.approx((0.0, 1.0), abs=1e-5)


def test_calibrate_writes_a_spec_file_for_an_inferred_model(tiny_model_dirs, load_tiny, tmp_path, capsys):
    model_dir = tmp_path / "scalar"
    shutil.copytree(tiny_model_dirs[SCALAR], model_dir)
    assert not (model_dir / SPEC_FILENAME).exists()  # a scalar model known from its config.json alone
    config = write_config(tmp_path / "config.yaml", {"scalar": model_dir})
    stats, _ = calibrate(capsys, str(write_items(tmp_path / "ref.jsonl", EXTRA)), "--config", str(config), "--write")

    spec = yaml.safe_load((model_dir / SPEC_FILENAME).read_text())
    assert spec == {"kind": "scalar", "reference_stats": stats}
    assert "dimensions" not in stats
    written = RewardModel.load("scalar", model_dir)
    assert written.revision != load_tiny(SCALAR).revision
    assert written.score([served_input(EXTRA[0])])[0].score == pytest.approx(
        reference(load_tiny(SCALAR), EXTRA[0]).score, abs=1e-6)


def test_calibrate_without_write_only_prints(tiny_model_dirs, load_tiny, tmp_path, capsys):
    """A process model's stats record the aggregate they were taken with."""
    config = write_config(tmp_path / "config.yaml", {"prm": tiny_model_dirs[PRM]})
    before = (tiny_model_dirs[PRM] / SPEC_FILENAME).read_text()
    items = [{"prompt": "What is 3 + 4?", "steps": ["3 + 4 = 7", "The answer is 7."]},
             {"prompt": "Natalia sold clips.", "steps": ["She sold 48.", "Then 24.", "72 in all."]},
             {"prompt": "Q", "steps": ["The quick brown fox."]}]
    stats, err = calibrate(capsys, str(write_items(tmp_path / "ref.jsonl", items)), "--config", str(config))
    refs = [reference(load_tiny(PRM), item).score for item in items]
    assert stats["aggregate"] == "min" and stats["score"]["mean"] == pytest.approx(statistics.fmean(refs), abs=1e-6)
    assert err == "" and (tiny_model_dirs[PRM] / SPEC_FILENAME).read_text() == before


@pytest.mark.parametrize("lines, inline, message", [
    (['{"prompt": "Hi", "response": "Hello"}', '{"prompt": "Hi"}'], False, "line 2: invalid_request"),
    (['{"prompt": "Hi", "response": "Hello"}'] * 3, False, "standard deviation is 0"),
    (['{"prompt": "Hi", "response": "Hello"}'], False, "at least 2"),
    (['{"prompt": "Hi", "response": "Hello"}', '{"prompt": "Hi", "response": "Bye"}'], True, "inline spec"),
])
def test_calibrate_refusals(lines, inline, message, tiny_model_dirs, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    model = {"name": "m", "path": str(tiny_model_dirs[SCALAR])}
    if inline:
        model["spec"] = {"kind": "scalar"}
    config.write_text(yaml.safe_dump({"models": [model]}))
    source = tmp_path / "ref.jsonl"
    source.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", str(source), "--config", str(config), "--write", "--quiet"])
    assert message in str(exit_info.value.code)
    assert not (tiny_model_dirs[SCALAR] / SPEC_FILENAME).exists()
