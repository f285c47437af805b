"""Early-stopping trust: does an ASHA rung rank trials as their final values do?

    rungs = rung_steps(grace=10, reduction_factor=2, max_t=40)       # [10, 20]
    rho, low, high = spearman_interval(at_rung, final)                # Spearman, 95% Fisher-z
    sections = rung_sections(data)     # the report's section (none without an ASHA study)

ASHA stops a trial at a rung when its value there is among the worse of the rung's values: it
trusts that a rung ranks configurations as their final values would. With LoRA that is not a
given (low- and high-rank curves can match early and part late). ``bench/rung_correlation.py``
measures it on the recorded grid, where every configuration ran to its end; a study can only
measure it among the trials ASHA let finish (survivors), so the report says so, and gives the
figure only where :data:`MIN_TRIALS` trials reached both the rung and the end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from analysis.page import Section, section
from study import metrics as M
from study import record

MIN_TRIALS = 5  # fewer pairs than this: a rank correlation says next to nothing (report says so)
Z95 = float(stats.norm.ppf(0.975))
ASHA_KEY = "asha"  # study.json's record of ASHA's settings (study.search.plan.asha_record)


def rung_steps(grace: float, reduction_factor: float, max_t: float) -> list[float]:
    """The steps at which ASHA can stop a trial: ``grace * rf**k`` below ``max_t``.

    The same rungs as study.search.asha.StudyASHA (a test holds them equal); its rung at or past
    ``max_t`` is the end, where nothing is stopped, so it is left out.
    """
    count = int(math.log(max_t / grace) / math.log(reduction_factor) + 1)
    milestones = (grace * reduction_factor**k for k in range(count))
    return [m for m in milestones if m < max_t]


def spearman_interval(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Spearman's rho of ``x`` and ``y`` (scipy.stats.spearmanr: ties get average ranks) and its
    95% interval by Fisher's z with Bonett & Wright's (2000) variance (1 + rho**2 / 2) / (n - 3).

    NaN where it is undefined: fewer than 4 pairs, or one side all tied.
    """
    if len(x) < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan, math.nan
    rho = float(stats.spearmanr(x, y).statistic)
    half = Z95 * math.sqrt((1 + rho**2 / 2) / (len(x) - 3))
    with np.errstate(divide="ignore"):  # rho = +-1: z is infinite, the interval the point
        z = np.arctanh(rho)
    return rho, float(np.tanh(z - half)), float(np.tanh(z + half))


def value_at(curve: pd.DataFrame, metric: str, step: float, before: float) -> float | None:
    """The value ASHA records at rung ``step``: the first measured one at or past it (its rung
    rule), from an evaluation before ``before`` (the end: ASHA judges nothing there)."""
    steps = curve[M.STEP]
    past = curve[curve[metric].notna() & (steps >= step) & (steps < before)]
    return float(past.sort_values(M.STEP)[metric].iloc[0]) if len(past) else None


def study_rungs(trials: pd.DataFrame, curves: pd.DataFrame, asha: dict) -> list[dict]:
    """Per rung of one study: the searched trials that reached it (``reached``), those of them
    that also reached the end (``n``) and Spearman's rho between the two values with its
    interval among those ``n``."""
    metric = asha["metric"]
    searched = trials[trials["group"] == record.SEARCH]
    curves = curves[curves["group"] == record.SEARCH]
    if metric not in curves.columns or metric not in searched.columns:
        curves = curves.assign(**{metric: math.nan})  # nothing measured at any rung
    rows = []
    for step in rung_steps(asha["grace"], asha["reduction_factor"], asha["max_t"]):
        pairs, reached = [], 0
        for _, trial in searched.iterrows():
            mine = curves[curves["trial"] == trial["trial"]]
            finished = trial["status"] == record.FINISHED
            # a finished trial's last evaluation is its end, whatever --max-t said
            end = min(asha["max_t"], mine[M.STEP].max()) if finished else asha["max_t"]
            early = value_at(mine, metric, step, end)
            reached += early is not None
            final = trial.get(metric)
            if early is not None and finished and pd.notna(final):
                pairs.append((early, float(final)))
        rho, low, high = spearman_interval(*zip(*pairs)) if pairs else (math.nan,) * 3
        enough = len(pairs) >= MIN_TRIALS
        rows.append({"step": step, "reached": reached, "n": len(pairs), "rho": rho,
                     "low": low, "high": high, "enough": enough,
                     "tied": enough and math.isnan(rho)})  # one side all tied: no ranking
    return rows


def rung_sections(trials: pd.DataFrame, curves: pd.DataFrame, studies: dict) -> list[Section]:
    """The report's early-stopping section: each ASHA study's rungs (none without one: a study
    run with ``--scheduler none``, or recorded before study.json kept ASHA's settings)."""
    found = []
    for name, info in studies.items():
        asha = info.get(ASHA_KEY) if isinstance(info, dict) else None
        if not isinstance(asha, dict):
            continue
        mine = trials["study"] == name
        rows = study_rungs(trials[mine], curves[curves["study"] == name], asha)
        found.append({"study": name, "metric": asha["metric"], "rows": rows})
    if not found:
        return []
    return [section("rungs", "Early stopping: do the rungs rank as the end does?",
                    studies=found, min_trials=MIN_TRIALS)]
