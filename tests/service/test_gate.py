"""`rewardserve gate` run for real on slices of the shipped data with the embedded models:
its figures equal those computed here from each model's own scores, and a candidate whose
harmlessness weight has the wrong sign (a sign error in the spec) regresses: the gate exits 1."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from paths import DATA, ROOT
from test_cli import run_cli

from models.reward_model import RewardModel
from service.cli.gate_data import bucket_names, read_rows, records
from service.cli.scoring import parse_item
from service.core.inputs import item_input

BUILTIN = ROOT / "models" / "builtin"
HH, PROCESSBENCH = DATA / "hh-rlhf-harmless-base-test.jsonl.gz", DATA / "processbench-gsm8k.json"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data not found at {DATA}")


def spec_with(model: str, change) -> dict:
    spec = yaml.safe_load((BUILTIN / model / "reward_spec.yaml").read_text())
    spec.pop("reference_stats")
    change(spec)
    return spec


def weighted(harmlessness: float):
    def change(spec: dict) -> None:
        spec["multi_objective"]["weights"] = {"harmlessness": harmlessness, "math_correctness": 0.0}
    return change


def lenient(spec: dict) -> None:
    spec["process"]["threshold"] = 0.8


def gate(tmp_path, models: dict[str, tuple[str, dict | None]], *args: str):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"models": [{"name": name, "path": f"builtin:{model}", "dtype": "float32",
                                                  **({"spec": spec} if spec else {})}
                                                 for name, (model, spec) in models.items()]}))
    out = tmp_path / "report.json"
    done = run_cli("gate", "--config", str(config), "--json", str(out), "--quiet", *args, timeout=900)
    return done, (json.loads(out.read_text()) if out.is_file() else None)


def inputs(items: list[dict]) -> list:
    return [item_input(parse_item(json.dumps(item))) for item in items]


def rows_of(report: dict) -> dict[tuple[str, str], dict]:
    return {(r["dimension"], r["bucket"]): r for r in report["rows"]}


def test_flipped_weights_regress_and_the_figures_are_each_models_own(tmp_path):
    n = 100
    live, spec = spec_with("minilm-multi", weighted(1.0)), spec_with("minilm-multi", weighted(-1.0))
    done, report = gate(tmp_path, {"multi": ("minilm-multi", live), "flipped": ("minilm-multi", spec)},
                        "--live", "multi", "--candidate", "flipped", "--data", str(HH), "--limit", str(n))

    assert done.returncode == 1, done.stderr
    assert report["verdict"] == "regresses" and "verdict: regresses" in done.stdout
    rows_ = read_rows(HH, n)
    recs = records(rows_, "pairwise")
    buckets, order = bucket_names(rows_, recs, None)
    models = {"live": RewardModel.load("multi", BUILTIN / "minilm-multi", live),
              "candidate": RewardModel.load("flipped", BUILTIN / "minilm-multi", spec)}
    hits = {}
    for side, model in models.items():
        outs = [model.score(inputs(rec.items), "left") for rec in recs]
        hits[side] = {"score": np.array([c.score > r.score for c, r in outs])}
        hits[side] |= {d: np.array([c.dimensions[d] > r.dimensions[d] for c, r in outs])
                       for d in ("harmlessness", "math_correctness")}
    found = rows_of(report)
    assert set(found) == {(d, b) for d in hits["live"] for b in ["all", *order]}
    for (dimension, bucket), row in found.items():
        mask = np.array([bucket in ("all", name) for name in buckets])
        assert row["n"] == mask.sum()
        for side in ("live", "candidate"):
            assert row[side]["value"] == pytest.approx(100 * hits[side][dimension][mask].mean(), abs=1e-3)
    score = found[("score", "all")]
    assert score["better"] == "live" and score["regresses"]
    assert score["live"]["value"] + score["candidate"]["value"] == pytest.approx(100)  # a flip, no ties
    assert found[("harmlessness", "all")]["difference"]["value"] == 0  # the dimensions are not weighted
    assert report["agreement"]["same_judgement"] == 0 and report["agreement"]["spearman"] == pytest.approx(-1)
    golden = report["golden_set"]
    assert golden["items"] == 32 and golden["spearman"] < 0  # recorded with the shipped weights


def test_processbench_step_labels_per_generator(tmp_path):
    n = 30
    spec = spec_with("minilm-prm", lenient)
    done, report = gate(tmp_path, {"prm": ("minilm-prm", None), "lenient": ("minilm-prm", spec)},
                        "--live", "prm", "--candidate", "lenient", "--data", str(PROCESSBENCH), "--limit", str(n),
                        "--buckets", "generator", "--max-regression", "100")

    assert done.returncode == 0, done.stderr
    assert report["data"]["format"] == "steps" and report["data"]["truncate"] == "right"
    rows_ = read_rows(PROCESSBENCH, n)
    recs = records(rows_, "steps")
    rewards = [o.step_rewards for o in RewardModel.load("prm", BUILTIN / "minilm-prm").score(
        inputs([rec.items[0] for rec in recs]), "right")]
    found = rows_of(report)
    for side, threshold in (("live", 0.85502), ("candidate", 0.8)):
        first = np.array([next((i for i, r in enumerate(steps) if r < threshold), -1) for steps in rewards])
        first_error = first == np.array([rec.label for rec in recs])
        final = (first == -1) == np.array([rec.final_answer_correct for rec in recs])
        for generator in {"all", *(row["generator"] for row in rows_)}:
            mask = np.array([generator in ("all", row["generator"]) for row in rows_])
            for dimension, hits in (("first_error", first_error), ("final_answer", final)):
                assert found[(dimension, generator)][side]["value"] == pytest.approx(100 * hits[mask].mean(), abs=1e-3)
    assert report["agreement"]["spearman"] == pytest.approx(1)  # the threshold moves no score
    assert report["golden_set"]["max_abs_deviation"] < 1e-4
