"""The launch gate's statistics against hand computation: Wilson intervals, the paired
difference's interval, DeLong's AUC intervals, and the verdict with its exit rule; and the
commands and configuration of its docs page parse."""

from __future__ import annotations

import math
import re
import shlex

import numpy as np
import pytest
import yaml
from paths import ROOT

import service.cli.gate
from service.cli.gate_data import bucket_names, detect_format, records, split_dialogue
from service.cli.gate_stats import Comparison, Estimate, compare_auc, compare_hits, verdict, wilson

Z = 1.959963984540054


def test_wilson_interval_by_hand():
    # 8 of 10: p = 0.8, z^2 = 3.8415; centre = (0.8 + 0.19207) / 1.38415; half = z sqrt(0.016 + 0.0096) / 1.38415
    centre = (0.8 + Z ** 2 / 20) / (1 + Z ** 2 / 10)
    half = Z * math.sqrt(0.8 * 0.2 / 10 + Z ** 2 / 400) / (1 + Z ** 2 / 10)
    estimate = wilson(8, 10)
    assert estimate.value == pytest.approx(80.0)
    assert (estimate.low, estimate.high) == pytest.approx((100 * (centre - half), 100 * (centre + half)))
    assert (round(estimate.low, 1), round(estimate.high, 1)) == (49.0, 94.3)  # the published table's figures
    assert wilson(0, 5).low == 0.0 and wilson(5, 5).high == 100.0


def test_paired_difference_by_hand():
    live = np.array([1, 1, 0, 1, 0, 1, 1, 0])
    candidate = np.array([1, 1, 1, 1, 1, 0, 1, 0])
    found = compare_hits(live, candidate)
    delta = [0, 0, 1, 0, 1, -1, 0, 0]  # mean 1/8, sample variance (3 - 8/64) / 7
    half = Z * math.sqrt((3 - 8 * (1 / 8) ** 2) / 7 / 8)
    assert found.n == 8
    assert found.live == wilson(5, 8) and found.candidate == wilson(6, 8)
    assert found.difference.value == pytest.approx(100 * sum(delta) / 8)
    assert (found.difference.low, found.difference.high) == pytest.approx((100 * (1 / 8 - half), 100 * (1 / 8 + half)))
    assert found.better is None  # the interval spans 0
    assert compare_hits(np.array([1]), np.array([0])).difference.low == -math.inf


def test_auc_and_delong_interval_by_hand():
    labels = np.array([1, 1, 1, 0, 0])
    live = np.array([0.9, 0.4, 0.7, 0.5, 0.1])
    candidate = np.array([0.9, 0.8, 0.7, 0.5, 0.7])  # a tie with a positive counts half
    found = compare_auc(labels, live, candidate)
    # live: the positives outscore 2, 1, 2 of the 2 negatives; the negatives are outscored by 2, 3 of 3
    live_pos, live_neg = np.array([1, 0.5, 1]), np.array([2 / 3, 1])
    cand_pos, cand_neg = np.array([1, 1, 0.75]), np.array([1, 2.5 / 3])
    assert found.live.value == pytest.approx(100 * 5 / 6) and found.candidate.value == pytest.approx(100 * 11 / 12)
    var_live = live_pos.var(ddof=1) / 3 + live_neg.var(ddof=1) / 2
    assert found.live.low == pytest.approx(100 * (5 / 6 - Z * math.sqrt(var_live)))
    assert found.live.high == 100.0  # clipped
    var_delta = (cand_pos - live_pos).var(ddof=1) / 3 + (cand_neg - live_neg).var(ddof=1) / 2
    assert found.difference.value == pytest.approx(100 * (11 / 12 - 5 / 6))
    assert found.difference.high == pytest.approx(100 * (1 / 12 + Z * math.sqrt(var_delta)))
    assert compare_auc(np.array([1, 1]), live[:2], candidate[:2]) is None  # one class: no AUC


def row(value: float, low: float, high: float) -> Comparison:
    same = Estimate(70.0, 60.0, 80.0)
    return Comparison(100, same, same, Estimate(value, low, high))


@pytest.mark.parametrize(("rows", "max_regression", "expected"), [
    ([row(3, 1, 5), row(0, -2, 2)], 1.0, "dominates"),
    ([row(3, 1, 5), row(-0.8, -1.5, -0.1)], 1.0, "trades off"),
    ([row(3, 1, 5), row(-4, -6, -2)], 1.0, "regresses"),
    ([row(-4, -6, -2)], 5.0, "worse within tolerance"),
    ([row(-4, -9, 1), row(0.5, -1, 2)], 1.0, "equivalent"),  # a large drop inside its interval fails nothing
])
def test_verdict(rows, max_regression, expected):
    assert verdict(rows, max_regression) == expected
    assert any(r.regresses(max_regression) for r in rows) == (expected == "regresses")


def test_formats_and_length_terciles():
    hh = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant: Go away.",
          "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant: Farewell!"}
    assert detect_format(hh) == "pairwise"
    assert split_dialogue(hh["chosen"]) == {"prompt": "Human: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant:",
                                            "response": "Go away."}
    assert detect_format({"problem": "1+1?", "steps": ["2"], "label": -1}) == "steps"
    assert detect_format({"prompt": "p", "response": "r", "label": True}) == "scalar"
    with pytest.raises(ValueError, match="--format"):
        detect_format({"prompt": "p"})
    rows = [{"prompt": "p", "response": "x" * n, "label": 1} for n in (1, 2, 3, 4, 5, 6)]
    names, order = bucket_names(rows, records(rows, "scalar"), None)
    assert order == ["length<=2", "length 3-4", "length>4"]
    assert names == ["length<=2", "length<=2", "length 3-4", "length 3-4", "length>4", "length>4"]
    assert bucket_names([{**r, "source": r["response"][:2]} for r in rows], records(rows, "scalar"),
                        "source")[1] == ["x", "xx"]


def test_the_docs_page_commands_and_config_parse(monkeypatch, tmp_path):
    page = (ROOT / "docs" / "gate.md").read_text()
    config = tmp_path / "gate.yaml"
    config.write_text(re.search(r"```yaml\n(.*?)```", page, re.S).group(1))
    assert [m["name"] for m in yaml.safe_load(config.read_text())["models"]] == ["minilm-harmless",
                                                                                "minilm-harmless-256"]
    parsed = []
    monkeypatch.setattr(service.cli.gate, "run_gate", parsed.append)  # what the gate command runs
    commands = re.findall(r"^rewardserve gate (--config.*?)$", page.replace("\\\n", " "), re.M)
    assert len(commands) == 2
    for command in commands:
        service.cli.main(["gate", *shlex.split(command)])
    assert [(a.live, a.candidate, a.limit) for a in parsed] == [("minilm-harmless", "minilm-harmless-256", 300),
                                                               ("minilm-prm", "minilm-prm-bf16", None)]
    from service.config import load_settings

    assert load_settings(str(config)).models[1].spec["max_length"] == 256
