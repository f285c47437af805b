"""Per-configuration intervals and paired comparisons per factor: pure functions of a Design.

    configs = configurations(design)   # stats/configurations.csv: mean, sd, n, 95% t-interval
    table = comparisons(design)         # stats/comparisons.csv: a row per factor, pair, metric

scipy and statsmodels do the maths (the t-interval, the BCa bootstrap, Wilcoxon's signed-rank
test, Holm's correction); this module decides what is paired with what:

- two runs pair when they agree on every other factor, on every matched column (a continuous
  searched factor such as a log-uniform lr) and on the replicate index; a missing value means
  "not applicable" and pairs only with another missing value, except where a factor applies at
  one of the two levels only (a baseline has no rank): that side is then averaged over it;
- ``level_a`` is the smaller level of the pair (see ``design.orders``), differences are b - a and
  ``median_ratio`` the median of b / a over the pairs with a != 0;
- a comparison with fewer than :data:`MIN_PAIRS` pairs is left out: with 5 pairs the exact
  two-sided Wilcoxon p-value cannot go below 0.0625, and an interval from fewer says little;
- ``agreement`` says whether the median pair's test (Wilcoxon) and the mean's interval tell
  the same story (:func:`agreement`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.design import NOT_APPLICABLE, Design

MIN_PAIRS = 5
RESAMPLES = 9_999
ALPHA = 0.05  # a test's p below it, or a 95% interval without zero, finds a difference
COLUMNS = ["factor", "level_a", "level_b", "metric", "n_pairs", "median_ratio", "mean_diff",
           "ci_low", "ci_high", "wilcoxon_p", "p_holm", "effect_size", "agreement"]
# agreement's values: the tests agree; only the mean's interval finds a difference; only the
# Wilcoxon test finds one; both find one, in opposite directions
AGREE, MEAN_ONLY, MEDIAN_ONLY, OPPOSITE = "agree", "mean only", "median only", "opposite"
CONFIG_COLUMNS = ["config", "label", "metric", "n", "mean", "sd", "ci_low", "ci_high"]
_NA = "\0n/a"  # a missing factor value: equal only to another missing value


def t_interval(values) -> tuple[float, float, float, float]:
    """Mean, standard deviation (n - 1) and the 95% t-interval of the mean; with one value the
    point alone (NaN spread and interval); with no spread the interval is the point."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, np.nan, np.nan, np.nan
    sd = float(x.std(ddof=1))
    if sd == 0:
        return mean, 0.0, mean, mean
    low, high = sps.t.interval(0.95, len(x) - 1, loc=mean, scale=sd / np.sqrt(len(x)))
    return mean, sd, float(low), float(high)


def configurations(design: Design) -> pd.DataFrame:
    """One row per (configuration, metric): n finished runs, mean, sd and 95% t-interval."""
    rows = []
    for config, runs in design.runs.groupby("config", sort=False):
        for metric in design.metrics:
            values = runs[metric].dropna()
            if len(values):
                mean, sd, low, high = t_interval(values)
                rows.append([config, runs["label"].iloc[0], metric, len(values), mean, sd, low,
                             high])
    return pd.DataFrame(rows, columns=CONFIG_COLUMNS)


def rank_biserial(diffs) -> float:
    """Matched-pairs rank-biserial correlation (T+ - T-) / (T+ + T-) over the (average) ranks of
    the non-zero absolute differences; 0.0 when every difference is zero."""
    d = np.asarray(diffs, dtype=float)
    d = d[d != 0]
    if not len(d):
        return 0.0
    ranks = sps.rankdata(np.abs(d))
    plus, minus = ranks[d > 0].sum(), ranks[d < 0].sum()
    return float((plus - minus) / (plus + minus))


