"""How far a candidate model agrees with the live one on the same items: statistics of
paired values (live[i] and candidate[i] score the same item i). Pure numpy.

- `spearman`: the rank correlation (Pearson's of the ranks, tied values sharing their mean
  rank); None for fewer than 3 pairs or a side with one value only;
- `mean_shift`: mean(candidate - live), in the models' own units;
- `order_agreement`: over every two items answering the same prompt, the share the two
  models order alike (a tie agrees only with a tie), with `order_pairs` the number of such
  pairs; None without any;
- `drift_*`: the drift statistics (service.monitoring.baseline.compare) of the candidate's
  values against the live values' distribution taken as the reference.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from service.monitoring.baseline import compare, dimension_baseline, pearson


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x`, equal values sharing the mean of the ranks they span."""
    order = np.argsort(x, kind="stable")
    ordered = x[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[starts, x.size])
    ranks = np.empty(x.size)
    ranks[order] = np.repeat(starts + (sizes + 1) / 2, sizes)
    return ranks


def spearman(live: np.ndarray, candidate: np.ndarray) -> float | None:
    return pearson(average_ranks(live), average_ranks(candidate))


def order_agreement(live: np.ndarray, candidate: np.ndarray,
                    prompts: Sequence[Hashable | None]) -> tuple[float | None, int]:
    """The share of same-prompt item pairs both models order alike, and how many pairs there
    are (items without a known prompt pair with none)."""
    groups: dict[Hashable, list[int]] = {}
    for i, prompt in enumerate(prompts):
        if prompt is not None:
            groups.setdefault(prompt, []).append(i)
    agree = total = 0
    for members in groups.values():
        if len(members) < 2:
            continue
        index = np.asarray(members)
        first, second = np.triu_indices(index.size, k=1)
        live_order = np.sign(live[index[first]] - live[index[second]])
        candidate_order = np.sign(candidate[index[first]] - candidate[index[second]])
        agree += int(np.sum(live_order == candidate_order))
        total += first.size
    return (agree / total if total else None), total


def agreement(live: np.ndarray, candidate: np.ndarray, prompts: Sequence[Hashable | None]) -> dict:
    """Every statistic of one dimension's pairs (the module's docstring), with the counts."""
    order, order_pairs = order_agreement(live, candidate, prompts)
    statistics: dict[str, float | None] = {
        "spearman": spearman(live, candidate),
        "mean_shift": float(np.mean(candidate - live)) if live.size else None,
        "order_agreement": order,
    }
    if live.size >= 2 and np.all(np.isfinite(live)):
        reference = dimension_baseline("live", "", "", "", live)
        statistics |= {f"drift_{name}": value for name, value in compare(candidate, reference).items()}
    return {"pairs": int(live.size), "order_pairs": order_pairs, "statistics": statistics}
