"""The report's answer: the statistics of a Design, written under ``stats/`` and told in words.

    found = analyse(design, interactions=[("rank", "targets")], optuna_study=study)
    write(found, out / "stats")      # configurations, comparisons, importance, anova, ...
    sentences(design, found)         # plain sentences, the report's first section

The words are generated from ``stats/comparisons.csv`` only: a sentence says a difference is
significant when Holm's corrected Wilcoxon p-value is below 0.05, and says nothing of a
comparison with fewer than 5 pairs (it is not in the table).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pandas as pd

from analysis.design import Design
from analysis.effects import ANOVA_COLUMNS, IMPORTANCE_COLUMNS, anova, importance
from analysis.recommend import recommendations
from analysis.stats import MIN_PAIRS, comparisons, configurations
from study.metrics import number

ALPHA = 0.05
MAX_SENTENCES = 8
# the resources a comparison sentence names next to the quality, where measured
SENTENCE_RESOURCES = {"peak_mem_mb": "memory", "train_s": "training time",
                      "adapter_mb": "adapter size", "latency_ms_per_token_merged": "latency",
                      "latency_ms_per_example_merged": "latency"}


class Analysis(NamedTuple):
    """What :func:`analyse` found; each table is written as ``stats/<name>.csv``."""

    configurations: pd.DataFrame
    comparisons: pd.DataFrame
    importance: pd.DataFrame
    anova: pd.DataFrame
    recommendations: pd.DataFrame
    notes: list[str]


def analyse(design: Design, interactions=(), optuna_study=None, objectives=None) -> Analysis:
    """Every statistic of the report, from the design's runs (see each module)."""
    empty = not len(design.runs)
    imp, notes = (importance(design, optuna_study, objectives) if not empty
                  else (pd.DataFrame(columns=IMPORTANCE_COLUMNS), []))
    table, more = (anova(design, interactions) if not empty
                   else (pd.DataFrame(columns=ANOVA_COLUMNS), []))
    return Analysis(
        configurations=configurations(design),
        comparisons=comparisons(design),
        importance=imp,
        anova=table,
        recommendations=recommendations(design),
        notes=notes + more,
    )


def write(found: Analysis, directory: Path) -> None:
    """``configurations.csv``, ``comparisons.csv``, ``importance.csv``, ``anova.csv`` and
    ``recommendations.csv`` under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("configurations", "comparisons", "importance", "anova", "recommendations"):
        getattr(found, name).to_csv(directory / f"{name}.csv", index=False)


def _resources_text(comps: pd.DataFrame, row: pd.Series, design: Design) -> str:
    parts = []
    named = (SENTENCE_RESOURCES if design.source == "study"
             else {r: r for r in list(design.resources)[:3]})  # a table's own names
    for metric, words in named.items():
        if metric not in design.resources:
            continue
        same = comps[(comps["factor"] == row["factor"]) & (comps["level_a"] == row["level_a"])
                     & (comps["level_b"] == row["level_b"]) & (comps["metric"] == metric)]
        if len(same) and pd.notna(same["median_ratio"].iloc[0]):
            parts.append(f"{same['median_ratio'].iloc[0]:.2f}x the {words}")
    if not parts:
        return ""
    return " at " + ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]


def _comparison_sentence(comps: pd.DataFrame, row: pd.Series, design: Design, q: str) -> str:
    f, a, b, n = row["factor"], row["level_a"], row["level_b"], int(row["n_pairs"])
    ratio = row["median_ratio"]
    if pd.isna(ratio):
        what = f"{q} differs by {row['mean_diff']:+.3g} on average"
    elif design.quality[q]:
        what = f"keeps {100 * ratio:.1f}% of {f} {a}'s {q}"
    else:
        what = f"has {ratio:.3g}x the {q} of {f} {a}"
    ci = ("" if pd.isna(row["ci_low"]) else
          f", mean difference {row['mean_diff']:+.3g}, 95% CI [{number(row['ci_low'], 3)}, "
          f"{number(row['ci_high'], 3)}]")
    verdict = "significant" if row["p_holm"] < ALPHA else "not significant"
    return (
        f"{f} {b} {what} (median over {n} pairs{ci}){_resources_text(comps, row, design)}; the "
        f"{q} difference is {verdict} (Wilcoxon p = {number(row['wilcoxon_p'], 2)}, "
        "Holm-corrected "
        f"p = {number(row['p_holm'], 2)}, rank-biserial r = {row['effect_size']:+.2f})."
    )


def _no_pairs_sentence(design: Design) -> str:
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


def sentences(design: Design, found: Analysis) -> list[str]:
    """The answer in words: the best configuration, then the comparisons of the leading quality
    metric (the most significant first), or why there are none."""
    if not design.quality or not len(design.runs):
        return ["No finished run has a quality metric: there is nothing to answer yet."]
    q = next(iter(design.quality))
    out = []
    recs = found.recommendations
    if len(recs):
        top = recs.iloc[0]
        ci = ("" if pd.isna(top["ci_low"]) else
              f", 95% CI [{number(top['ci_low'], 4)}, {number(top['ci_high'], 4)}]")
        size = f" at data size {top['data_size']}" if "data_size" in recs.columns else ""
        out.append(f"Best {q}{size}: {top['configuration']}, {number(top[q], 4)}{ci} "
                   f"({top['n']} run{'s' if top['n'] != 1 else ''}).")
    comps = found.comparisons
    lead = comps[comps["metric"] == q].sort_values(["p_holm", "wilcoxon_p"], kind="stable")
    if not len(lead):
        return [*out, _no_pairs_sentence(design)]
    out += [_comparison_sentence(comps, r, design, q)
            for _, r in lead.head(MAX_SENTENCES).iterrows()]
    if len(lead) > MAX_SENTENCES:
        out.append(f"{len(lead) - MAX_SENTENCES} more comparisons of {q} are in "
                   "stats/comparisons.csv.")
    return out
