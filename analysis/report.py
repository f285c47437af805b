"""`python -m analysis report DIR [DIR ...]`: a self-contained HTML report, figures and tables.

    python -m analysis report results/demo --out results/demo/report
    python -m analysis report results/q4 results/q16 --out reports/4-vs-16   # overlaid studies

Writes ``report.html`` (images embedded as base64: it opens from disk, mailed or copied alone),
``figures/*.png`` and ``figures/*.svg``, ``trials.csv`` (one row per trial, with the Pareto flag
over eval_loss and peak_mem_mb, and over each classification metric the trials have) and
``curves.csv`` (every evaluation of every trial) and ``stats/`` (``analysis.answer``: each
configuration's interval, the paired comparisons per factor, importances, ANOVA tables and the
recommendations). The page leads with the answer in sentences, the recommendation table, the
importances and the factor effects, then the Pareto panels of the studies' objectives (the other
metric pairs behind a disclosure), the study-specific sections and every trial. The report shows
the quality metrics the studies have (a classify study: accuracy and F1, with the best trials'
confusion matrices). The page is ``analysis/templates/report.html.j2`` (see analysis.page);
``analysis.table_report`` makes the same leading sections from any tool's results table
(``python -m analysis report --table``).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pandas as pd

from analysis import figure_data, render
from analysis.answer import analyse, write
from analysis.answer_report import leading_sections, pareto_section
from analysis.classify import confusion_infos
from analysis.design import from_trials
from analysis.focus import Focus, parse_focus
from analysis.load import StudyData, load_studies
from analysis.page import Figures, Section, publish, render_page, section
from analysis.result_files import read_examples
from analysis.rungs import rung_sections
from analysis.selection import (
    UNTRAINED_BASE,
    classify_metric,
    front_hypervolumes,
    front_rows,
    is_untrained_base,
    label,
    maximize,
    pareto_column,
    present,
    several_models,
    with_pareto_column,
)
from analysis.table_input import parse_interactions
from analysis.tables import Table, table
from study import metrics as M
from study import record
from study.outdir import check_output_dir

# the tables' metric columns; each table shows those the trials have (see _table_metrics)
TABLE_METRICS = [
    M.EVAL_LOSS,
    M.TEST_LOSS,
    M.EXACT_MATCH,
    M.TEST_EXACT_MATCH,
    *(name for m in M.CLASSIFY_EVAL for name in (m, M.TEST_OF[m])),
    *(name for m in (M.DPO_LOSS, M.REWARD_ACCURACY, M.REWARD_MARGIN)
      for name in (m, M.TEST_OF[m])),
    M.PEAK_MEM_MB,
    M.TRAIN_S,
    M.TRAINABLE_PARAMS,
    M.LATENCY_MERGED,
    M.LATENCY_EXAMPLE_MERGED,
]
UNTRAINED_NOTE = (
    f"{UNTRAINED_BASE}: a classify study's base trial scores the pretrained body through a "
    "score head that was never trained (random), so its quality is chance-like: it is not the "
    "pretrained model's skill."
)

UNNAMED_NOTE = (f"Class names unknown (no readable {record.LABELS}): class ids in the matrix's "
                "order.")


def _table_metrics(trials: pd.DataFrame) -> list[str]:
    """TABLE_METRICS the trials have a value of (a classify study has no exact_match column)."""
    return present(trials, TABLE_METRICS)


def _front_qualities(data: StudyData, trials: pd.DataFrame) -> list[str]:
    """The quality metrics of the report's Pareto sets: eval_loss, and each study's first
    classification metric (see selection.classify_metric), those the trials have."""
    picked = [classify_metric(info) for info in data.studies.values()]
    return present(trials, dict.fromkeys([M.EVAL_LOSS, *picked])) or [M.EVAL_LOSS]


def _pareto_pairs(trials: pd.DataFrame, objectives: list[str]):
    """Every (quality, resource) pair the trials have, and those of the studies' objectives (a
    quality against peak memory when only quality is optimised): the panels shown first."""
    qualities = present(trials, figure_data.FRONT_QUALITY)
    resources = figure_data.front_resources(trials)
    wanted = {(y, x) for y in objectives if y in qualities for x in objectives if x in resources}
    if not wanted and qualities:
        first = next((o for o in objectives if o in qualities), qualities[0])
        wanted = {(first, M.PEAK_MEM_MB)}
    return [(y, x) for y in qualities for x in resources], wanted


def _by_model(trials: pd.DataFrame) -> Table | None:
    """Where the studies have several models: each model's median and best quality."""
    if "model" not in figure_data.shown_factors(trials):
        return None
    by_model = figure_data.factor_table(trials, "model",
                                        present(trials, figure_data.FRONT_QUALITY))
    return table(by_model, left=("study", "model"))


