"""The reference side of reward drift: what a model's drift dimensions are, its baseline
(a frozen reference scoring run, one line per dimension of `drift_baseline.jsonl` beside the
model), the statistics a live window is compared with it by, and limits calibrated for it.

Dimensions: `score` (the scalar score, a multi-objective model's aggregate or a process
model's step aggregate as its spec sets it), `dim:<name>` (every multi-objective dimension)
and `step` (every step reward of a process model, pooled).

Statistics of a live sample against a baseline:
- PSI (population stability index) and the Jensen-Shannon distance (base 2, in [0, 1]) over
  fixed bins: the edges are reference quantiles frozen in the baseline, so reference bins
  hold equal shares and live values are only counted into them;
- the KS statistic: the largest gap between the live empirical CDF and the reference CDF
  (interpolated between the baseline's 101 reference quantiles);
- the Wasserstein-1 distance between the two quantile functions, divided by the reference
  standard deviation (so "0.3" means 0.3 reference standard deviations whatever the scale);
- the mean shift, in reference standard deviations, and the std shift (live std / reference
  std - 1).

Limits (`calibrated_thresholds`): what an unshifted window of `drift.min_samples` values stays
under, every statistic at once, 99% of the time, resampled from the reference run itself.
Fixed limits cannot fit every model: how far an unshifted window wanders depends on the
reference's size and on the shape of the model's scores. A live window holding more values
than that wanders less, and `window_limits` tightens the limits to its size, so that a shift
too small to tell from noise in 200 values is flagged once the window holds enough.

The baseline is written by `rewardserve baseline FILE.jsonl --model NAME --write`. It is
monitoring metadata, not part of the model: `.jsonl` files are not in the model's revision
fingerprint, so writing a baseline changes no revision and no cache key.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.heads import RewardOutput

BASELINE_FILENAME = "drift_baseline.jsonl"
DEFAULT_BINS = 10
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 101)
W1_GRID = (np.arange(200) + 0.5) / 200
PSI_PSEUDOCOUNT = 0.5  # per bin, so an empty bin gives a large but finite PSI
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
        if (self.thresholds is None) != (self.threshold_window is None):
            raise ValueError("thresholds and threshold_window come together")
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


def window_limits(baseline: DimensionBaseline, size: int) -> dict[str, float]:
    """The calibrated limits moved from the window they were calibrated for (W values) to a
    live window of `size` (n): an unshifted window's distance from a reference of N values
    comes from the sampling noise of both, whose variance goes as 1/n + 1/N, and every limit
    is scaled by the root of that, as calibration widened them for N. (PSI's own noise
    shrinks faster, as the variance itself; scaling it by the root keeps its limit on the
    safe side, where it is most prone to false alarms against a reference of a few hundred.)"""
    window, count = baseline.threshold_window, baseline.count
    scale = math.sqrt((1 / size + 1 / count) / (1 / window + 1 / count))
    return {s: limit * scale for s, limit in baseline.thresholds.items()}


def compute_baseline(model: str, revision: str, source: str, outputs: list[RewardOutput],
                     bins: int = DEFAULT_BINS, threshold_window: int | None = None) -> dict[str, DimensionBaseline]:
    """The baseline of every dimension the outputs carry (with limits calibrated for windows
    of `threshold_window` values, when given). A dimension need not be in every output (a
    pipeline component's value is there when it was ok): each value is paired with its own
    item's length."""
    values: dict[str, list[float]] = {}
    lengths: dict[str, list[int]] = {}
    for out in outputs:
        for dim, vals in observations(out).items():
            values.setdefault(dim, []).extend(vals)
            if dim != STEP:
                lengths.setdefault(dim, []).append(out.num_tokens)
    return {
        dim: dimension_baseline(model, revision, source, dim, vals, lengths.get(dim), bins, threshold_window)
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
