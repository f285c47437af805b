"""python -m analysis: reports, Pareto fronts and the best trial under a budget, from study dirs.

    python -m analysis report results/demo [results/other ...] [--out DIR] [--curves-by rank]
                              [--interactions rank:targets,...] [--focus scheme]
                              [--reference scheme=16]
    python -m analysis report --table runs.csv --factors rank,bits --quality accuracy:max \
        --resources peak_gb:min,train_s [--replicate seed] [--data-size n] --out DIR \
        [--focus bits,rank] [--reference bits=16,rank=8]
    python -m analysis pareto results/demo --x peak_mem_mb --y eval_loss
    python -m analysis best results/demo --max-mem-mb 800 [--objective exact_match]
    python -m analysis best results/cls --objective accuracy      # a classify study (maximised)

Bad input (a directory that is not a study, an unknown metric) ends with one line on stderr and
exit code 2; "no trial fits the budget" with one line and exit code 1. Corrupt trial files are
reported as warnings and the rest of the study is used.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import NoReturn

from study.metrics import ACCURACY, EVAL_LOSS, EXACT_MATCH, F1_MACRO, PEAK_MEM_MB, TEST_OF

PROG = "python -m analysis"
QUALITY_HELP = (
    f"{EVAL_LOSS}, {EXACT_MATCH}, {ACCURACY}, {F1_MACRO}, ... (default: {EVAL_LOSS}, or the "
    "first quality metric the trials have: a classify study may have no eval_loss)"
)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block) and exits with code 2."""

    def error(self, message: str) -> NoReturn:
        """``PROG: error: message`` on stderr, exit code 2 (subcommands' parsers too)."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv: list[str] | None):
    """The command line."""
    parser = OneLineParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{report,pareto,best}")
    report = sub.add_parser("report", help="HTML report, figures and trials.csv")
    report.add_argument("dirs", nargs="*", type=Path, metavar="DIR", help="study directories")
    report.add_argument(
        "--out", type=Path, help="output directory (default: DIR/report for one study)"
    )
    report.add_argument(
        "--interactions", help="two-factor terms of the ANOVA model, as A:B,C:D (rank:targets)"
    )
    report.add_argument(
        "--focus", help="the factors the answer opens with, as A,B (default: every factor, the "
        "most important first)"
    )
    report.add_argument(
        "--reference", action="append", metavar="FACTOR=LEVEL", help="the level a factor's "
        "other levels are compared with (default: its first level); repeat it, or give "
        "A=X,B=Y"
    )
    table = report.add_argument_group("an external results table (one row per run)")
    table.add_argument("--table", type=Path, help="a CSV made by any tool, instead of DIRs")
    table.add_argument("--factors", help="its factor columns, as COL,COL,...")
    table.add_argument(
        "--quality", help="its quality columns, as COL[:max|:min],... (the first leads; max by "
        "default, except metrics this project knows such as eval_loss)"
    )
    table.add_argument("--resources", help="its resource columns, as COL[:min|:max],... (the "
                       "first is the memory budget's axis; min by default)")
    table.add_argument("--replicate", help="the column that tells repeated runs apart (seed)")
    table.add_argument("--data-size", help="the column of the amount of training data")
    report.add_argument(
        "--curves-by", default="rank", help="factor colouring the learning curves (default rank)"
    )
    pareto = sub.add_parser("pareto", help="print the Pareto front of two metrics")
    pareto.add_argument(
        "dirs", nargs="+", type=Path, metavar="DIR", help="study directories (pooled: one front)"
    )
    pareto.add_argument("--x", default=PEAK_MEM_MB, help=f"resource (default {PEAK_MEM_MB})")
    pareto.add_argument("--y", help=f"quality: {QUALITY_HELP}")
    best = sub.add_parser("best", help="the best finished trial under a memory budget")
    best.add_argument(
        "dirs", nargs="+", type=Path, metavar="DIR", help="study directories (pooled)"
    )
    best.add_argument("--max-mem-mb", type=float, help="largest peak memory allowed (MB)")
    best.add_argument("--objective", help=f"metric: {QUALITY_HELP}")
    for p in (report, pareto):
        p.add_argument(
            "--include-stopped",
            action="store_true",
            help="build fronts from stopped trials too (they had less budget)",
        )
    return parser.parse_args(argv)


def default_out(dirs: list[Path]) -> Path:
    """DIR/report for one study; next to the first study, named after all of them, for several."""
    if len(dirs) == 1:
        return dirs[0] / "report"
    return dirs[0].resolve().parent / ("report-" + "+".join(d.resolve().name for d in dirs))


TABLE_ONLY = ("factors", "quality", "resources", "replicate", "data_size")


def _report(args) -> int:
    from analysis.report import build_report
    from analysis.table_input import parse_metrics, parse_names
    from analysis.table_report import build_table_report

    if args.table is None:
        given = [f"--{n.replace('_', '-')}" for n in TABLE_ONLY if getattr(args, n) is not None]
        if given:
            raise ValueError(f"{given[0]} describes a --table; a study directory needs none")
        if not args.dirs:
            raise ValueError("give study directories, or --table FILE.csv with --factors, "
                             "--quality and --out")
        path = build_report(args.dirs, args.out or default_out(args.dirs), args.curves_by,
                            args.include_stopped, args.interactions, args.focus, args.reference)
    else:
        if args.dirs:
            raise ValueError("give study directories or --table, not both")
        if args.out is None:
            raise ValueError("--table needs --out DIR, the report's directory")
        path = build_table_report(
            args.table, args.out, factors=parse_names(args.factors),
            quality=parse_metrics(args.quality, "--quality", default_max=True),
            resources=parse_metrics(args.resources, "--resources", default_max=False),
            replicate=args.replicate, data_size=args.data_size,
            interactions=args.interactions, focus=args.focus, reference=args.reference)
    print(f"report: {path.resolve()}")
    return 0


def _default_quality(trials) -> str:
    """eval_loss, or for trials without it (a classify study may have none) the first quality
    metric of the report's figures that they have."""
    from analysis.figure_data import FRONT_QUALITY
    from analysis.selection import present

    return next(iter(present(trials, FRONT_QUALITY)), EVAL_LOSS)


