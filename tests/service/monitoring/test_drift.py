"""Reward drift: the statistics against scipy's, the bounded live window, baseline files
(`rewardserve baseline`, read at start-up, a broken one reported without stopping
serving), limits calibrated per model and dimension from the baseline's own reference run,
and end to end on real data: the embedded minilm-harmless model as shipped, served a stream
of HH-RLHF chosen responses, stays under its calibrated limits, and a switch to the rejected
responses of the same conversations pushes the drift gauges past them."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from http_helpers import live_server, reference, sample_items, wait_until_loaded, write_config
from metrics_helpers import scrape
from paths import DATA
from scipy import stats as scipy_stats
from scipy.spatial.distance import jensenshannon
from tiny_models import HELPSTEER

from models.heads import RewardOutput
from service.app import create_app
from service.cli import main
from service.config import BUILTIN_DIR, ModelConfig, Settings, load_settings
from service.monitoring.baseline import BASELINE_FILENAME, compare, dimension_baseline, read_baseline, window_limits
from service.monitoring.drift import FALLBACK_THRESHOLDS, DriftMonitor, ModelWindow
from service.monitoring.metrics import DRIFT_GAUGES
from training.reward_data import by_split, load_hh

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data not found at {DATA}")
WAIT_S = 120


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ---- the statistics ------------------------------------------------------------------


def test_statistics_agree_with_scipy():
    rng = np.random.default_rng(0)
    ref = rng.normal(1.0, 2.0, 4000)
    live = rng.normal(1.6, 2.6, 3000)
    baseline = dimension_baseline("m", "sha256:x", "synthetic", "score", ref)
    got = compare(live, baseline)
    assert set(got) == set(DRIFT_GAUGES)

    edges = np.asarray(baseline.edges)
    live_counts = np.bincount(np.searchsorted(edges, live, side="right"), minlength=len(baseline.counts))
    p = (live_counts + 0.5) / (live_counts.sum() + 0.5 * len(live_counts))
    q = (np.asarray(baseline.counts) + 0.5) / (baseline.count + 0.5 * len(live_counts))
    assert got["psi"] == pytest.approx(np.sum((p - q) * np.log(p / q)), rel=1e-9)
    assert got["js_distance"] == pytest.approx(jensenshannon(live_counts, baseline.counts, base=2), rel=1e-6)
    # KS and W1 run on the baseline's 101 stored quantiles, not the reference sample itself
    assert got["ks"] == pytest.approx(scipy_stats.ks_2samp(live, ref).statistic, abs=0.02)
    assert got["wasserstein"] == pytest.approx(scipy_stats.wasserstein_distance(live, ref) / ref.std(), abs=0.03)
    assert got["mean_shift"] == pytest.approx((live.mean() - ref.mean()) / ref.std(), rel=1e-9)
    assert got["std_shift"] == pytest.approx(live.std() / ref.std() - 1, rel=1e-9)

    same = compare(rng.normal(1.0, 2.0, 3000), baseline)
    assert same["psi"] < 0.02 and same["ks"] < 0.05 and abs(same["mean_shift"]) < 0.1
    assert got["psi"] > 0.1 and got["ks"] > 0.1


DRAWS = [lambda rng, n: rng.normal(0.0, 1.0, n), lambda rng, n: rng.lognormal(0.0, 1.0, n),
         lambda rng, n: rng.integers(0, 4, n).astype(float)]


def exceeded_share(baseline, windows) -> float:
    """The share of windows in which any statistic passes the baseline's calibrated limit, as
    tightened or widened to the window's size."""

    def exceeds(window) -> bool:
        limits = window_limits(baseline, window.size)
        return any(abs(v) > limits[s] for s, v in compare(window, baseline).items())

    return float(np.mean([exceeds(w) for w in windows]))


@pytest.mark.parametrize("draw", DRAWS, ids=["normal", "skewed", "discrete"])
def test_calibrated_limits_pass_unshifted_windows_and_catch_a_shift(draw):
    """Limits calibrated on 600 reference values for windows of 200: fresh windows from the
    same distribution seldom pass any of them, whatever its shape; the same windows moved by
    half a reference standard deviation nearly always do."""
    rng = np.random.default_rng(1)
    reference_values = draw(rng, 600)
    baseline = dimension_baseline("m", "sha256:x", "synthetic", "score", reference_values, threshold_window=200)
    assert baseline.threshold_window == 200 and set(baseline.thresholds) == set(DRIFT_GAUGES)
    fresh = [draw(rng, 200) for _ in range(200)]
    assert exceeded_share(baseline, fresh) <= 0.05
    assert exceeded_share(baseline, [w + 0.5 * baseline.std for w in fresh]) >= 0.95


