"""Reward drift: each served model's live score distributions against a frozen reference.

Per model and dimension (`score`: the scalar score, a multi-objective model's aggregate or
a process model's step aggregate as its spec sets it; `dim:<name>`: every multi-objective
dimension; `step`: every step reward of a process model, pooled), the server keeps a
sliding window of the last `drift_window` live values (a bounded deque, appended to on the
request path and nothing more) and, every `drift_interval_s` seconds in a background task,
compares it with the model's baseline:

- PSI (population stability index) and the Jensen-Shannon distance (base 2, in [0, 1]) over
  fixed bins: the edges are reference quantiles frozen in the baseline, so reference bins
  hold equal shares and live values are only counted into them;
- the KS statistic: the largest gap between the live empirical CDF and the reference CDF
  (interpolated between the baseline's 101 reference quantiles);
- the Wasserstein-1 distance between the two quantile functions, divided by the reference
  standard deviation (so "0.3" means 0.3 reference standard deviations whatever the scale);
- the mean shift, in reference standard deviations, and the std shift (live std / reference
  std - 1).

Each statistic is judged against a limit per model and dimension: the one calibrated into the
baseline (`calibrated_thresholds`: what an unshifted window of `drift_min_samples` values stays
under, every statistic at once, 99% of the time, resampled from the reference run itself), or the operator's
`drift_thresholds` for every model when set, or FALLBACK_THRESHOLDS for a baseline without
calibrated limits. Fixed limits cannot fit every model: how far an unshifted window wanders
depends on the reference's size and on the shape of the model's scores.

Style bias: the Pearson correlation between the score and the item's length (`num_tokens`,
prompt and response together) over the window, next to the same correlation in the
reference run.

Cache hits count as observations: the window is the distribution of the scores the server
handed out, and a repeated input is a repeated input in the traffic too.

The baseline lives beside the model as `drift_baseline.jsonl`, one line per dimension,
written by `rewardserve baseline FILE.jsonl --model NAME --write` from a reference scoring
run. It is monitoring metadata, not part of the model: `.jsonl` files are not in the
model's revision fingerprint, so writing a baseline changes no revision and no cache key.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.heads import RewardOutput

log = logging.getLogger("rewardserve")

BASELINE_FILENAME = "drift_baseline.jsonl"
DEFAULT_BINS = 10
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 101)
W1_GRID = (np.arange(200) + 0.5) / 200
PSI_PSEUDOCOUNT = 0.5  # per bin, so an empty bin gives a large but finite PSI
# For a baseline without calibrated limits. PSI 0.2 is the usual "significant shift" mark;
# the others sit above the sampling noise of an unshifted window of 200 values against a few
# hundred reference ones.
FALLBACK_THRESHOLDS = {"psi": 0.2, "js_distance": 0.2, "ks": 0.15, "wasserstein": 0.3, "mean_shift": 0.3,
                       "std_shift": 0.3}
CALIBRATION_ROUNDS, CALIBRATION_LEVEL, CALIBRATION_SEED = 2000, 0.99, 0  # level: windows passing every limit
SCORE, STEP = "score", "step"


def dimension_label(name: str) -> str:
    """The drift dimension of a multi-objective dimension."""
    return f"dim:{name}"


def observations(out: RewardOutput) -> dict[str, list[float]]:
    """What one output adds to each dimension's window."""
    values = {SCORE: [out.score]}
    for name, value in (out.dimensions or {}).items():
        values[dimension_label(name)] = [value]
    if out.step_rewards is not None:
        values[STEP] = list(out.step_rewards)
    return values


# ---- baseline -----------------------------------------------------------------------


class DimensionBaseline(BaseModel):
    """One dimension of a reference scoring run: one line of drift_baseline.jsonl."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    revision: str = Field(description="revision of the model that produced the reference scores")
    source: str = Field("", description="what the reference set was")
    dimension: str
    count: int = Field(ge=2)
    mean: float
    std: float = Field(ge=0, description="population standard deviation")
    edges: list[float] = Field(description="interior bin edges: reference quantiles, strictly increasing")
    counts: list[int] = Field(description="reference values per bin (len(edges) + 1 bins)")
    quantiles: list[float] = Field(min_length=101, max_length=101, description="reference quantiles at 0, 0.01, ..., 1")
    length_correlation: float | None = Field(None, description="Pearson(value, num_tokens) over the reference run")
    thresholds: dict[str, float] | None = Field(None, description="limits calibrated for this dimension")
    threshold_window: int | None = Field(None, description="the window size the limits were calibrated for")

    @model_validator(mode="after")
    def _consistent(self) -> DimensionBaseline:
        if len(self.counts) != len(self.edges) + 1:
            raise ValueError("counts must have one more entry than edges")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError("edges must be strictly increasing")
        if sum(self.counts) != self.count:
            raise ValueError("counts must add up to count")
        return self


def bin_index(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Bin i holds edges[i-1] <= x < edges[i] (bin 0 and the last are open-ended)."""
    return np.searchsorted(edges, values, side="right")


