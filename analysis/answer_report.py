"""The sections a report leads with (the answer, recommendations, importance, factor effects)
and its Pareto panels, shared by a study's report (analysis.report) and the report of an
external results table (analysis.table_report).

    sections = leading_sections(design, found, figs, by_model=table(...))
    sections.append(pareto_section(trials, figs, pairs, lead=wanted))
"""

from __future__ import annotations

import pandas as pd

from analysis import figure_data, render
from analysis.answer import Analysis, sentences
from analysis.design import Design
from analysis.page import Figures, Section, section
from analysis.stats import MIN_PAIRS, level_means
from analysis.tables import Table, table

MAX_EFFECT_ROWS = 3  # quality metrics drawn in the factor-effects figure


def _table_or_none(frame: pd.DataFrame, left: tuple[str, ...], wrap: bool = False):
    return table(frame, left=left, wrap=wrap) if len(frame) else None


def _importance(found: Analysis) -> Table | None:
    """One row per factor, a column per metric and evaluator (fANOVA, PED-ANOVA)."""
    if not len(found.importance):
        return None
    wide = found.importance.pivot_table(index="factor", columns=["metric", "evaluator"],
                                        values="importance")
    wide.columns = [f"{m} {e}" for m, e in wide.columns]
    return table(wide.reset_index(), left=("factor",))


def _effects_figure(design: Design, figs: Figures):
    """Each factor's level means per quality metric (the first MAX_EFFECT_ROWS), or None when
    no factor has two levels among the finished runs."""
    rows = []
    for metric in list(design.quality)[:MAX_EFFECT_ROWS]:
        row = []
        for factor in design.factors:
            levels, points = level_means(design, factor, metric)
            if len(levels) > 1:
                row.append((factor, metric, levels, points))
        if row:
            rows.append(row)
    if not rows:
        return None
    return figs.add(render.effects_figure(rows), "factors", "quality by factor level")


def _recommendations(found: Analysis) -> dict:
    """The recommendation table, and apart (a long command cannot fit a table's cell) the
    command that re-runs each recommended configuration, with the priorities it answers."""
    recs = found.recommendations
    if not len(recs):
        return {"table": None, "commands": []}
    shown = recs.drop(columns=["command"], errors="ignore")
    commands: dict[str, list[str]] = {}
    for _, row in recs.iterrows():
        if isinstance(row.get("command"), str) and row["command"] not in ("", "-"):  # "-": none
            commands.setdefault(row["command"], []).append(str(row["priority"]))
    return {"table": table(shown, left=("priority", "configuration"), wrap=True),
            "commands": [("; ".join(p), c) for c, p in commands.items()]}


def leading_sections(design: Design, found: Analysis, figs: Figures,
                     by_model: Table | None = None) -> list[Section]:
    """The answer, the recommendations, importance and factor effects (with ``by_model``: each
    model's median and best, where a study compares models)."""
    configs = found.configurations
    return [
        section("answer", "The answer", sentences=sentences(design, found), notes=found.notes,
                min_pairs=MIN_PAIRS),
        section("recommendations", "Recommendations", **_recommendations(found)),
        section("importance", "Parameter importance", table=_importance(found)),
        section("effects", "Factor effects", figure=_effects_figure(design, figs),
                anova=_table_or_none(found.anova, ("metric", "term")),
                comparisons=_table_or_none(found.comparisons, ("factor", "metric")),
                configurations=_table_or_none(configs, ("config", "label", "metric")),
                configuration_count=configs["config"].nunique() if len(configs) else 0,
                by_model=by_model),
    ]


def pareto_section(
    trials: pd.DataFrame, figs: Figures, pairs: list[tuple[str, str]],
    lead: set[tuple[str, str]] | None = None, include_stopped: bool = False,
    larger_better: dict[str, bool] | None = None,
) -> Section:
    """"Quality vs resources": a panel (figure_data.pareto_info, drawn by render.pareto_figure)
    per (quality, resource) pair with points; the pairs in ``lead`` shown first (by default the
    first drawn), every other behind a disclosure. ``larger_better``: each metric's direction,
    for an external table's metrics (study.metrics's by default)."""
    panels = []
    for y, x in pairs:
        directions = (larger_better[x], larger_better[y]) if larger_better else None
        info = figure_data.pareto_info(trials, x, y, include_stopped, directions)
        if not len(info.points):
            continue
        caption = f"{y} vs {x}" + (" (log scale)" if info.log_x else "")
        panels.append(((y, x), figs.add(render.pareto_figure(info), f"pareto_{y}_{x}", caption)))
    lead = lead if lead is not None else {pair for pair, _ in panels[:1]}
    return section("pareto", "Quality vs resources",
                   lead=[f for pair, f in panels if pair in lead],
                   rest=[f for pair, f in panels if pair not in lead])
