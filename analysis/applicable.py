"""Factors that do not apply to every run, and the runs where every factor applies.

    runs, note = applicable(design, design.runs)   # what importance and the ANOVA read

A baseline has no rank and no target modules; a 16-bit run has no quantization type. A missing
value of a factor means "not applicable" (``analysis.design.NOT_APPLICABLE``). A factor with two
or more levels where it applies is *conditional*: its "not applicable" runs are another kind of
run (the baseline), and a model over every factor cannot separate them from the factor's
levels (the runs without a rank are exactly the baseline's). Importance and the ANOVA therefore
read the runs where every conditional factor applies, and say in a note what they left out. A
factor with one level where it applies (a variant that only 16-bit runs have) stays with
"not applicable" as a level of its own: nothing is left out for it, and the ANOVA names it as
aliased where it only repeats another factor.
"""

from __future__ import annotations

import pandas as pd

from analysis.design import Design
from study.metrics import number


def conditional(design: Design, runs: pd.DataFrame) -> list[str]:
    """The factors that some of ``runs`` lack and that have 2+ levels where they apply."""
    return [f for f in design.factors
            if runs[f].isna().any() and runs[f].dropna().nunique() > 1]


def _marks(design: Design, left: pd.DataFrame, kept: pd.DataFrame) -> list[str]:
    """What the left-out runs are, in the words of the other factors: "method baseline" where
    every one of them has a level that no kept run has."""
    marks = []
    for factor in design.factors:
        if left[factor].isna().any():
            continue
        only = [v for v in left[factor].unique() if v not in set(kept[factor].dropna())]
        if only and left[factor].isin(only).all():
            levels = [v for v in design.orders.get(factor, []) if v in only] or only
            marks.append(f"{factor} {', '.join(number(v) for v in levels)}")
    return marks


def applicable(design: Design, runs: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """(the runs where every conditional factor applies, a note naming what was left out).

    When no run has every conditional factor, every run is kept, "not applicable" a level of
    its own, and the note says so.
    """
    factors = conditional(design, runs)
    if not factors:
        return runs, None
    keep = runs[factors].notna().all(axis=1)
    names = " and ".join(factors)
    if keep.sum() < 2:
        return runs, (f"No two runs have every one of {names}: importance and the ANOVA read "
                      "every run, with \"not applicable\" as a level of its own.")
    left = runs[~keep]
    marks = _marks(design, left, runs[keep])
    what = f"the {len(left)} runs of {' and '.join(marks)}" if marks else f"{len(left)} runs"
    lacking = sorted({f for f in factors if left[f].isna().any()}, key=factors.index)
    verb = "does" if len(lacking) == 1 else "do"
    return runs[keep], (
        f"Importance and the ANOVA read the {int(keep.sum())} runs where every factor applies; "
        f"left out: {what}, where {' and '.join(lacking)} {verb} not apply (the paired "
        "comparisons keep them).")