def _keyed(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``columns`` with missing values as one sentinel, so merges pair them only with each other."""
    out = frame.copy()
    for column in columns:
        out[column] = frame[column].astype(object).where(frame[column].notna(), _NA)
    return out


def _one_sided(left: pd.DataFrame, right: pd.DataFrame, keys: list[str]) -> list[str]:
    """The keys that apply to every run of one side and to none of the other (a baseline has
    no rank, every LoRA run has one)."""
    def nowhere(side, key):
        return bool((side[key] == _NA).all())

    def everywhere(side, key):
        return bool((side[key] != _NA).all())

    return [k for k in keys if (nowhere(left, k) and everywhere(right, k))
            or (nowhere(right, k) and everywhere(left, k))]


def pairs(design: Design, factor: str, a, b, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The paired values of ``metric`` at levels ``a`` and ``b`` of ``factor`` (see module).

    A key that applies at one level only (rank: LoRA has one, a baseline has none) is no key:
    the side it applies to is averaged over its levels, one value per pair (the baseline
    against LoRA averaged over its ranks), so that one run never stands in several pairs.
    """
    keys = [c for c in (*design.factors, *design.matched) if c != factor] + ["replicate"]
    runs = _keyed(design.runs, [*keys, factor])
    left = runs.loc[runs[factor] == a, [*keys, metric]].dropna(subset=[metric])
    right = runs.loc[runs[factor] == b, [*keys, metric]].dropna(subset=[metric])
    absent = _one_sided(left, right, keys) if len(left) and len(right) else []
    if absent:
        keys = [k for k in keys if k not in absent]
        left = left.groupby(keys, sort=False, as_index=False)[metric].mean()
        right = right.groupby(keys, sort=False, as_index=False)[metric].mean()
    both = left.merge(right, on=keys, suffixes=("_a", "_b"))
    return both[f"{metric}_a"].to_numpy(float), both[f"{metric}_b"].to_numpy(float)


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    """The statistics of one paired comparison (b against a)."""
    d = b - a
    nonzero = a != 0
    out = {
        "n_pairs": len(d),
        "median_ratio": float(np.median(b[nonzero] / a[nonzero])) if nonzero.any() else np.nan,
        "mean_diff": float(d.mean()),
        "ci_low": np.nan, "ci_high": np.nan, "wilcoxon_p": 1.0, "effect_size": 0.0,
    }
    if not (d == 0).all():
        boot = sps.bootstrap((d,), np.mean, n_resamples=RESAMPLES, method="BCa",
                             rng=np.random.default_rng(0))
        out["ci_low"], out["ci_high"] = boot.confidence_interval
        out["wilcoxon_p"] = float(sps.wilcoxon(b, a).pvalue)
        out["effect_size"] = rank_biserial(d)
    return out


def agreement(row) -> str:
    """Whether a comparison's two tests tell one story (``row``: a comparisons.csv row):
    Wilcoxon's signed-rank test (uncorrected p below :data:`ALPHA`; its direction the sign of
    the rank-biserial r) speaks for the median pair, the bootstrap interval of the mean
    difference (zero outside it) for the mean. Both are uncorrected, at the same 95%: Holm's
    correction is a separate matter. A comparison without an interval (every difference the
    same) agrees."""
    if pd.isna(row["ci_low"]) or pd.isna(row["ci_high"]):
        return AGREE
    median = row["wilcoxon_p"] < ALPHA
    mean = row["ci_low"] > 0 or row["ci_high"] < 0
    if median and mean:
        return AGREE if np.sign(row["effect_size"]) == np.sign(row["mean_diff"]) else OPPOSITE
    if median == mean:
        return AGREE
    return MEDIAN_ONLY if median else MEAN_ONLY


def comparisons(design: Design, min_pairs: int = MIN_PAIRS) -> pd.DataFrame:
    """Every pair of levels of every factor, for every metric, with at least ``min_pairs``
    pairs; ``p_holm``: Holm's correction over all the comparisons of one metric."""
    import warnings

    from statsmodels.stats.multitest import multipletests

    rows = []
    for factor in design.factors:
        levels = design.orders.get(factor) or []
        for i, a in enumerate(levels):
            for b in levels[i + 1:]:
                for metric in design.metrics:
                    va, vb = pairs(design, factor, a, b, metric)
                    if len(va) < min_pairs:
                        continue
                    with warnings.catch_warnings():  # constant differences: scipy says NaN
                        warnings.simplefilter("ignore", RuntimeWarning)
                        warnings.simplefilter("ignore", sps.DegenerateDataWarning)
                        stats = compare(va, vb)
                    rows.append({"factor": factor, "level_a": a, "level_b": b, "metric": metric,
                                 **stats})
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p_holm", "agreement")])
    table["p_holm"] = np.nan
    for _, part in table.groupby("metric", sort=False):
        table.loc[part.index, "p_holm"] = multipletests(part["wilcoxon_p"], method="holm")[1]
    table["agreement"] = [agreement(r) for _, r in table.iterrows()]
    return table[COLUMNS]


def level_means(design: Design, factor: str, metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(levels, points) of ``metric`` by ``factor``: per level (in order, missing as "not
    applicable") the mean over its runs with the 95% t-interval and n; each run as (level
    index, value)."""
    runs = design.runs.dropna(subset=[metric])
    values = runs[factor].astype(object).where(runs[factor].notna(), _NA)
    levels = [lv for lv in design.orders.get(factor, []) if (values == lv).any()]
    if (values == _NA).any():
        levels.append(_NA)
    rows, points = [], []
    for i, level in enumerate(levels):
        y = runs.loc[values == level, metric].to_numpy(float)
        mean, _, low, high = t_interval(y)
        rows.append({"level": NOT_APPLICABLE if level is _NA else level, "n": len(y), "mean": mean,
                     "ci_low": low, "ci_high": high})
        points += [(i, v) for v in y]
    return pd.DataFrame(rows), pd.DataFrame(points, columns=["level", "y"])
