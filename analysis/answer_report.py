"""The sections a report leads with (the answer, recommendations, importance, factor effects),
shared by a study's report and the report of an external results table.

    python -m analysis report --table runs.csv --factors rank,bits --quality accuracy:max \\
        --resources peak_gb --replicate seed --out report/
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import render
from analysis.answer import Analysis, analyse, sentences, write
from analysis.design import Design
from analysis.pareto import pareto_mask
from analysis.stats import MIN_PAIRS, level_means
from analysis.tables import html_table

MAX_EFFECT_ROWS = 3  # quality metrics drawn in the factor-effects figure


def _details(summary: str, content: str) -> str:
    return f"<details><summary>{html.escape(summary)}</summary>{content}</details>"


def _answer(design: Design, found: Analysis) -> str:
    items = "".join(f"<li>{html.escape(s)}</li>" for s in sentences(design, found))
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in found.notes)
    return (
        f"<ul class='answer'>{items}</ul><p>Pairs: runs that agree on every other factor and "
        f"the replicate; a comparison needs {MIN_PAIRS} pairs. Intervals: 95% (bootstrap BCa of "
        "the mean paired difference; t-interval of a configuration's mean). Every comparison "
        "is in <code>stats/comparisons.csv</code>.</p>"
        + (_details("notes", f"<ul class='warn'>{notes}</ul>") if notes else "")
    )


def _recommendations(found: Analysis) -> str:
    table = found.recommendations
    if not len(table):
        return "<p>No configuration has a quality value yet.</p>"
    columns = list(table.columns)
    return (
        "<p>Each priority's configuration by its mean over its finished runs (n), with the 95% "
        "t-interval of the quality; <code>stats/recommendations.csv</code>.</p>"
        + html_table(table, columns, ("priority", "configuration", "command"), wrap=True)
    )


def _importance(found: Analysis) -> str:
    table = found.importance
    if not len(table):
        return "<p>No importance could be computed.</p>"
    wide = table.pivot_table(index="factor", columns=["metric", "evaluator"], values="importance")
    wide.columns = [f"{m} {e}" for m, e in wide.columns]
    wide = wide.reset_index()
    return (
        "<p>Optuna's fANOVA (the share of the objective's variance each factor explains, by a "
        "random forest) and PED-ANOVA (how much each factor's distribution in the best 10% of "
        "configurations differs from all), each normalised to sum to 1: which factors matter, "
        "not in which direction; with few configurations they are rough.</p>"
        + html_table(wide, list(wide.columns), ("factor",))
    )


def _effects(design: Design, found: Analysis, figs) -> str:
    rows = []
    for metric in list(design.quality)[:MAX_EFFECT_ROWS]:
        row = []
        for factor in design.factors:
            levels, points = level_means(design, factor, metric)
            if len(levels) > 1:
                row.append((factor, metric, levels, points))
        if row:
            rows.append(row)
    parts = []
    if rows:
        parts.append(figs.add(render.effects_figure(rows), "factors", "quality by factor level"))
    else:
        parts.append("<p>No factor has two levels among the finished runs.</p>")
    if len(found.anova):
        parts.append(
            "<p>Main-effects OLS of each metric on the factors (categorical) and its type-II "
            "ANOVA (statsmodels); <code>stats/anova.csv</code>.</p>"
            + _details("ANOVA tables", html_table(found.anova, list(found.anova.columns),
                                                   ("metric", "term")))
        )
    comps = found.comparisons
    if len(comps):
        parts.append(_details(f"all {len(comps)} paired comparisons",
                              html_table(comps, list(comps.columns), ("factor", "metric"))))
    configs = found.configurations
    if len(configs):
        count = configs["config"].nunique()
        parts.append(_details(f"every configuration's mean and interval ({count})",
                              html_table(configs, list(configs.columns),
                                         ("config", "label", "metric"))))
    return "".join(parts)


def leading_sections(design: Design, found: Analysis, figs) -> list[tuple[str, str]]:
    """(heading, HTML) of the answer, the recommendations, importance and factor effects."""
    return [
        ("The answer", _answer(design, found)),
        ("Recommendations", _recommendations(found)),
        ("Parameter importance", _importance(found)),
        ("Factor effects", _effects(design, found, figs)),
    ]


def _front_panels(design: Design, figs) -> str:
    """Each quality metric against each resource: the runs and the Pareto front."""
    first = None
    rest = []
    for y, y_max in design.quality.items():
        for x, x_max in design.resources.items():
            runs = design.runs.dropna(subset=[x, y])
            if not len(runs):
                continue
            mask = pareto_mask(runs[[y, x]].to_numpy(float), [y_max, x_max])
            fig = render.front_figure(runs[x].to_numpy(float), runs[y].to_numpy(float),
                                      np.asarray(mask, bool), x, y, x_max)
            item = figs.add(fig, f"pareto_{y}_{x}", f"{y} vs {x}")
            if first is None:
                first = item
            else:
                rest.append(item)
    if first is None:
        return "<p>No run has both a quality and a resource value.</p>"
    more = _details("the other metric pairs", f"<div class='grid'>{''.join(rest)}</div>")
    return first + (more if rest else "")


def write_table_report(
    design: Design, out: Path, figs, interactions=()
) -> tuple[str, pd.DataFrame]:
    """The body of an external table's report (see module); writes ``stats/`` under ``out``."""
    found = analyse(design, interactions)
    write(found, out / "stats")
    sections = leading_sections(design, found, figs)
    sections.append(("Quality vs resources", _front_panels(design, figs)))
    runs = design.runs.drop(columns=["command"])
    columns = [c for c in runs.columns if c not in ("study",)]
    sections.append(("All runs", "<p>Every column is in trials.csv next to this file.</p>"
                     + html_table(runs, columns, ("config", "label", *design.factors))))
    body = "".join(f"<h2>{html.escape(h)}</h2>{c}" for h, c in sections)
    return body, runs