def dimension_baseline(model: str, revision: str, source: str, dimension: str, values, lengths=None,
                       bins: int = DEFAULT_BINS, threshold_window: int | None = None) -> DimensionBaseline:
    """The baseline of one dimension; with `threshold_window`, limits calibrated for windows
    of that many values too."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2 or not np.all(np.isfinite(x)):
        raise ValueError(f"{dimension}: need at least 2 finite values, got {x.size}")
    edges = np.unique(np.quantile(x, np.arange(1, bins) / bins))
    counts = np.bincount(bin_index(edges, x), minlength=edges.size + 1)
    correlation = None
    if lengths is not None:
        correlation = pearson(x, np.asarray(lengths, dtype=np.float64))
    baseline = DimensionBaseline(
        model=model, revision=revision, source=source, dimension=dimension, count=int(x.size),
        mean=float(x.mean()), std=float(x.std()), edges=edges.tolist(), counts=counts.tolist(),
        quantiles=np.quantile(x, QUANTILE_LEVELS).tolist(), length_correlation=correlation,
    )
    if threshold_window is None:
        return baseline
    return baseline.model_copy(update={"thresholds": calibrated_thresholds(x, baseline, threshold_window),
                                       "threshold_window": threshold_window})


def calibrated_thresholds(values: np.ndarray, baseline: DimensionBaseline, window: int) -> dict[str, float]:
    """Limits an unshifted window of `window` values passes, all of them at once, with
    probability CALIBRATION_LEVEL: over windows resampled (with replacement) from the
    reference values, each statistic's magnitude quantile at the lowest common level that
    CALIBRATION_LEVEL of the windows pass together; then widened by sqrt(1 + window / count)
    for the baseline's own sampling noise (a resampled window is judged against the very
    values it was drawn from, a live one against a reference that is itself a sample).
    Larger live windows wander less, so the limits are conservative for them."""
    rng = np.random.default_rng(CALIBRATION_SEED)
    draws = [compare(rng.choice(values, window, replace=True), baseline) for _ in range(CALIBRATION_ROUNDS)]
    names = list(draws[0])
    magnitudes = np.abs(np.array([[d[s] for s in names] for d in draws]))
    for level in np.linspace(CALIBRATION_LEVEL, 1.0, 201):
        limits = np.quantile(magnitudes, level, axis=0)
        if np.mean((magnitudes <= limits).all(axis=1)) >= CALIBRATION_LEVEL:
            break
    widen = math.sqrt(1 + window / values.size)
    return {s: float(limit * widen) for s, limit in zip(names, limits)}


def compute_baseline(model: str, revision: str, source: str, outputs: list[RewardOutput],
                     bins: int = DEFAULT_BINS, threshold_window: int | None = None) -> dict[str, DimensionBaseline]:
    """The baseline of every dimension the outputs carry (with limits calibrated for windows
    of `threshold_window` values, when given)."""
    values: dict[str, list[float]] = {}
    for out in outputs:
        for dim, vals in observations(out).items():
            values.setdefault(dim, []).extend(vals)
    lengths = [out.num_tokens for out in outputs]
    return {
        dim: dimension_baseline(model, revision, source, dim, vals, lengths if dim != STEP else None, bins,
                                threshold_window)
        for dim, vals in values.items()
    }


def write_baseline(path: Path, baseline: dict[str, DimensionBaseline]) -> None:
    path.write_text("".join(b.model_dump_json() + "\n" for b in baseline.values()))


def read_baseline(path: Path) -> dict[str, DimensionBaseline]:
    """{dimension: baseline} from a drift_baseline.jsonl; {} when there is none."""
    if not path.is_file():
        return {}
    out = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                entry = DimensionBaseline.model_validate_json(line)
            except ValueError as err:
                raise ValueError(f"{path}:{number}: {err}") from None
            out[entry.dimension] = entry
    return out


# ---- statistics ---------------------------------------------------------------------


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if x.size < 3 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def psi(live_counts: np.ndarray, ref_counts: np.ndarray) -> float:
    p = (live_counts + PSI_PSEUDOCOUNT) / (live_counts.sum() + PSI_PSEUDOCOUNT * live_counts.size)
    q = (ref_counts + PSI_PSEUDOCOUNT) / (ref_counts.sum() + PSI_PSEUDOCOUNT * ref_counts.size)
    return float(np.sum((p - q) * np.log(p / q)))


def js_distance(live_counts: np.ndarray, ref_counts: np.ndarray) -> float:
    p, q = live_counts / live_counts.sum(), ref_counts / ref_counts.sum()
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum()
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum()
    return float(math.sqrt(max(0.0, (kl_p + kl_q) / 2)))


def reference_cdf(quantiles: np.ndarray, x: np.ndarray, before_jumps: bool = False) -> np.ndarray:
    """The reference CDF at `x`, linear between the stored quantiles. A value repeated
    among them is a point mass: the CDF there is its level after the jump (the highest
    level holding it), or before it with `before_jumps` (the lowest)."""
    if before_jumps:
        values, first = np.unique(quantiles, return_index=True)
        levels = QUANTILE_LEVELS[first]
    else:
        values, last = np.unique(quantiles[::-1], return_index=True)
        levels = QUANTILE_LEVELS[::-1][last]
    return np.interp(x, values, levels, left=0.0, right=1.0)


def ks_statistic(live: np.ndarray, quantiles: np.ndarray) -> float:
    """sup |F_live - F_ref|, checked on both sides of every live value (so scores that
    repeat, as cached or discrete ones do, are not read as a gap)."""
    x = np.sort(live)
    n = x.size
    upper = np.arange(1, n + 1) / n - reference_cdf(quantiles, x)
    lower = reference_cdf(quantiles, x, before_jumps=True) - np.arange(0, n) / n
    return float(max(upper.max(), lower.max(), 0.0))


def wasserstein(live: np.ndarray, quantiles: np.ndarray) -> float:
    """W1 = integral over u of |Q_live(u) - Q_ref(u)|, on a fine grid of u."""
    return float(np.mean(np.abs(np.quantile(live, W1_GRID) - np.interp(W1_GRID, QUANTILE_LEVELS, quantiles))))


def compare(live: np.ndarray, ref: DimensionBaseline) -> dict[str, float]:
    """Every drift statistic of a live sample against one dimension's baseline."""
    edges, quantiles = np.asarray(ref.edges), np.asarray(ref.quantiles)
    live_counts = np.bincount(bin_index(edges, live), minlength=edges.size + 1).astype(np.float64)
    ref_counts = np.asarray(ref.counts, dtype=np.float64)
    scale = ref.std if ref.std > 1e-12 else 1.0
    return {
        "psi": psi(live_counts, ref_counts),
        "js_distance": js_distance(live_counts, ref_counts),
        "ks": ks_statistic(live, quantiles),
        "wasserstein": wasserstein(live, quantiles) / scale,
        "mean_shift": float((live.mean() - ref.mean) / scale),
        "std_shift": float(live.std() / scale - 1.0) if ref.std > 1e-12 else float(live.std()),
    }


