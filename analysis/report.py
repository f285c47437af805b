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
confusion matrices). ``build_table_report`` makes the same leading sections from any tool's
results table (``python -m analysis report --table``).
"""

from __future__ import annotations

import html
import json
import shlex
from pathlib import Path

import pandas as pd

from analysis import figure_data, render
from analysis.answer import analyse, write
from analysis.answer_report import leading_sections, write_table_report
from analysis.classify import confusion_infos
from analysis.design import from_trials
from analysis.load import StudyData, load_studies
from analysis.page import Figures, page, publish
from analysis.result_files import read_examples
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
from analysis.table_input import from_table, parse_interactions
from analysis.tables import confusion_html, html_table
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


def _table_metrics(trials: pd.DataFrame) -> list[str]:
    """TABLE_METRICS the trials have a value of (a classify study has no exact_match column)."""
    return present(trials, TABLE_METRICS)


def _front_qualities(data: StudyData, trials: pd.DataFrame) -> list[str]:
    """The quality metrics of the report's Pareto sets: eval_loss, and each study's first
    classification metric (see selection.classify_metric), those the trials have."""
    picked = [classify_metric(info) for info in data.studies.values()]
    return present(trials, dict.fromkeys([M.EVAL_LOSS, *picked])) or [M.EVAL_LOSS]


def _pareto_section(
    trials: pd.DataFrame, figs: Figures, include_stopped: bool, objectives: list[str]
) -> str:
    """The panels of the studies' objectives (a quality against peak memory when only quality
    is optimised) first; every other quality / resource pair behind a disclosure."""
    lead, rest = [], []
    qualities = present(trials, figure_data.FRONT_QUALITY)
    resources = figure_data.front_resources(trials)
    wanted = {(y, x) for y in objectives if y in qualities for x in objectives if x in resources}
    if not wanted and qualities:
        first = next((o for o in objectives if o in qualities), qualities[0])
        wanted = {(first, M.PEAK_MEM_MB)}
    for y in qualities:
        for x in resources:
            info = figure_data.pareto_info(trials, x, y, include_stopped)
            if not len(info.points):
                continue
            caption = f"{y} vs {x}" + (" (log scale)" if info.log_x else "")
            item = figs.add(render.pareto_figure(info), f"pareto_{y}_{x}", caption)
            (lead if (y, x) in wanted else rest).append(item)
    more = (f"<details><summary>the other metric pairs ({len(rest)})</summary><div "
            f"class='grid'>{''.join(rest)}</div></details>") if rest else ""
    return f"<div class='grid'>{''.join(lead)}</div>{more}"


def _by_model(trials: pd.DataFrame) -> str:
    """Where the studies have several models: each model's median and best quality."""
    if "model" not in figure_data.shown_factors(trials):
        return ""
    table = figure_data.factor_table(trials, "model", present(trials, figure_data.FRONT_QUALITY))
    return (
        "<h3>By model</h3><p>Finished LoRA trials of each model: the median and the best of "
        "each quality metric (eval split).</p>"
        + html_table(table, list(table.columns), ("study", "model"))
    )


def _examples_section(trials: pd.DataFrame, found: list[str], k: int = 3) -> str:
    """Generations of the best finished trials on eval_loss (and exact_match if measured)."""
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
            title = (
                f"{row['study']}/{row['group']}/{row['trial']}: "
                f"{label(row, by_model, detail=True)} "
                f"({metric} {row[metric]:.4g})"
            )
            cols = [c for c in ("prompt", "target", "output") if c in examples.columns]
            parts.append(
                f"<h3>{html.escape(title)}</h3>"
                + html_table(examples, cols, tuple(cols), wrap=True)
            )
    return "".join(parts) or "<p>No generation examples.</p>"