@pytest.mark.parametrize("draw", DRAWS, ids=["normal", "skewed", "discrete"])
def test_limits_tighten_as_the_live_window_grows(draw):
    """Limits calibrated for 200 values judge a window of 1,000 by tighter limits: fresh
    unshifted windows still seldom pass them, and a shift of a quarter standard deviation,
    often lost in 200 values, is flagged in nearly every window of 1,000."""
    rng = np.random.default_rng(1)
    baseline = dimension_baseline("m", "r", "s", "score", draw(rng, 600), threshold_window=200)
    assert window_limits(baseline, 200) == pytest.approx(baseline.thresholds)
    for statistic, limit in window_limits(baseline, 1000).items():
        assert limit < baseline.thresholds[statistic] < window_limits(baseline, 100)[statistic], statistic
    small, large = ([draw(rng, n) for _ in range(200)] for n in (200, 1000))
    assert exceeded_share(baseline, large) <= 0.05
    shift = 0.25 * baseline.std
    flagged_small = exceeded_share(baseline, [w + shift for w in small])
    assert exceeded_share(baseline, [w + shift for w in large]) >= max(0.95, flagged_small)


def test_limits_widen_for_smaller_windows_and_fewer_references():
    rng = np.random.default_rng(2)
    values = rng.normal(0.0, 1.0, 1000)
    limits = {(n, window): dimension_baseline("m", "r", "s", "score", values[:n], threshold_window=window).thresholds
              for n, window in ((1000, 200), (1000, 50), (300, 200))}
    for statistic in DRIFT_GAUGES:
        assert limits[1000, 50][statistic] > limits[1000, 200][statistic], statistic
        assert limits[300, 200][statistic] > limits[1000, 200][statistic], statistic


def test_operator_thresholds_override_calibrated_ones_and_uncalibrated_baselines_use_fixed_ones():
    rng = np.random.default_rng(3)
    values = rng.normal(0.0, 1.0, 600)
    calibrated = dimension_baseline("m", "r", "s", "score", values, threshold_window=200)
    uncalibrated = dimension_baseline("m", "r", "s", "score", values)
    window = rng.normal(0.0, 1.0, 200)
    live = {"score": window - window.mean() + calibrated.mean + 0.27 * calibrated.std}  # moved by 0.27 std exactly
    snapshot = {"m": (live, live["score"], np.full(200, 10.0))}

    def judged(thresholds, baseline) -> tuple[dict, list]:
        monitor = DriftMonitor(window=200, min_samples=200, thresholds=thresholds)
        monitor.windows["m"], monitor.baselines["m"] = ModelWindow(200), {"score": baseline}
        report = monitor.compute(snapshot)["m"].dimensions["score"]
        return report.thresholds, report.exceeded

    assert judged(None, calibrated)[0] == calibrated.thresholds
    assert judged(None, uncalibrated)[0] == FALLBACK_THRESHOLDS
    assert judged({"ks": 0.99}, calibrated) == ({"ks": 0.99}, [])
    assert "mean_shift" in judged(None, calibrated)[1]  # past the limit calibrated for 200 values against 600
    assert calibrated.thresholds["mean_shift"] < 0.27
    assert "mean_shift" not in judged(None, uncalibrated)[1]  # but under the fixed 0.3


def test_window_keeps_the_last_values_only():
    window = ModelWindow(50)
    for i in range(400):
        window.observe([RewardOutput(score=float(i), dimensions={"a": -float(i)}, num_tokens=i % 7 + 1)])
        window.observe([RewardOutput(score=float(i), step_rewards=[0.1, 0.2, 0.3], num_tokens=3)])
    values, scores, lengths = window.snapshot()
    assert set(values) == {"score", "dim:a", "step"}
    assert all(v.size == 50 for v in values.values()) and scores.size == lengths.size == 50
    assert values["dim:a"][-1] == -399.0 and values["score"][0] == 375.0


# ---- baselines -----------------------------------------------------------------------


