"""`python -m analysis report --table`: the report of any tool's results table.

    python -m analysis report --table runs.csv --factors rank,bits --quality accuracy:max \\
        --resources peak_gb --replicate seed --out report/

The same leading sections as a study's report (the answer, recommendations, importance, factor
effects: analysis.answer_report), the Pareto panels of each quality against each resource, and
every run; ``trials.csv`` and ``stats/`` beside ``report.html``.
"""

from __future__ import annotations

from pathlib import Path

from analysis.answer import analyse, write
from analysis.answer_report import leading_sections, pareto_section
from analysis.focus import parse_focus
from analysis.page import Figures, publish, render_page, section
from analysis.table_input import from_table, parse_interactions
from analysis.tables import table
from study.outdir import check_output_dir


def build_table_report(path: str | Path, out: str | Path, *, factors: list[str],
                       quality: dict[str, bool], resources: dict[str, bool],
                       replicate: str | None = None, data_size: str | None = None,
                       interactions: str | None = None, focus: str | None = None,
                       reference: list[str] | None = None) -> Path:
    """The report of an external results table (``analysis.table_input``): the answer,
    recommendations, importance, factor effects, fronts, ``trials.csv`` and ``stats/``;
    ``focus`` and ``reference``: --focus and --reference (``analysis.focus.parse_focus``).

    Raises:
        ValueError: a bad table or flag (one line), or an ``out`` that cannot be written.
    """
    check_output_dir(Path(out), "--out")
    design = from_table(Path(path), factors, quality, resources, replicate, data_size)
    terms = parse_interactions(interactions, design.factors)
    asked = parse_focus(design, focus, reference)

    def write_all(tmp: Path) -> None:
        found = analyse(design, terms, focus=asked)
        write(found, tmp / "stats")
        figs = Figures(tmp)
        sections = leading_sections(design, found, figs)
        pairs = [(y, x) for y in design.quality for x in design.resources]
        directions = {**design.quality, **design.resources}
        sections.append(pareto_section(design.runs, figs, pairs, larger_better=directions))
        runs = design.runs.drop(columns=["command"])
        runs.to_csv(tmp / "trials.csv", index=False)
        columns = [c for c in runs.columns if c != "study"]
        left = ("config", "label", *design.factors)
        sections.append(section("runs", "All runs", table=table(runs, columns, left)))
        title = f"LoRA study report: {Path(path).name}"
        (tmp / "report.html").write_text(render_page(title, len(runs), sections),
                                         encoding="utf-8")

    return publish(out, write_all)
