"""`rewardserve gate`'s report as a table for people; `--json` writes the same report whole."""

from __future__ import annotations


def interval(estimate: dict, sign: str = "") -> str:
    """'62.3 [56.7, 67.6]'; a bound that does not exist (one record) as '?'."""
    low, high = ("?" if v is None else f"{v:{sign}.1f}" for v in (estimate["low"], estimate["high"]))
    return f"{estimate['value']:{sign}.1f} [{low}, {high}]"


def print_report(report: dict) -> None:
    data, live, candidate = report["data"], report["live"]["name"], report["candidate"]["name"]
    print(f"gate: {candidate} (candidate) against {live} (live) on {data['file']}: {data['records']} "
          f"{data['format']} records, truncate={data['truncate']}, buckets by {data['buckets']}")
    print(f"{report['metric']} in points, 95% intervals; the difference is the candidate's, paired on the same records")
    rows = [("dimension", "bucket", "n", "live", "candidate", "difference", "better")]
    rows += [(r["dimension"], r["bucket"], str(r["n"]), interval(r["live"]), interval(r["candidate"]),
              interval(r["difference"], "+"), (r["better"] or "-") + (" REGRESSES" if r["regresses"] else ""))
             for r in report["rows"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.rjust(w) if i == 2 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
              .rstrip())
    agreement = report["agreement"]
    same = agreement["same_judgement"]
    rho = agreement["spearman"]
    print("agreement: " + (f"same judgement on {100 * same:.1f}% of records, " if same is not None else "")
          + ("Spearman of scores " + (f"{rho:.4f}" if rho is not None else "undefined (a constant side)")))
    golden = report["golden_set"]
    if golden is None:
        print(f"golden set: none recorded for {live}")
    else:
        worst = golden["max_abs_deviation"]
        rho = golden["spearman"]
        print(f"golden set ({live}'s, {golden['items']} items): {candidate}'s max |deviation| "
              + (golden.get("error", "differs in shape") if worst is None else f"{worst:.4g}")
              + (f", Spearman {rho:.4f}" if rho is not None else ""))
    if report["verdict"] == "trades off":
        for side in ("candidate", "live"):
            wins = [f"{r['dimension']}/{r['bucket']}" for r in report["rows"] if r["better"] == side]
            print(f"{side} better on: {', '.join(wins)}")
    print(f"verdict: {report['verdict']} (a regression: worse beyond the interval by more than "
          f"{report['max_regression']:g} points)")