def write_items(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def distinct_copies(items: list[dict], n: int) -> list[dict]:
    """`n` variants of each item, all different, so every score is a distinct value: a
    rank statistic (KS) over repeated values would turn on float rounding, which batching
    changes (within tolerance) where items are shared or packed differently."""
    def variant(item: dict, k: int) -> dict:
        if "input_ids" in item:
            return {**item, "input_ids": [*item["input_ids"], 5 + k]}
        if "messages" in item:
            first, *rest = item["messages"]
            return {**item, "messages": [{**first, "content": f"{first['content']} ({k})"}, *rest]}
        return {**item, "prompt": f"{item['prompt']} ({k})"}

    return [variant(item, k) for k in range(n) for item in items]


def test_baseline_command_covers_every_dimension(tiny_model_dirs, load_tiny, tmp_path, capsys):
    """Scalar score and every multi-objective dimension; a process model's step aggregate
    and its pooled step rewards. Then a server streaming the reference items themselves
    shows (next to) no drift."""
    dirs = {name: tmp_path / name for name in ("llama-helpsteer", "qwen2-prm")}
    for name, target in dirs.items():
        shutil.copytree(tiny_model_dirs[name], target)
    config = write_config(tmp_path / "config.yaml", dirs, drift={"interval_s": 0.2, "min_samples": 5})
    items = {name: distinct_copies(sample_items(load_tiny(name)), 3) for name in dirs}
    for name in dirs:
        source = write_items(tmp_path / f"{name}.jsonl", items[name])
        main(["baseline", str(source), "--config", str(config), "--model", name, "--write", "--quiet"])
    printed = capsys.readouterr().out
    assert "dim:helpfulness\tcount=18" in printed and "step\tcount=" in printed

    multi = read_baseline(dirs["llama-helpsteer"] / BASELINE_FILENAME)
    assert set(multi) == {"score", *(f"dim:{d}" for d in HELPSTEER)}
    refs = [reference(load_tiny("llama-helpsteer"), item) for item in items["llama-helpsteer"]]
    assert multi["score"].mean == pytest.approx(np.mean([r.score for r in refs]), abs=1e-6)
    assert multi["dim:verbosity"].std == pytest.approx(np.std([r.dimensions["verbosity"] for r in refs]), abs=1e-6)
    assert multi["score"].revision == load_tiny("llama-helpsteer").revision
    assert multi["score"].source.startswith("llama-helpsteer.jsonl (sha256:")
    assert multi["score"].threshold_window == 5 and set(multi["score"].thresholds) == set(DRIFT_GAUGES)
    prm = read_baseline(dirs["qwen2-prm"] / BASELINE_FILENAME)
    steps = [r for item in items["qwen2-prm"] for r in reference(load_tiny("qwen2-prm"), item).step_rewards]
    assert set(prm) == {"score", "step"} and prm["step"].count == len(steps)
    assert prm["step"].length_correlation is None and prm["score"].length_correlation is not None

    app = create_app(load_settings(config))
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert wait_until_loaded(client).status_code == 200
        for name in dirs:
            assert client.post("/v1/score", json={"model": name, "items": items[name]}).status_code == 200
        sent = time.time()
        report = poll_drift(client, sent, lambda r: True)
        for name in dirs:
            dims = report["models"][name]["dimensions"]
            assert set(dims) == set(read_baseline(dirs[name] / BASELINE_FILENAME))
            baseline = read_baseline(dirs[name] / BASELINE_FILENAME)
            for dim_name, dim in dims.items():
                assert dim["exceeded"] == [] and dim["statistics"]["mean_shift"] == pytest.approx(0, abs=1e-5)
                assert dim["statistics"]["ks"] < 0.1
                # calibrated limits judge by default, fitted to the window's size
                assert dim["thresholds"] == pytest.approx(window_limits(baseline[dim_name], dim["observations"]))
        s = scrape(client)
    assert s.value("rewardserve_drift_threshold", model="qwen2-prm", dimension="step", statistic="ks") == \
        pytest.approx(window_limits(prm["step"], len(steps))["ks"])
    assert s.value("rewardserve_drift_baseline_loaded", model="llama-helpsteer") == 1
    assert s.value("rewardserve_drift_psi", model="llama-helpsteer", dimension="dim:helpfulness") < 0.05
    assert s.value("rewardserve_drift_window_observations", model="qwen2-prm", dimension="step") == len(steps)
    assert s.value("rewardserve_drift_exceeded", model="qwen2-prm", dimension="step", statistic="psi") == 0


def test_a_broken_baseline_is_reported_and_serving_goes_on(tiny_model_dirs, tmp_path):
    model_dir = tmp_path / "scalar"
    shutil.copytree(tiny_model_dirs["llama-scalar"], model_dir)
    (model_dir / BASELINE_FILENAME).write_text('{"model": "scalar"}\n')
    app = create_app(load_settings(write_config(tmp_path / "config.yaml", {"scalar": model_dir})))
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert wait_until_loaded(client).status_code == 200
        assert client.post("/v1/score", json={"items": [{"prompt": "Hi", "response": "Hello!"}]}).status_code == 200
        report = client.get("/v1/drift").json()["models"]["scalar"]
        assert report["baseline_error"].startswith(f"{model_dir / BASELINE_FILENAME}:1:")
        assert scrape(client).value("rewardserve_drift_baseline_loaded", model="scalar") == 0


# ---- end to end on HH-RLHF -----------------------------------------------------------


def poll_drift(client: httpx.Client, since: float, done, timeout: float = WAIT_S) -> dict:
    """/v1/drift once every model's report was computed after `since` and `done(body)`."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get("/v1/drift").json()
        fresh = all((m.get("computed_at") or 0) > since for m in body["models"].values())
        if fresh and done(body):
            return body
        assert time.monotonic() < deadline, f"no fresh drift report after {timeout}s: {body}"
        time.sleep(0.1)


BASELINE_PAIRS, WINDOW = 300, 200


def streamed_reports(settings: Settings, pairs: list) -> tuple[tuple[dict, dict], tuple[dict, dict]]:
    """(report, scrape) of minilm-harmless after the chosen responses of `pairs`, then after
    their rejected responses, on a fresh server run with `settings`."""
    app = create_app(settings)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=WAIT_S) as client:
        assert wait_until_loaded(client, timeout=WAIT_S).status_code == 200

        def stream(side: str) -> tuple[dict, dict]:
            for start in range(0, len(pairs), 25):
                items = [{"prompt": getattr(p, side).prompt, "response": getattr(p, side).response}
                         for p in pairs[start:start + 25]]
                reply = client.post("/v1/score", json={"items": items, "truncate": "left", "priority": "bulk"})
                assert reply.status_code == 200, reply.text
            body = poll_drift(client, time.time(), lambda b: True)
            return body["models"]["minilm-harmless"], scrape(client)

        return stream("chosen"), stream("rejected")


@needs_data
def test_switch_from_chosen_to_rejected_responses_raises_drift(tmp_path, capsys):
    """Baseline: minilm-harmless's scores of the chosen responses of 300 HH-RLHF
    conversations, with limits calibrated for windows of 200 (the default). Live: the chosen
    responses of 200 other conversations (no drift), then the rejected responses of those
    same 200 (the model scores them lower: drift). These are training conversations, where
    the model tells chosen from rejected well enough (73% of pairs) for the switch to move
    its mean by a third of a standard deviation; on unseen ones (62%) it moves by a fifth,
    which a window of 200 cannot tell from noise (see the next test)."""
    pairs = by_split(load_hh(DATA))["fit"][:BASELINE_PAIRS + WINDOW]
    model_dir = tmp_path / "minilm-harmless"
    shutil.copytree(BUILTIN_DIR / "minilm-harmless", model_dir, ignore=shutil.ignore_patterns("*.jsonl"))
    config = write_config(tmp_path / "config.yaml", {"minilm-harmless": model_dir},
                          drift={"window": WINDOW, "interval_s": 0.2})
    source = write_items(tmp_path / "chosen.jsonl", [
        {"prompt": p.chosen.prompt, "response": p.chosen.response} for p in pairs[:BASELINE_PAIRS]])
    main(["baseline", str(source), "--config", str(config), "--truncate", "left", "--write", "--quiet"])
    capsys.readouterr()
    baseline = read_baseline(model_dir / BASELINE_FILENAME)["score"]
    assert baseline.threshold_window == load_settings(config).drift.min_samples == WINDOW

    (chosen, chosen_scrape), (rejected, rejected_scrape) = streamed_reports(load_settings(config),
                                                                           pairs[BASELINE_PAIRS:])
    for report in (chosen, rejected):
        assert report["dimensions"]["score"]["observations"] == WINDOW
        assert report["baseline"]["count"] == baseline.count
        assert -1 <= report["length_correlation"] <= 1 and report["reference_length_correlation"] is not None
    calm, drifted = chosen["dimensions"]["score"], rejected["dimensions"]["score"]
    assert calm["thresholds"] == drifted["thresholds"] == baseline.thresholds  # calibrated, no drift.thresholds
    assert calm["exceeded"] == [], calm
    assert {"mean_shift", "wasserstein"} <= set(drifted["exceeded"]), drifted
    assert drifted["statistics"]["mean_shift"] < -baseline.thresholds["mean_shift"]  # rejected responses score lower
    for statistic in DRIFT_GAUGES:  # every statistic moves away from the baseline
        assert abs(drifted["statistics"][statistic]) > abs(calm["statistics"][statistic]), statistic
    labels = {"model": "minilm-harmless", "dimension": "score"}
    for statistic in DRIFT_GAUGES:
        assert chosen_scrape.value("rewardserve_drift_exceeded", statistic=statistic, **labels) == 0
        assert rejected_scrape.value("rewardserve_drift_threshold", statistic=statistic, **labels) == \
            pytest.approx(baseline.thresholds[statistic])
    assert rejected_scrape.value("rewardserve_drift_exceeded", statistic="mean_shift", **labels) == 1
    assert rejected_scrape.value("rewardserve_drift_wasserstein_normalized", **labels) > \
        baseline.thresholds["wasserstein"] > chosen_scrape.value("rewardserve_drift_wasserstein_normalized", **labels)
    assert rejected_scrape.value("rewardserve_drift_window_observations", **labels) == WINDOW
    assert rejected_scrape.value("rewardserve_drift_last_computed_timestamp_seconds", model="minilm-harmless") > \
        chosen_scrape.value("rewardserve_drift_last_computed_timestamp_seconds", model="minilm-harmless")


@needs_data
def test_shipped_baseline_stays_calm_on_unseen_chosen_responses():
    """The embedded minilm-harmless as shipped: its baseline (held-out chosen responses) and
    the limits calibrated into it. The chosen responses of 200 validation conversations raise
    no statistic; their rejected responses score lower, by less than the limits of a window
    of 200 (the model is weak: the tables of models/README.md)."""
    settings = Settings(models=[ModelConfig(name="minilm-harmless", path="builtin:minilm-harmless")],
                        drift={"window": WINDOW, "interval_s": 0.2}, canary={"interval_s": 0},
                        server={"grpc_port": 0})
    baseline = read_baseline(BUILTIN_DIR / "minilm-harmless" / BASELINE_FILENAME)["score"]
    assert baseline.threshold_window == settings.drift.min_samples == WINDOW and baseline.thresholds
    (chosen, _), (rejected, _) = streamed_reports(settings, by_split(load_hh(DATA))["val"][:WINDOW])
    calm, lower = chosen["dimensions"]["score"], rejected["dimensions"]["score"]
    assert calm["thresholds"] == baseline.thresholds and calm["exceeded"] == [], calm
    assert lower["statistics"]["mean_shift"] < calm["statistics"]["mean_shift"]


@needs_data
def test_shipped_baseline_flags_a_full_window_of_rejected_responses():
    """The shipped model and baseline again, the window holding every held-out conversation
    (478): after their chosen responses, the baseline's own, all is calm; after their rejected
    ones (never trained on) the mean has fallen past the limits tightened to that window,
    though the same shift would pass the limits of a window of 200."""
    heldout = by_split(load_hh(DATA))["heldout"]
    settings = Settings(models=[ModelConfig(name="minilm-harmless", path="builtin:minilm-harmless")],
                        drift={"window": len(heldout), "interval_s": 0.2}, canary={"interval_s": 0},
                        server={"grpc_port": 0})
    baseline = read_baseline(BUILTIN_DIR / "minilm-harmless" / BASELINE_FILENAME)["score"]
    (chosen, _), (rejected, _) = streamed_reports(settings, heldout)
    calm, drifted = chosen["dimensions"]["score"], rejected["dimensions"]["score"]
    assert calm["observations"] == drifted["observations"] == len(heldout)
    assert calm["exceeded"] == [], calm
    assert drifted["thresholds"] == pytest.approx(window_limits(baseline, len(heldout)))
    assert "mean_shift" in drifted["exceeded"], drifted
    assert (
        baseline.thresholds["mean_shift"] > -drifted["statistics"]["mean_shift"] > drifted["thresholds"]["mean_shift"]
    )