def _pareto(args) -> int:
    from analysis.load import load_studies
    from analysis.selection import (
        check_metric,
        format_table,
        front_rows,
        label,
        left_out,
        several_models,
    )

    trials = load_studies(args.dirs).trials
    args.y = args.y or _default_quality(trials)
    check_metric(trials, args.x)
    check_metric(trials, args.y)
    front = front_rows(trials, args.x, args.y, args.include_stopped).copy()
    if not len(front):
        print(f"{PROG}: no finished trial has both {args.y} and {args.x}", file=sys.stderr)
        why = left_out(trials, [args.y, args.x], args.include_stopped)
        if why:
            print(f"{PROG}: {why}", file=sys.stderr)
        return 1
    by_model = several_models(trials)  # the label names the model where several are pooled
    front["label"] = [label(r, by_model) for _, r in front.iterrows()]
    columns = ["study", "group", "trial", "label", "status", args.y, args.x]
    if args.y in TEST_OF:
        columns.append(TEST_OF[args.y])
    where = "finished and stopped" if args.include_stopped else "finished"
    print(f"Pareto front of {args.y} vs {args.x} ({len(front)} of the {where} trials):")
    print(format_table(front, columns))
    why = left_out(trials, [args.y, args.x], args.include_stopped)
    if why:
        print(why)
    return 0


def _best(args) -> int:
    from analysis.load import load_studies
    from analysis.selection import (
        best_trial,
        label,
        left_out,
        several_models,
        train_one_command,
    )

    if args.max_mem_mb is not None and not args.max_mem_mb > 0:  # NaN too
        raise ValueError(f"--max-mem-mb must be a number of MB > 0, got {args.max_mem_mb:g}")
    trials = load_studies(args.dirs).trials
    args.objective = args.objective or _default_quality(trials)
    row = best_trial(trials, args.objective, args.max_mem_mb)
    why = left_out(trials, [args.objective], max_mem_mb=args.max_mem_mb)
    budget = "" if args.max_mem_mb is None else f" with {PEAK_MEM_MB} <= {args.max_mem_mb:g}"
    if row is None:
        print(f"{PROG}: no finished trial has {args.objective}{budget}", file=sys.stderr)
        if why:
            print(f"{PROG}: {why}", file=sys.stderr)
        return 1
    mem = row[PEAK_MEM_MB]
    mem_text = "-" if mem != mem else f"{mem:.0f} MB"
    print(
        f"best {args.objective}{budget}: {row[args.objective]:.6g}  "
        f"[{row['study']}/{row['group']}/{row['trial']}] "
        f"{label(row, several_models(trials), detail=True)}, peak {mem_text}"
    )
    print(train_one_command(row))
    if why:
        print(why)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input -> one line on stderr and exit code 2."""
    args = parse_args(argv)
    from analysis.load import ResultWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResultWarning)
        try:
            code = {"report": _report, "pareto": _pareto, "best": _best}[args.command](args)
        except ValueError as err:  # NotAStudyError, unknown metric or factor
            code = 2
            print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
    for w in caught:
        if issubclass(w.category, ResultWarning):
            print(f"{PROG}: warning: {w.message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
