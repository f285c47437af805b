"""`python -m analysis report DIR [DIR ...]`: a self-contained HTML report, figures and tables.

    python -m analysis report results/demo --out results/demo/report
    python -m analysis report results/q4 results/q16 --out reports/4-vs-16   # overlaid studies

Writes ``report.html`` (images embedded as base64: it opens from disk, mailed or copied alone),
``figures/*.png`` and ``figures/*.svg``, ``trials.csv`` (one row per trial, with the Pareto flag
over eval_loss and peak_mem_mb, and over each classification metric the trials have) and
``curves.csv`` (every evaluation of every trial). The report shows the quality metrics the
studies have (a classify study: accuracy and F1, with the best trials' confusion matrices).
"""

from __future__ import annotations

import base64
import html
import json
import os
import shlex
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from analysis import figure_data, render
from analysis.classify import confusion_infos
from analysis.load import StudyData, load_studies, read_examples
from analysis.selection import (
    UNTRAINED_BASE,
    classify_metric,
    describe,
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
from analysis.tables import confusion_html, html_table
from study import metrics as M
from study import record
from study.outdir import check_output_dir

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: right; white-space: nowrap; }
table.wrap td { white-space: pre-wrap; max-width: 36em; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
.scroll { overflow-x: auto; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; }
.grid figure { flex: 1 1 520px; max-width: 590px; }
figure { margin: 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.8em; color: #555; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.8em; }
.warn { color: #a15c00; }
table.confusion td.diag { background: #e6f2e6; font-weight: bold; }
"""
# the tables' metric columns; each table shows those the trials have (see _table_metrics)
TABLE_METRICS = [
    M.EVAL_LOSS,
    M.TEST_LOSS,
    M.EXACT_MATCH,
    M.TEST_EXACT_MATCH,
    *(name for m in M.CLASSIFY_EVAL for name in (m, M.TEST_OF[m])),
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


class _Figures:
    """Saves figures under ``out/figures`` and keeps their HTML (PNG embedded as base64)."""

    def __init__(self, out: Path) -> None:
        self.dir = out / "figures"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []

    def add(self, fig, name: str, caption: str) -> str:
        """Save ``fig`` as ``figures/<name>.png`` and ``.svg``; return its HTML figure."""
        png, svg = render.save(fig, self.dir / name)
        self.files += [png, svg]
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)} (figures/{name}.png, .svg)</figcaption></figure>"
        )


def _pareto_section(trials: pd.DataFrame, figs: _Figures, include_stopped: bool) -> str:
    parts = []
    for y in present(trials, figure_data.FRONT_QUALITY):
        items = []
        for x in figure_data.front_resources(trials):
            info = figure_data.pareto_info(trials, x, y, include_stopped)
            if not len(info.points):
                continue
            caption = f"{y} vs {x}" + (" (log scale)" if info.log_x else "")
            items.append(figs.add(render.pareto_figure(info), f"pareto_{y}_{x}", caption))
        parts.append(f"<h3>{html.escape(y)}</h3><div class='grid'>{''.join(items)}</div>")
    return "".join(parts)


def _factors_section(trials: pd.DataFrame, figs: _Figures) -> str:
    rows = []
    factors = figure_data.shown_factors(trials)
    metrics = present(trials, figure_data.FRONT_QUALITY)
    for metric in metrics:
        infos = [figure_data.factor_info(trials, f, metric) for f in factors]
        infos = [i for i in infos if i.levels]
        if infos:
            rows.append(infos)
    if not rows:
        return "<p>No finished LoRA trial: no factor effects to show.</p>"
    figure = figs.add(render.factors_figure(rows), "factors", "quality by factor level")
    if "model" not in factors:
        return figure
    table = figure_data.factor_table(trials, "model", metrics)
    return (
        f"{figure}<h3>By model</h3><p>Finished LoRA trials of each model: the median and the "
        "best of each quality metric (eval split).</p>"
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
                f"{row['study']}/{row['group']}/{row['trial']}: {describe(row, by_model)} "
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


REPORT_FILES = frozenset({"report.html", "trials.csv", "curves.csv", "figures"})


def build_report(
    dirs: list[str | Path],
    out: str | Path,
    curves_by: str = "rank",
    include_stopped: bool = False,
) -> Path:
    """Load the studies, write every figure, table and report.html under ``out``; return it.

    The report is written to a temporary directory beside ``out`` and moved into place when
    complete (replacing an earlier report there): a failure or a kill never leaves half a
    report, and never touches files that are not a report's.

    Raises:
        NotAStudyError: a directory that is not a study. ValueError: an unknown factor, or an
            ``out`` that cannot be written or holds other files.
    """
    if curves_by not in figure_data.FACTORS:
        factors = ", ".join(figure_data.FACTORS)
        raise ValueError(f"unknown factor {curves_by!r}; use one of {factors}")
    out = Path(out)
    check_output_dir(out, "--out")
    if out.is_dir() and not {p.name for p in out.iterdir()} <= REPORT_FILES:
        raise ValueError(f"--out {out} holds files that are not a report's; give a new directory")
    data = load_studies(dirs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write_report(data, tmp, curves_by, include_stopped)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "report")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when it was moved into place
    return out / "report.html"


def _write_report(data: StudyData, out: Path, curves_by: str, include_stopped: bool) -> None:
    trials = with_pareto_column(data.trials)
    trials.to_csv(out / "trials.csv", index=False)
    data.curves.to_csv(out / "curves.csv", index=False)
    by_model = several_models(trials)  # labels name the model where the trials have several
    trials["label"] = [label(r, by_model) for _, r in trials.iterrows()]
    figs = _Figures(out)
    sections = [("Studies", _studies_section(data))]
    # both read trial files: their warnings go in the list below
    examples = _examples_section(trials, data.warnings)
    confusions = confusion_infos(trials, data.studies, data.warnings)
    if data.warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in data.warnings)
        sections.append(("Problems found while loading", f"<ul class='warn'>{items}</ul>"))
    metrics = _table_metrics(trials)
    columns = ["study", "group", "trial", "label", "status", *metrics]
    for y in _front_qualities(data, trials):
        sections.append(_front_section(trials, y, columns, include_stopped))
    if confusions:
        sections.append(("Confusion matrices of the best trials", _confusion_section(confusions)))
    sections.append(("Quality vs resources", _pareto_section(trials, figs, include_stopped)))
    sections.append(("Factor effects", _factors_section(trials, figs)))
    # a classify study's curves may have no eval_loss: draw the first quality it has
    curve_metric = next(iter(present(data.curves, figure_data.FRONT_QUALITY)), None)
    if len(data.curves) and curve_metric:
        info = figure_data.curves_info(trials, data.curves, curves_by, curve_metric)
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
    sections.append(("Generations of the best trials", examples))
    errored = trials[trials["status"] == "errored"]
    if len(errored):
        cols = ["study", "group", "trial", "label", "status_step", "status_reason"]
        sections.append(("Errored trials", html_table(errored, cols, tuple(cols), wrap=True)))
    all_cols = ["study", "group", "trial", "label", "status", "status_step", *metrics]
    sections.append(
        (
            "All trials",
            "<p>Every column is in trials.csv next to this file.</p>"
            + html_table(trials, all_cols, ("study", "group", "trial", "label", "status")),
        )
    )
    title = "LoRA study report: " + ", ".join(data.studies)
    body = "".join(f"<h2>{html.escape(h)}</h2>{content}" for h, content in sections)
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>Built {time.strftime('%Y-%m-%d %H:%M:%S')} from "
        f"{len(trials)} trials.</p>{body}</body></html>"
    )
    (out / "report.html").write_text(page, encoding="utf-8")
