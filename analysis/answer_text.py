"""The answer's words: sentences built from the tables of ``analysis.answer`` (see
docs/STATISTICS.md, "The answer section", for each sentence and when not to trust it).

    best_line(design, recommendations)            # "Best accuracy at data size 3000: ..."
    paragraph(design, focus_rows, by_level, "method", reference="LoRA")
    no_pairs(design)                              # why nothing is compared

Numbers are written by ``study.metrics.number`` (rank 32, not 32.0). A comparison's sentence
says a difference is significant when Holm's corrected Wilcoxon p is below 0.05; where the
median pair's test and the mean's interval disagree (``analysis.stats.agreement``) it says both.
"""

from __future__ import annotations

import pandas as pd

from analysis.design import Design
from analysis.recommend import JOIN
from analysis.stats import ALPHA, MEAN_ONLY, MEDIAN_ONLY, MIN_PAIRS, OPPOSITE
from study.metrics import number

# the resources a study's comparison sentence names next to the quality, where measured
SENTENCE_RESOURCES = {"peak_mem_mb": "memory", "train_s": "training time",
                      "adapter_mb": "adapter size", "latency_ms_per_token_merged": "latency",
                      "latency_ms_per_example_merged": "latency"}


def _signed(value: float) -> str:
    return ("+" if value > 0 else "") + number(value, 3)


def best_line(design: Design, recs: pd.DataFrame) -> str | None:
    """The best configuration of the leading quality metric: at the largest data size first,
    then at each other size, largest first."""
    q = next(iter(design.quality))
    best = recs[recs["priority"].map(lambda p: f"best {q}" in str(p).split(JOIN))]
    if not len(best):
        return None
    if "data_size" in best.columns:
        best = best.sort_values("data_size", ascending=False, kind="stable")
    parts = []
    for i, (_, top) in enumerate(best.iterrows()):
        ci = ("" if pd.isna(top["ci_low"]) else
              f", 95% CI [{number(top['ci_low'], 4)}, {number(top['ci_high'], 4)}]")
        where = f"at data size {number(top['data_size'])}" if "data_size" in best.columns else ""
        head = f"Best {q} {where}" if i == 0 else where
        parts.append(f"{head.strip()}: {top['configuration']}, {number(top[q], 4)}{ci} "
                     f"({top['n']} run{'s' if top['n'] != 1 else ''})")
    return "; ".join(parts) + "."


def _resources_text(design: Design, rows: pd.DataFrame) -> str:
    """ " at 0.53x the gpu_mem_gb and 1.3x the time_min": each resource's median ratio."""
    named = (SENTENCE_RESOURCES if design.source == "study"
             else {r: r for r in design.resources})  # a table's own names
    parts = []
    for metric, words in named.items():
        same = rows[rows["metric"] == metric]
        if metric in design.resources and len(same) and pd.notna(same["median_ratio"].iloc[0]):
            parts.append(f"{number(same['median_ratio'].iloc[0], 3)}x the {words}")
    if not parts:
        return ""
    return " at " + ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]


def _reconcile(design: Design, row: pd.Series, q: str) -> str:
    """Both tests in plain words, where they disagree (see analysis.stats.agreement)."""
    kind = row["agreement"]
    if kind not in (MEAN_ONLY, MEDIAN_ONLY, OPPOSITE):
        return ""
    wilcoxon = f"Wilcoxon p = {number(row['wilcoxon_p'], 2)}"
    lower = row["mean_diff"] < 0
    size = number(abs(row["mean_diff"]), 3)
    ends = sorted([abs(row["ci_low"]), abs(row["ci_high"])])
    mean = (f"the mean is {size} {'lower' if lower else 'higher'} "
            f"[{number(ends[0], 3)}, {number(ends[1], 3)}]")
    worse = lower == design.quality[q]  # the mean moved the bad way
    n = int(row["n_pairs"])
    floor = 2.0 / 2**n  # the smallest two-sided p the exact signed-rank test gives n pairs
    if kind == MEAN_ONLY and floor >= ALPHA:
        same = ", every pair the same way" if abs(row["effect_size"]) == 1 else ""
        return (f" With {n} pairs the Wilcoxon test cannot find a difference (the smallest p "
                f"it can give is {number(floor, 2)}); {mean}{same}: more pairs would tell.")
    if kind == MEAN_ONLY:
        return (f" The tests disagree: no significant difference for the median pair "
                f"({wilcoxon}); {mean}: a minority of pairs {'lost' if worse else 'gained'} "
                "more.")
    median = "higher" if row["effect_size"] > 0 else "lower"
    if kind == MEDIAN_ONLY:
        return (f" The tests disagree: the median pair is {median} ({wilcoxon}), but the "
                f"mean's 95% interval [{number(row['ci_low'], 3)}, {number(row['ci_high'], 3)}] "
                "includes zero: a minority of pairs went the other way by more.")
    return (f" The tests disagree: the median pair is {median} ({wilcoxon}), but {mean}: a "
            f"minority of pairs {'lost' if worse else 'gained'} more than the rest "
            f"{'gained' if worse else 'lost'}.")