def _hypervolume_text(trials: pd.DataFrame, include_stopped: bool, y: str) -> str:
    """For overlaid studies: the area each front dominates, against one shared reference."""
    if trials["study"].nunique() < 2:
        return ""
    volumes, (ref_y, ref_x) = front_hypervolumes(trials, M.PEAK_MEM_MB, y, include_stopped)
    items = "".join(f"<li>{html.escape(s)}: {v:.4g}</li>" for s, v in volumes.items())
    return (
        f"<p>Hypervolume of each study's front (larger is better; reference: {y} "
        f"{ref_y:.4g}, peak_mem_mb {ref_x:.4g}, the worst of all studies):</p><ul>{items}</ul>"
    )


def _front_section(
    trials: pd.DataFrame, y: str, columns: list[str], include_stopped: bool
) -> tuple[str, str]:
    """The heading and table of the Pareto set of ``y`` against peak memory."""
    front = front_rows(trials, M.PEAK_MEM_MB, y, include_stopped, by_study=True)
    return (
        f"Pareto set: {y} vs peak_mem_mb",
        "<p>Finished trials no other finished trial of their study beats on both (flagged in "
        f"trials.csv as <code>{pareto_column(y)}</code>); test metrics are on the held-out "
        "split.</p>"
        + html_table(front, columns, ("study", "group", "trial", "label", "status"))
        + _hypervolume_text(trials, include_stopped, y),
    )


def _confusion_section(infos: list) -> str:
    """The test confusion matrices of each classify study's best trials."""
    return (
        "<p>The best finished trials of each classify study by its first classification "
        "objective (eval split; accuracy if it has none); counts on the held-out test split, "
        "a row per true class, a column per predicted class.</p>"
        + "".join(confusion_html(info) for info in infos)
    )


def _studies_section(data: StudyData) -> str:
    parts = []
    for name, info in data.studies.items():
        mine = data.trials[data.trials["study"] == name]
        counts = mine.groupby(["group", "status"]).size()
        text = ", ".join(f"{g} {s}: {n}" for (g, s), n in counts.items()) or "no trials"
        command = shlex.join(info.get("command", [])) or f"({record.STUDY} missing)"
        space = json.dumps(info.get("space", {}), indent=1)
        parts.append(
            f"<h3>{html.escape(name)}</h3><p>{html.escape(text)}; objectives "
            f"{html.escape(', '.join(info.get('objectives', [])) or '-')}; created "
            f"{html.escape(str(info.get('created', '-')))}</p>"
            f"<pre>{html.escape(command)}</pre><details><summary>search space</summary>"
            f"<pre>{html.escape(space)}</pre></details>"
        )
    if any(is_untrained_base(r) for _, r in data.trials.iterrows()):
        parts.append(f"<p class='warn'>{html.escape(UNTRAINED_NOTE)}</p>")
    return "".join(parts)