def _examples(trials: pd.DataFrame, found: list[str], k: int = 3) -> list[tuple[str, Table]]:
    """Generations of the best finished trials on eval_loss (and exact_match if measured):
    (the trial and what it scored, its prompts, targets and outputs)."""
    parts, shown = [], set()
    by_model = several_models(trials)
    for metric in (M.EVAL_LOSS, M.EXACT_MATCH):
        pool = trials[(trials["status"] == "finished") & trials[metric].notna()]
        best = pool.sort_values(metric, ascending=not maximize(metric)).head(k)
        for _, row in best.iterrows():
            key = (row["study"], row["group"], row["trial"])
            if key in shown:
                continue
            shown.add(key)
            examples = pd.DataFrame(read_examples(row["trial_dir"], found))
            if examples.empty:
                continue
            title = (f"{row['study']}/{row['group']}/{row['trial']}: "
                     f"{label(row, by_model, detail=True)} ({metric} {M.number(row[metric])})")
            cols = [c for c in ("prompt", "target", "output") if c in examples.columns]
            parts.append((title, table(examples, cols, tuple(cols), wrap=True)))
    return parts


def _front_section(
    trials: pd.DataFrame, y: str, columns: list[str], include_stopped: bool
) -> Section:
    """The Pareto set of ``y`` against peak memory; for overlaid studies the area each front
    dominates, against one shared reference (the worst of all studies)."""
    front = front_rows(trials, M.PEAK_MEM_MB, y, include_stopped, by_study=True)
    volumes, reference = None, None
    if trials["study"].nunique() > 1:
        volumes, reference = front_hypervolumes(trials, M.PEAK_MEM_MB, y, include_stopped)
    return section("front", f"Pareto set: {y} vs peak_mem_mb", flag=pareto_column(y), y=y,
                   table=table(front, columns, ("study", "group", "trial", "label", "status")),
                   volumes=volumes, reference=reference)


def _studies(data: StudyData) -> list[dict]:
    """Each study's trial counts, objectives, date, command and search space."""
    studies = []
    for name, info in data.studies.items():
        mine = data.trials[data.trials["study"] == name]
        counts = mine.groupby(["group", "status"]).size()
        studies.append({
            "name": name,
            "counts": ", ".join(f"{g} {s}: {n}" for (g, s), n in counts.items()) or "no trials",
            "objectives": ", ".join(info.get("objectives", [])) or "-",
            "created": str(info.get("created", "-")),
            "command": shlex.join(info.get("command", [])) or f"({record.STUDY} missing)",
            "space": json.dumps(info.get("space", {}), indent=1),
        })
    return studies


def build_report(
    dirs: list[str | Path],
    out: str | Path,
    curves_by: str = "rank",
    include_stopped: bool = False,
    interactions: list[tuple[str, ...]] | str | None = None,
    focus: str | None = None,
    reference: list[str] | None = None,
) -> Path:
    """Load the studies, write every figure, table, ``stats/`` and report.html under ``out``
    (atomically, see :func:`publish`); return the report's path. ``focus`` and ``reference``:
    --focus and --reference (``analysis.focus.parse_focus``).

    Raises:
        NotAStudyError: a directory that is not a study. ValueError: an unknown factor or
            interaction, or an ``out`` that cannot be written or holds other files.
    """
    if curves_by not in figure_data.FACTORS:
        factors = ", ".join(figure_data.FACTORS)
        raise ValueError(f"unknown factor {curves_by!r}; use one of {factors}")
    check_output_dir(Path(out), "--out")
    data = load_studies(dirs)
    design = from_trials(data.trials, data.studies)
    if isinstance(interactions, str) or interactions is None:
        interactions = parse_interactions(interactions, design.factors)
    asked = parse_focus(design, focus, reference)
    return publish(out, lambda tmp: _write_report(
        data, tmp, curves_by, include_stopped, design, interactions, [Path(d) for d in dirs],
        asked))


