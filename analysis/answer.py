"""The report's answer: the statistics of a Design, written under ``stats/`` and told in words.

    found = analyse(design, interactions=[("rank", "targets")], optuna_study=study,
                    focus=Focus(["method"], {"method": "LoRA"}))
    write(found, out / "stats")      # configurations, comparisons, focus, importance, anova, ...
    sentences(design, found)         # plain sentences, the report's first section

The words (``analysis.answer_text``) come from the tables: the first line names the best
configuration (at the largest data size first), then a paragraph per focus factor (each level
against the reference, ``stats/focus.csv``, turned round from ``stats/comparisons.csv``), then
one per other factor, the most important first. A sentence says a difference is significant when
Holm's corrected Wilcoxon p-value is below 0.05, says both tests where they disagree, and says
nothing of a comparison with fewer than 5 pairs (it is not in the table).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pandas as pd

from analysis import answer_text
from analysis.by_level import by_level
from analysis.design import Design
from analysis.effects import ANOVA_COLUMNS, IMPORTANCE_COLUMNS, anova, importance
from analysis.focus import Focus, oriented, resolve
from analysis.recommend import recommendations
from analysis.stats import comparisons, configurations

TABLES = ("configurations", "comparisons", "focus", "focus_by_level", "importance", "anova",
          "recommendations")


class Analysis(NamedTuple):
    """What :func:`analyse` found; each table of :data:`TABLES` is written as
    ``stats/<name>.csv``. ``focus_factors`` lead the answer, ``other_factors`` follow (by
    importance), each compared with its ``reference`` level."""

    configurations: pd.DataFrame
    comparisons: pd.DataFrame
    importance: pd.DataFrame
    anova: pd.DataFrame
    recommendations: pd.DataFrame
    notes: list[str]
    focus: pd.DataFrame
    focus_by_level: pd.DataFrame
    focus_factors: list[str]
    other_factors: list[str]
    reference: dict


def analyse(design: Design, interactions=(), optuna_study=None, objectives=None,
            focus: Focus | None = None) -> Analysis:
    """Every statistic of the report, from the design's runs (see each module); ``focus``: what
    --focus and --reference asked (``analysis.focus.parse_focus``; default every factor)."""
    empty = not len(design.runs)
    imp, notes = (importance(design, optuna_study, objectives) if not empty
                  else (pd.DataFrame(columns=IMPORTANCE_COLUMNS), []))
    table, more = (anova(design, interactions) if not empty
                   else (pd.DataFrame(columns=ANOVA_COLUMNS), []))
    comps = comparisons(design)
    leads, others, reference = resolve(design, focus or Focus(), imp)
    turned = oriented(design, comps, [*leads, *others], reference, leads)
    q = next(iter(design.quality), None)
    return Analysis(
        configurations=configurations(design),
        comparisons=comps,
        importance=imp,
        anova=table,
        recommendations=recommendations(design),
        notes=list(dict.fromkeys(notes + more)),  # the left-out runs: one note for both
        focus=turned,
        focus_by_level=by_level(design, turned, q),
        focus_factors=leads,
        other_factors=others,
        reference=reference,
    )


def write(found: Analysis, directory: Path) -> None:
    """``stats/<name>.csv`` for each table of :data:`TABLES` under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        getattr(found, name).to_csv(directory / f"{name}.csv", index=False)


def sentences(design: Design, found: Analysis) -> list[str]:
    """The answer in words: the best configuration, then a paragraph per focus factor, then one
    per other factor (see module), or why nothing is compared."""
    if not design.quality or not len(design.runs):
        return ["No finished run has a quality metric: there is nothing to answer yet."]
    best = answer_text.best_line(design, found.recommendations)
    out = [best] if best else []
    if not len(found.comparisons[found.comparisons["metric"] == next(iter(design.quality))]):
        return [*out, answer_text.no_pairs(design)]
    for factor in (*found.focus_factors, *found.other_factors):
        said = answer_text.paragraph(design, found.focus, found.focus_by_level, factor,
                                     found.reference[factor], factor in found.focus_factors)
        if said:
            out.append(said)
    return out
