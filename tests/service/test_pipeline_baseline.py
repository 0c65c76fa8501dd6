"""`rewardserve baseline` for a reward pipeline: the reference set scored through the pipeline
in-process (its model loaded, its rules and user function in the worker pool), the baseline
written where the pipeline's drift_baseline says; its dimensions and counts are those of the
pipeline's answers for the same items over a live server, and a server started with it
judges the components' drift against it."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest
import yaml
from http_helpers import poll

from service.cli import main
from service.monitoring.baseline import read_baseline

QUESTIONS = [(a, b) for a in range(2, 6) for b in range(3, 6)]  # 12 sums
COLOURS = ["red", "blue", "green"]
USER_FUNCTION = """def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    if not ground_truth.isdigit():
        raise ValueError("no number to check")
    return float(len(solution_str) % 5)
"""
DRIFT = {"interval_s": 0.1, "min_samples": 10}


def reference_items() -> list[dict]:
    """Sums answered right and boxed, wrong and boxed, right unboxed; colours, where the user
    function fails (its component has fewer ok values than the reward)."""
    items = []
    for i, (a, b) in enumerate(QUESTIONS):
        answer = a + b + (i % 3 == 1)
        response = f"{a} + {b} = {answer}." + (f" The answer is \\boxed{{{answer}}}." if i % 4 else "")
        items.append({"prompt": f"What is {a} + {b}?", "response": response, "ground_truth": str(a + b)})
    items += [{"prompt": "Name a colour.", "response": f"{c.title()}, surely.", "ground_truth": c} for c in COLOURS]
    return items


def graded(tmp_path, drift_baseline: str | None) -> dict:
    function = tmp_path / "user_reward.py"
    function.write_text(USER_FUNCTION)
    config = {"name": "graded", "on_component_error": "default", "components": [
        {"name": "rm", "type": "model", "model": "llama-scalar", "weight": 0.5},
        {"name": "fmt", "type": "rule", "rule": "format", "params": {"must_match": ["\\\\boxed\\{"]}},
        {"name": "acc", "type": "rule", "rule": "math_verify", "weight": 2.0},
        {"name": "user", "type": "python", "function": f"{function}:compute_score", "weight": 0.1},
    ]}
    return config | ({"drift_baseline": drift_baseline} if drift_baseline else {})


def write_setup(tmp_path, tiny_model_dirs, pipeline: dict, items: list[dict]):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "models": [{"name": "llama-scalar", "path": str(tiny_model_dirs["llama-scalar"])}],
        "pipelines": [pipeline], "drift": DRIFT, "server": {"grpc_port": 0}}))
    source = tmp_path / "reference.jsonl"
    source.write_text("".join(json.dumps(item) + "\n" for item in items))
    return config, source


def test_a_pipelines_baseline_is_its_served_answers_and_judges_its_drift(served, tiny_model_dirs, tmp_path):
    target = tmp_path / "baselines" / "graded.jsonl"
    pipeline = graded(tmp_path, str(target))
    items = reference_items()
    config, source = write_setup(tmp_path, tiny_model_dirs, pipeline, items)
    # as a user runs it: its own process, the worker pool's forkserver re-importing the main module
    done = subprocess.run([sys.executable, "-m", "service.cli", "baseline", str(source), "--config", str(config),
                           "--model", "graded", "--write", "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"wrote {target}" in done.stderr
    baseline = read_baseline(target)

    with served(["llama-scalar"], pipelines=[pipeline], drift=DRIFT) as server:
        response = server.http.post("/v1/score", json={"model": "graded", "items": items})
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        revision = server.http.get("/v1/models/graded").json()["revision"]
        report = poll(lambda: server.http.get("/v1/drift"), lambda r: all(
            d["statistics"] is not None for d in r.json()["models"]["graded"].get("dimensions", {}).values())
        ).json()["models"]["graded"]

    expected = {"score": [r["score"] for r in results]}
    for name in ("rm", "fmt", "acc", "user"):
        expected[f"dim:{name}"] = [r["components"][name]["value"] for r in results
                                   if r["components"][name]["status"] == "ok"]
    assert {dim: len(values) for dim, values in expected.items()} == {
        "score": 15, "dim:rm": 15, "dim:fmt": 15, "dim:acc": 15, "dim:user": 12}
    assert {dim: b.count for dim, b in baseline.items()} == {dim: len(values) for dim, values in expected.items()}
    for dim, values in expected.items():
        b = baseline[dim]
        assert (b.model, b.revision, b.threshold_window) == ("graded", revision, DRIFT["min_samples"])
        assert b.source.startswith("reference.jsonl (sha256:")
        assert b.mean == pytest.approx(statistics.fmean(values), abs=1e-5), dim
        assert b.std == pytest.approx(statistics.pstdev(values), abs=1e-5), dim
        assert (b.quantiles[0], b.quantiles[-1]) == (pytest.approx(min(values), abs=1e-5),
                                                     pytest.approx(max(values), abs=1e-5)), dim
    # the summary printed per dimension
    printed = {line.split("\t")[0]: line.split("\t")[1] for line in done.stdout.splitlines()}
    assert printed == {dim: f"count={b.count}" for dim, b in baseline.items()}

    # the live window holds the reference's own values: every statistic there, none past its limit
    assert "baseline_error" not in report
    assert report["baseline"] == {"revision": revision, "source": baseline["score"].source, "count": 15}
    assert set(report["dimensions"]) == set(expected)
    for dim, values in expected.items():
        live = report["dimensions"][dim]
        assert live["observations"] == len(values), dim
        assert live["statistics"]["mean_shift"] == pytest.approx(0, abs=1e-4), dim
        assert live["exceeded"] == [], dim


def test_refusals(tiny_model_dirs, tmp_path, capsys):
    items = reference_items()
    config, source = write_setup(tmp_path, tiny_model_dirs, graded(tmp_path, None), items)
    with pytest.raises(SystemExit) as exited:
        main(["baseline", str(source), "--config", str(config), "--model", "graded", "--write", "--quiet"])
    assert "pipeline graded names no file to write: set its `drift_baseline` key" in str(exited.value)

    del items[3]["ground_truth"]  # math_verify reads it
    config, source = write_setup(tmp_path, tiny_model_dirs, graded(tmp_path, str(tmp_path / "b.jsonl")), items)
    with pytest.raises(SystemExit) as exited:
        main(["baseline", str(source), "--config", str(config), "--model", "graded", "--write", "--quiet"])
    message = str(exited.value)
    assert message.startswith(f"{source}: line 4: invalid_request: ") and message.endswith(
        " (ground_truth); fix or remove it"), message
    assert not (tmp_path / "b.jsonl").exists()


def test_items_a_component_failed_are_left_out_as_the_drift_windows_leave_them(tiny_model_dirs, tmp_path, capsys):
    strict = graded(tmp_path, None) | {"on_component_error": "fail"}  # the user function fails the colours
    config, source = write_setup(tmp_path, tiny_model_dirs, strict, reference_items())
    main(["baseline", str(source), "--config", str(config), "--model", "graded", "--quiet"])
    out, err = capsys.readouterr()
    counts = {line.split("\t")[0]: line.split("\t")[1] for line in out.splitlines()}
    assert counts == {dim: "count=12" for dim in ("score", "dim:rm", "dim:fmt", "dim:acc", "dim:user")}
    assert "3 of 15 items failed a component and are left out" in err
    assert "wrote" not in err
