"""The factors the answer leads with, and the level each one's other levels are compared with.

    asked = parse_focus(design, "method", ["method=LoRA"])   # --focus, --reference (checked)
    order, reference = resolve(design, asked, found_importance)
    table = oriented(design, comparisons_table, order, reference)   # stats/focus.csv's rows

``--focus A,B`` names the factors the answer opens with (default: every factor, the most
important first); ``--reference A=LEVEL`` the level the others are compared with (default: the
first level in the factor's order: numbers ascending, else the search space's order, else the
table's). Every factor that is not a focus follows, ordered by importance too (mean over
Optuna's evaluators of the leading quality metric; a factor without one last, in the design's
order). A comparison is the row of ``stats/comparisons.csv`` with the reference as ``level_a``:
where the reference is the later level its row is turned round (the difference, its interval
and the rank-biserial r change sign; the median ratio is taken again over the same pairs; the
p-values stay, the test being two-sided).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from analysis.design import Design
from analysis.stats import COLUMNS, pairs
from study.metrics import number

FOCUS_COLUMNS = ["factor", "reference", "level", "metric", *COLUMNS[4:], "focus"]


class Focus(NamedTuple):
    """What --focus and --reference asked: ``factors`` None for the default (every factor by
    importance), ``reference`` factor -> level for the factors named."""

    factors: list[str] | None = None
    reference: dict | None = None


def compared(design: Design) -> list[str]:
    """The factors with two or more levels: those a comparison can be about."""
    return [f for f in design.factors if len(design.orders.get(f) or []) > 1]


def _level(design: Design, factor: str, text: str):
    """The level of ``factor`` written ``text`` (rank 32 is "32"), or ValueError (one line)."""
    levels = design.orders.get(factor) or []
    for level in levels:
        if number(level) == text or str(level) == text:
            return level
    raise ValueError(f"--reference: {factor} has no level {text!r}; its levels: "
                     f"{', '.join(number(v) for v in levels)}")


def parse_focus(design: Design, focus: str | None, references) -> Focus:
    """``--focus A,B`` and ``--reference A=LEVEL`` (a list: the flag repeated; each may hold
    several, comma-separated), checked against the design; ValueError (one line naming what
    was wrong and what is allowed) before anything is written."""
    allowed = compared(design)
    names = ", ".join(allowed) or "none"
    factors = None
    if focus is not None:
        factors = [n.strip() for n in focus.split(",") if n.strip()]
        if not factors:
            raise ValueError(f"--focus: name one or more factors, as A,B (the factors: {names})")
        for f in factors:
            if f not in allowed:
                raise ValueError(f"--focus: no factor {f!r} with two or more levels; the "
                                 f"factors: {names}")
        factors = list(dict.fromkeys(factors))
    reference = {}
    for item in (t.strip() for text in references or [] for t in text.split(",")):
        factor, sep, text = (part.strip() for part in item.partition("="))
        if not sep or not factor or not text:
            raise ValueError(f"--reference: {item!r} must be FACTOR=LEVEL (the factors: {names})")
        if factor not in allowed:
            raise ValueError(f"--reference: no factor {factor!r} with two or more levels; the "
                             f"factors: {names}")
        if factor in reference:
            raise ValueError(f"--reference: {factor} is given twice; give one level per factor")
        reference[factor] = _level(design, factor, text)
    return Focus(factors, reference)


def importance_order(design: Design, importance: pd.DataFrame) -> list[str]:
    """The compared factors, the most important first (see module)."""
    factors = compared(design)
    if not len(importance):
        return factors
    lead = next((m for m in design.quality if m in set(importance["metric"])),
                importance["metric"].iloc[0])
    mine = importance[importance["metric"] == lead].groupby("factor")["importance"].mean()
    return sorted(factors, key=lambda f: (-mine.get(f, -1.0), factors.index(f)))


def resolve(design: Design, asked: Focus, importance: pd.DataFrame) -> tuple[list, list, dict]:
    """(the focus factors, the other factors, each factor's reference level)."""
    order = importance_order(design, importance)
    focus = asked.factors if asked.factors is not None else order
    others = [f for f in order if f not in focus]
    given = asked.reference or {}
    reference = {f: given.get(f, design.orders[f][0]) for f in order}
    return focus, others, reference


def _turned(design: Design, row: pd.Series, reference, level) -> dict:
    """A comparisons row (level, reference) as (reference, level)."""
    a, b = pairs(design, row["factor"], reference, level, row["metric"])
    nonzero = a != 0
    return {**row.to_dict(), "mean_diff": -row["mean_diff"], "ci_low": -row["ci_high"],
            "ci_high": -row["ci_low"], "effect_size": -row["effect_size"] + 0.0,
            # both tests turn round with it: the agreement stays
            "median_ratio": float(np.median(b[nonzero] / a[nonzero])) if nonzero.any() else np.nan}


def oriented(design: Design, comps: pd.DataFrame, factors: list[str], reference: dict,
             focus: list[str]) -> pd.DataFrame:
    """stats/focus.csv: for each factor of ``factors`` (in order), each other level against its
    reference, every metric, from ``comps`` (comparisons.csv); a pair of levels with fewer than
    5 pairs has no row. ``focus``: the column saying which factors the answer leads with."""
    rows = []
    for factor in factors:
        ref = reference[factor]
        mine = comps[comps["factor"] == factor]
        for level in design.orders[factor]:
            if level == ref:
                continue
            ahead = mine[(mine["level_a"] == ref) & (mine["level_b"] == level)]
            behind = mine[(mine["level_a"] == level) & (mine["level_b"] == ref)]
            found = ([r.to_dict() for _, r in ahead.iterrows()]
                     or [_turned(design, r, ref, level) for _, r in behind.iterrows()])
            rows += [{**r, "reference": ref, "level": level, "focus": factor in focus}
                     for r in found]
    return pd.DataFrame(rows, columns=FOCUS_COLUMNS)
