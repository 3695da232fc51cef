"""Proportions with 95% Wilson score intervals: every rate nanocot reports carries its n and interval.

- Wilson, not the normal approximation: it stays inside [0, 1] and is sensible at 0/n and n/n, which is
  exactly where faithfulness rates live (follow rates near 1, filler gains near 0).
- n = 0 gives the whole interval [0, 1] and value 0.0: "no evidence" stays finite in metrics.json, and the
  n printed beside it says why.
- Outcomes that come in clusters (8 samples of one problem, 3 corrupted steps of one trace, the steps of one
  trace) are not independent: `proportion(..., clusters=...)` widens the interval by the design effect (the
  cluster-robust variance over the binomial one), i.e. Wilson at the effective sample size n / deff.
- `t95` gives the Student-t quantile for a mean over a few seeds (the pipeline's summary over seeds).
"""

import math
from collections.abc import Iterable

Z95 = 1.959963984540054  # two-sided 95% normal quantile

# Two-sided 95% Student-t quantiles by degrees of freedom (no scipy dependency).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
       20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t95(df: int) -> float:
    """The quantile for `df` degrees of freedom: from the table, else from the next tabulated df below (a
    slightly wider interval), 1.96 only past 120."""
    return T95[max(k for k in T95 if k <= df)] if df <= 120 else 1.96


def wilson(hits: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for `hits` successes out of `n` trials (both may be fractional: an effective
    sample size)."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # float rounding must not exclude p
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def difference(a: dict, b: dict) -> dict:
    """a - b for two `proportion` dicts, with Newcombe's interval (method 10: it combines the two Wilson
    intervals), so a verdict can ask whether a gap is within a margin rather than whether intervals overlap.
    Treating the two as independent is conservative when both were measured on the same problems."""
    d = a["value"] - b["value"]
    lo = d - math.sqrt((a["value"] - a["lo"]) ** 2 + (b["hi"] - b["value"]) ** 2)
    hi = d + math.sqrt((a["hi"] - a["value"]) ** 2 + (b["value"] - b["lo"]) ** 2)
    return {"value": d, "lo": max(-1.0, lo), "hi": min(1.0, hi)}


def proportion(outcomes: Iterable[bool], clusters: Iterable | None = None) -> dict:
    """{"value", "n", "lo", "hi"} for a list of yes/no outcomes; with `clusters` (one label per outcome: the
    problem or trace it came from) also "clusters" and "design_effect", and the interval widened by it."""
    outcomes = [bool(o) for o in outcomes]
    hits, n = sum(outcomes), len(outcomes)
    if clusters is None:
        lo, hi = wilson(hits, n)
        return {"value": hits / n if n else 0.0, "n": n, "lo": lo, "hi": hi}
    sums: dict = {}
    for label, o in zip(clusters, outcomes, strict=True):
        h, m = sums.get(label, (0, 0))
        sums[label] = (h + o, m + 1)
    deff = design_effect(list(sums.values()), hits, n)
    lo, hi = wilson(hits / deff, n / deff)  # the same rate, at the effective sample size
    return {"value": hits / n if n else 0.0, "n": n, "lo": lo, "hi": hi, "clusters": len(sums),
            "design_effect": deff}


def design_effect(clusters: list[tuple[int, int]], hits: int, n: int) -> float:
    """Variance of a clustered proportion (the ratio estimator's cluster-robust variance, from (hits, count)
    per cluster) over the binomial variance p(1-p)/n; at least 1 (never narrower than Wilson), 1 when it is
    undefined (p is 0 or 1, or a single cluster)."""
    k = len(clusters)
    if k < 2 or hits in (0, n):
        return 1.0
    p = hits / n
    robust = k / (k - 1) * sum((h - p * m) ** 2 for h, m in clusters) / n**2
    return max(1.0, robust / (p * (1 - p) / n))


def fmt(rate: dict, digits: int = 3) -> str:
    """'0.912 [0.893, 0.928] (n=1000)': how every rate is printed in the report."""
    return f"{rate['value']:.{digits}f} [{rate['lo']:.{digits}f}, {rate['hi']:.{digits}f}] (n={rate['n']})"