def _by_level_text(splits: pd.DataFrame) -> str:
    """ " It changes across dataset: at EN ...; at RU ..." for each factor it changes across."""
    out = []
    for within, part in splits.groupby("within", sort=False):
        levels = [f"at {number(r['within_level'])} {_signed(r['mean_diff'])} "
                  f"[{number(r['ci_low'], 3)}, {number(r['ci_high'], 3)}] ({r['verdict']}, "
                  f"p = {number(r['wilcoxon_p'], 2)}, {int(r['n_pairs'])} pairs)"
                  for _, r in part.iterrows()]
        out.append(f" It changes across {within} (mean difference per level, uncorrected "
                   f"Wilcoxon): {'; '.join(levels)}.")
    return "".join(out)


def sentence(design: Design, rows: pd.DataFrame, q: str, splits: pd.DataFrame) -> str:
    """One level against its reference (``rows``: its focus.csv rows, every metric)."""
    row = rows[rows["metric"] == q].iloc[0]
    f, a, b, n = row["factor"], number(row["reference"]), number(row["level"]), row["n_pairs"]
    ratio = row["median_ratio"]
    if pd.isna(ratio):
        what = f"{q} differs by {_signed(row['mean_diff'])} on average"
    elif design.quality[q]:
        what = f"keeps {100 * ratio:.1f}% of {f} {a}'s {q}"
    else:
        what = f"has {number(ratio, 3)}x the {q} of {f} {a}"
    ci = ("" if pd.isna(row["ci_low"]) else
          f", mean difference {_signed(row['mean_diff'])}, 95% CI [{number(row['ci_low'], 3)}, "
          f"{number(row['ci_high'], 3)}]")
    verdict = "significant" if row["p_holm"] < ALPHA else "not significant"
    return (
        f"{f} {b} {what} (median over {int(n)} pairs{ci}){_resources_text(design, rows)}; the "
        f"{q} difference is {verdict} (Wilcoxon p = {number(row['wilcoxon_p'], 2)}, "
        f"Holm-corrected p = {number(row['p_holm'], 2)}, rank-biserial r = "
        f"{row['effect_size']:+.2f}).{_reconcile(design, row, q)}{_by_level_text(splits)}"
    )


def paragraph(design: Design, focus: pd.DataFrame, splits: pd.DataFrame, factor: str,
              reference, leads: bool) -> str | None:
    """Every other level of ``factor`` against ``reference``: a sentence each; a level without
    5 pairs is named as such where the factor ``leads`` (a focus), left out otherwise."""
    q = next(iter(design.quality))
    mine = focus[(focus["factor"] == factor)]
    said, missing = [], []
    for level in design.orders[factor]:
        if level == reference:
            continue
        rows = mine[mine["level"] == level]
        if not (rows["metric"] == q).any():
            missing.append(number(level))
            continue
        here = splits[(splits["factor"] == factor) & (splits["level"] == level)]
        said.append(sentence(design, rows, q, here))
    if missing and leads:
        said.append(f"{factor} {', '.join(missing)}: fewer than {MIN_PAIRS} pairs with {factor} "
                    f"{number(reference)}, not compared.")
    return " ".join(said) or None


def no_pairs(design: Design) -> str:
    """Why no comparison has pairs, and what to read instead."""
    why = []
    if design.matched:
        why.append(f"{', '.join(design.matched)} varies continuously and runs pair only where it "
                   "is equal")
    if len(design.runs) and design.runs.groupby("config").size().max() < 2:
        why.append("each configuration ran once")
    reason = f" ({'; '.join(why)})" if why else ""
    return (
        f"No two levels of any factor have {MIN_PAIRS} or more matched pairs of runs{reason}, so "
        "no difference here is tested: read the recommendation table and the parameter "
        "importance below, which need no pairs. A grid over a space of choices with replicates "
        "(--search grid --repeats 3) gives every comparison its pairs."
    )