def build_report(
    dirs: list[str | Path],
    out: str | Path,
    curves_by: str = "rank",
    include_stopped: bool = False,
    interactions: list[tuple[str, ...]] | str | None = None,
) -> Path:
    """Load the studies, write every figure, table, ``stats/`` and report.html under ``out``
    (atomically, see :func:`publish`); return the report's path.

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
    return publish(out, lambda tmp: _write_report(
        data, tmp, curves_by, include_stopped, design, interactions, [Path(d) for d in dirs]))


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
                  design, interactions, dirs: list[Path]) -> None:
    trials = with_pareto_column(data.trials)
    trials.to_csv(out / "trials.csv", index=False)
    data.curves.to_csv(out / "curves.csv", index=False)
    by_model = several_models(trials)  # labels name the model where the trials have several
    trials["label"] = [label(r, by_model) for _, r in trials.iterrows()]
    figs = Figures(out)
    objectives = list(
        dict.fromkeys(o for i in data.studies.values() for o in i.get("objectives", [])))
    optuna_study = _optuna_study(dirs)
    found = analyse(design, interactions, optuna_study, objectives if optuna_study else None)
    write(found, out / "stats")
    sections = leading_sections(design, found, figs)
    sections[-1] = (sections[-1][0], sections[-1][1] + _by_model(trials))
    sections.append(
        ("Quality vs resources", _pareto_section(trials, figs, include_stopped, objectives)))
    # both read trial files: their warnings go in the list of problems (_closing_sections)
    examples = _examples_section(trials, data.warnings)
    confusions = confusion_infos(trials, data.studies, data.warnings)
    metrics = _table_metrics(trials)
    columns = ["study", "group", "trial", "label", "status", *metrics]
    for y in _front_qualities(data, trials):
        sections.append(_front_section(trials, y, columns, include_stopped))
    if confusions:
        sections.append(("Confusion matrices of the best trials", _confusion_section(confusions)))
    sections += _figure_sections(trials, data.curves, figs, curves_by)
    sections.append(("Generations of the best trials", examples))
    sections += _closing_sections(data, trials, metrics)
    title = "LoRA study report: " + ", ".join(data.studies)
    body = "".join(f"<h2>{html.escape(h)}</h2>{content}" for h, content in sections)
    (out / "report.html").write_text(page(title, len(trials), body), encoding="utf-8")


def _figure_sections(
    trials: pd.DataFrame, curves: pd.DataFrame, figs: Figures, curves_by: str
) -> list[tuple[str, str]]:
    """The learning curves and the LoRA vs full fine-tuning panel, those the trials can draw."""
    sections = []
    # a classify study's curves may have no eval_loss: draw the first quality it has
    curve_metric = next(iter(present(curves, figure_data.FRONT_QUALITY)), None)
    if len(curves) and curve_metric:
        info = figure_data.curves_info(trials, curves, curves_by, curve_metric)
        what = "" if curve_metric == M.EVAL_LOSS else f" of {curve_metric}"
        caption = f"learning curves{what} coloured by {curves_by}"
        sections.append(
            ("Learning curves", figs.add(render.curves_figure(info), "curves", caption))
        )
    seeds = figure_data.seeds_info(trials)
    if seeds.labels:
        caption = "LoRA vs full fine-tuning: parameters, step time, memory, quality"
        sections.append(
            ("LoRA vs full fine-tuning", figs.add(render.seeds_figure(seeds), "seeds", caption))
        )
    return sections


def _closing_sections(
    data: StudyData, trials: pd.DataFrame, metrics: list[str]
) -> list[tuple[str, str]]:
    """The errored trials, the studies, the problems found while loading and every trial."""
    sections = []
    errored = trials[trials["status"] == "errored"]
    if len(errored):
        cols = ["study", "group", "trial", "label", "status_step", "status_reason"]
        sections.append(("Errored trials", html_table(errored, cols, tuple(cols), wrap=True)))
    sections.append(("Studies", _studies_section(data)))
    if data.warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in data.warnings)
        sections.append(("Problems found while loading", f"<ul class='warn'>{items}</ul>"))
    all_cols = ["study", "group", "trial", "label", "status", "status_step", *metrics]
    sections.append(
        (
            "All trials",
            "<p>Every column is in trials.csv next to this file.</p>"
            + html_table(trials, all_cols, ("study", "group", "trial", "label", "status")),
        )
    )
    return sections


def build_table_report(path: str | Path, out: str | Path, *, factors: list[str],
                       quality: dict[str, bool], resources: dict[str, bool],
                       replicate: str | None = None, data_size: str | None = None,
                       interactions: str | None = None) -> Path:
    """The report of an external results table (``analysis.table_input``): the answer,
    recommendations, importance, factor effects, fronts, ``trials.csv`` and ``stats/``.

    Raises:
        ValueError: a bad table or flag (one line), or an ``out`` that cannot be written.
    """
    check_output_dir(Path(out), "--out")
    design = from_table(Path(path), factors, quality, resources, replicate, data_size)
    terms = parse_interactions(interactions, design.factors)

    def write_all(tmp: Path) -> None:
        body, runs = write_table_report(design, tmp, Figures(tmp), terms)
        runs.to_csv(tmp / "trials.csv", index=False)
        title = f"LoRA study report: {Path(path).name}"
        (tmp / "report.html").write_text(page(title, len(runs), body), encoding="utf-8")

    return publish(out, write_all)