# ---- live windows -------------------------------------------------------------------


@dataclass
class DimensionReport:
    observations: int
    live_mean: float | None
    live_std: float | None
    statistics: dict[str, float] | None  # None: no baseline, or fewer than min_samples values
    exceeded: list[str] = field(default_factory=list)
    thresholds: dict[str, float] | None = None  # the limits judged against, with the statistics


@dataclass
class ModelReport:
    model: str
    computed_at: float  # unix time
    window: int  # the window's capacity
    baseline: dict | None  # revision, source, counts; None without a baseline
    dimensions: dict[str, DimensionReport]
    length_correlation: float | None
    reference_length_correlation: float | None

    def as_json(self) -> dict:
        return {
            "model": self.model,
            "computed_at": self.computed_at,
            "window": self.window,
            "baseline": self.baseline,
            "length_correlation": self.length_correlation,
            "reference_length_correlation": self.reference_length_correlation,
            "dimensions": {name: vars(report) for name, report in self.dimensions.items()},
        }


class ModelWindow:
    """The last `size` live values of every dimension of one model, and the (score,
    num_tokens) pairs of the last `size` items. Appends only: O(1) per value."""

    def __init__(self, size: int):
        self.size = size
        self.values: dict[str, deque] = {}
        self.scores: deque = deque(maxlen=size)
        self.lengths: deque = deque(maxlen=size)

    def observe(self, outputs: list[RewardOutput]) -> None:
        for out in outputs:
            self.scores.append(out.score)
            self.lengths.append(out.num_tokens)
            for dim, vals in observations(out).items():
                window = self.values.get(dim)
                if window is None:
                    window = self.values[dim] = deque(maxlen=self.size)
                window.extend(vals)

    def snapshot(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Copies, taken on the thread that appends (the event loop)."""
        return ({dim: np.fromiter(vals, dtype=np.float64, count=len(vals)) for dim, vals in self.values.items()},
                np.fromiter(self.scores, dtype=np.float64, count=len(self.scores)),
                np.fromiter(self.lengths, dtype=np.float64, count=len(self.lengths)))


class DriftMonitor:
    """Windows and baselines of every served model, and the latest report of each."""

    def __init__(self, window: int, min_samples: int, thresholds: dict[str, float] | None):
        self.window = window
        self.min_samples = min_samples
        self.thresholds = thresholds  # the operator's, for every model; None: per model and dimension
        self.windows: dict[str, ModelWindow] = {}
        self.baselines: dict[str, dict[str, DimensionBaseline]] = {}
        self.reports: dict[str, ModelReport] = {}
        self.baseline_errors: dict[str, str] = {}

    def add_model(self, name: str, baseline_file: Path | None) -> None:
        self.windows[name] = ModelWindow(self.window)
        try:
            self.baselines[name] = read_baseline(baseline_file) if baseline_file is not None else {}
        except (OSError, ValueError) as err:  # a bad baseline must not stop serving
            self.baselines[name] = {}
            self.baseline_errors[name] = str(err)
            log.error("drift baseline of %s not loaded: %s", name, err)

    def observe(self, model: str, outputs: list[RewardOutput]) -> None:
        self.windows[model].observe(outputs)

    def snapshot(self) -> dict[str, tuple]:
        return {name: window.snapshot() for name, window in self.windows.items()}

    def compute(self, snapshots: dict[str, tuple], now: float | None = None) -> dict[str, ModelReport]:
        """Reports from snapshots; pure numpy, safe to run off the event loop."""
        now = time.time() if now is None else now
        reports = {}
        for name, (values, scores, lengths) in snapshots.items():
            baseline = self.baselines.get(name, {})
            dims = {}
            for dim in sorted(set(values) | set(baseline)):
                live = values.get(dim, np.empty(0))
                report = DimensionReport(int(live.size), float(live.mean()) if live.size else None,
                                         float(live.std()) if live.size else None, None)
                if dim in baseline and live.size >= self.min_samples:
                    report.statistics = compare(live, baseline[dim])
                    report.thresholds = self.limits(baseline[dim])
                    report.exceeded = [s for s, limit in report.thresholds.items()
                                       if abs(report.statistics.get(s, 0.0)) > limit]
                dims[dim] = report
            score_ref = baseline.get(SCORE)
            reports[name] = ModelReport(
                model=name, computed_at=now, window=self.window,
                baseline=self.baseline_summary(name),
                dimensions=dims,
                length_correlation=pearson(scores, lengths) if scores.size >= self.min_samples else None,
                reference_length_correlation=score_ref.length_correlation if score_ref else None,
            )
        return reports

    def limits(self, baseline: DimensionBaseline) -> dict[str, float]:
        """The limits a dimension is judged against (see the module's docstring)."""
        if self.thresholds is not None:
            return self.thresholds
        return baseline.thresholds if baseline.thresholds is not None else FALLBACK_THRESHOLDS

    async def refresh(self) -> dict[str, ModelReport]:
        now = time.time()  # before the snapshot: a report covers what was observed until computed_at
        snapshots = self.snapshot()
        self.reports = await asyncio.to_thread(self.compute, snapshots, now)
        return self.reports

    async def run(self, interval_s: float) -> None:
        """The periodic task: recompute every `interval_s` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("drift computation failed")

    def as_json(self) -> dict:
        return {
            "window": self.window,
            "min_samples": self.min_samples,
            "thresholds": self.thresholds,
            "models": {name: self._model_json(name) for name in self.windows},
        }

    def baseline_summary(self, name: str) -> dict | None:
        """Where the model's baseline came from; None without one."""
        score_ref = self.baselines.get(name, {}).get(SCORE)
        if score_ref is None:
            return None
        return {"revision": score_ref.revision, "source": score_ref.source, "count": score_ref.count}

    def _model_json(self, name: str) -> dict:
        report = self.reports.get(name)
        body = report.as_json() if report is not None else {
            "model": name, "computed_at": None, "window": self.window, "baseline": self.baseline_summary(name)}
        if name in self.baseline_errors:
            body["baseline_error"] = self.baseline_errors[name]
        return body