def _optuna_study(dirs: list[Path]):
    """The one study's Optuna storage (importances read it), or None for pooled studies."""
    if len(dirs) != 1:
        return None
    from study import journal

    try:
        return journal.load(dirs[0])
    except record.RecordError:
        return None


def _write_report(data: StudyData, out: Path, curves_by: str, include_stopped: bool,
                  design, interactions, dirs: list[Path], focus: Focus) -> None:
    trials = with_pareto_column(data.trials)
    trials.to_csv(out / "trials.csv", index=False)
    data.curves.to_csv(out / "curves.csv", index=False)
    by_model = several_models(trials)  # labels name the model where the trials have several
    trials["label"] = [label(r, by_model) for _, r in trials.iterrows()]
    figs = Figures(out)
    objectives = list(
        dict.fromkeys(o for i in data.studies.values() for o in i.get("objectives", [])))
    optuna_study = _optuna_study(dirs)
    found = analyse(design, interactions, optuna_study, objectives if optuna_study else None,
                    focus)
    write(found, out / "stats")
    sections = leading_sections(design, found, figs, by_model=_by_model(trials))
    pairs, lead = _pareto_pairs(trials, objectives)
    sections.append(pareto_section(trials, figs, pairs, lead, include_stopped))
    # both read trial files: their warnings go in the list of problems (_closing_sections)
    examples = _examples(trials, data.warnings)
    confusions = confusion_infos(trials, data.studies, data.warnings)
    metrics = _table_metrics(trials)
    columns = ["study", "group", "trial", "label", "status", *metrics]
    for y in _front_qualities(data, trials):
        sections.append(_front_section(trials, y, columns, include_stopped))
    if confusions:
        sections.append(section("confusion", "Confusion matrices of the best trials",
                                infos=confusions, unnamed=UNNAMED_NOTE))
    sections += _figure_sections(trials, data.curves, figs, curves_by)
    sections += rung_sections(trials, data.curves, data.studies)
    sections.append(section("examples", "Generations of the best trials", examples=examples))
    sections += _closing_sections(data, trials, metrics)
    title = "LoRA study report: " + ", ".join(data.studies)
    (out / "report.html").write_text(render_page(title, len(trials), sections), encoding="utf-8")


def _figure_sections(
    trials: pd.DataFrame, curves: pd.DataFrame, figs: Figures, curves_by: str
) -> list[Section]:
    """The learning curves and the LoRA vs full fine-tuning panel, those the trials can draw."""
    sections = []
    # a classify study's curves may have no eval_loss: draw the first quality it has
    curve_metric = next(iter(present(curves, figure_data.FRONT_QUALITY)), None)
    if len(curves) and curve_metric:
        info = figure_data.curves_info(trials, curves, curves_by, curve_metric)
        what = "" if curve_metric == M.EVAL_LOSS else f" of {curve_metric}"
        caption = f"learning curves{what} coloured by {curves_by}"
        figure = figs.add(render.curves_figure(info), "curves", caption)
        sections.append(section("figure", "Learning curves", figure=figure))
    seeds = figure_data.seeds_info(trials)
    if seeds.labels:
        caption = "LoRA vs full fine-tuning: parameters, step time, memory, quality"
        figure = figs.add(render.seeds_figure(seeds), "seeds", caption)
        sections.append(section("figure", "LoRA vs full fine-tuning", figure=figure))
    return sections


def _closing_sections(data: StudyData, trials: pd.DataFrame, metrics: list[str]) -> list[Section]:
    """The errored trials, the studies, the problems found while loading and every trial."""
    sections = []
    errored = trials[trials["status"] == "errored"]
    if len(errored):
        cols = ["study", "group", "trial", "label", "status_step", "status_reason"]
        sections.append(section("errored", "Errored trials",
                                table=table(errored, cols, tuple(cols), wrap=True)))
    untrained = any(is_untrained_base(r) for _, r in data.trials.iterrows())
    sections.append(section("studies", "Studies", studies=_studies(data),
                            untrained_note=UNTRAINED_NOTE if untrained else None))
    if data.warnings:
        sections.append(section("problems", "Problems found while loading",
                                warnings=data.warnings))
    all_cols = ["study", "group", "trial", "label", "status", "status_step", *metrics]
    left = ("study", "group", "trial", "label", "status")
    sections.append(section("runs", "All trials", table=table(trials, all_cols, left)))
    return sections
