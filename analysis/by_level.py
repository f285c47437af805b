"""Whether a focus comparison holds at every level of another factor.

    table = by_level(design, focus_rows, metric)   # stats/focus_by_level.csv

For each comparison of a focus factor's level with its reference (the leading quality metric),
and each other factor, the same pairs are taken within each of that factor's levels (nf4 against
LoRA at dataset EN, then at RU). Each level with :data:`analysis.stats.MIN_PAIRS` pairs gets a
verdict from Wilcoxon's test, uncorrected (an exploratory split, not a family of tests Holm
could correct): "higher", "lower" (p below :data:`analysis.stats.ALPHA`, the direction of the
rank-biserial r) or "not significant". Where the verdicts differ across the levels (the sign or
the significance changes), every level's figures are kept: the mean difference with its
bootstrap interval, the p-value and the pairs; otherwise nothing is (the comparison holds).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.design import Design
from analysis.stats import ALPHA, MIN_PAIRS, compare, pairs, rank_biserial

BY_LEVEL_COLUMNS = ["factor", "reference", "level", "metric", "within", "within_level",
                    "n_pairs", "mean_diff", "ci_low", "ci_high", "wilcoxon_p", "effect_size",
                    "verdict"]
HIGHER, LOWER, NOT_SIGNIFICANT = "higher", "lower", "not significant"


def verdict(p: float, effect: float) -> str:
    """What Wilcoxon's test says of b against a (see module)."""
    if p < ALPHA and effect:
        return HIGHER if effect > 0 else LOWER
    return NOT_SIGNIFICANT


def _quick(a: np.ndarray, b: np.ndarray) -> str:
    """The verdict alone (no bootstrap: most splits hold and print nothing)."""
    d = b - a
    if (d == 0).all():
        return NOT_SIGNIFICANT
    with warnings.catch_warnings():  # ties and zeros: scipy's normal approximation warns
        warnings.simplefilter("ignore")
        return verdict(float(sps.wilcoxon(b, a).pvalue), rank_biserial(d))


def _full(a: np.ndarray, b: np.ndarray) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = compare(a, b)
    return {**found, "verdict": verdict(found["wilcoxon_p"], found["effect_size"])}


def _split(design: Design, row: pd.Series, within: str) -> list[dict]:
    """The rows of one comparison within each level of ``within``, or [] when it holds."""
    found = []
    for level in design.orders[within]:
        part = dataclasses.replace(design, runs=design.runs[design.runs[within] == level])
        a, b = pairs(part, row["factor"], row["reference"], row["level"], row["metric"])
        if len(a) >= MIN_PAIRS:
            found.append((level, a, b))
    if len({_quick(a, b) for _, a, b in found}) < 2:
        return []
    keys = {k: row[k] for k in ("factor", "reference", "level", "metric")}
    return [{**keys, "within": within, "within_level": level, **_full(a, b)}
            for level, a, b in found]


def by_level(design: Design, focus_rows: pd.DataFrame, metric: str | None) -> pd.DataFrame:
    """Every split of a focus comparison of ``metric`` whose verdict changes (see module); none
    without a metric (a design without a quality metric)."""
    rows = []
    mine = focus_rows[(focus_rows["metric"] == metric) & focus_rows["focus"].astype(bool)]
    for _, row in mine.iterrows():
        for within in design.factors:
            if within != row["factor"] and len(design.orders.get(within) or []) > 1:
                rows += _split(design, row, within)
    return pd.DataFrame(rows, columns=BY_LEVEL_COLUMNS)
