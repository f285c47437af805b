"""The demo study, timed: where its wall time goes, and what it finds.

    python bench/study_overhead.py              # runs `make demo` (the study, then its report)
    python bench/study_overhead.py --study results/demo-...   # analyse a finished study instead

Overhead = wall time x concurrency not spent in trial training and evaluation: Ray start,
scheduling, trial process start, model loading and data building (each trial's ``load_s``),
checkpoint persistence. Also prints the quality found: the LoRA trial with the best eval exact
match (test metrics never select) and its test exact match against ``base``. Table: stdout and
bench/out/study_overhead.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench.common import machine, machine_line  # noqa: E402
from study import record  # noqa: E402


def analyse(study: Path, wall_s: float | None, started: float | None = None) -> str:
    """The overhead table and the quality found, from a study directory."""
    from analysis.summary import collect, trial_label

    cmd = record.read_study(study)["command"]
    rows = collect(study)
    concurrency = 1
    if "--max-concurrent" in cmd:
        concurrency = int(cmd[cmd.index("--max-concurrent") + 1])
    train = sum(r["metrics"].get("train_s") or 0 for r in rows)
    evals = sum(r["metrics"].get("eval_s") or 0 for r in rows)
    load = sum(r["metrics"].get("load_s") or 0 for r in rows)
    searched = [r for r in rows if r["group"] == record.SEARCH]
    status = [r["status"].get("status") for r in searched]
    lines = [
        f"Machine: {machine_line(machine())}",
        "",
        f"Study {study.name}: {len(searched)} searched trials ({status.count('finished')} "
        f"finished, {status.count('stopped')} stopped by ASHA, {status.count('errored')} "
        f"errored) + {len(rows) - len(searched)} baselines; concurrency {concurrency}.",
        "",
    ]
    if wall_s:
        lines += _time_table(study, rows, wall_s, started, concurrency, train, evals, load)
    base = [r for r in rows if r["config"]["method"] == "base"]
    lora = [
        r
        for r in rows
        if r["config"]["method"] == "lora"
        and r["metrics"].get("test_exact_match") is not None
        and r["metrics"].get("exact_match") is not None
    ]
    if base and lora:
        # chosen on the eval split (ties: the lower eval loss); the test split only reports it
        best = max(lora, key=lambda r: (r["metrics"]["exact_match"],
                                        -(r["metrics"].get("eval_loss") or 0.0)))
        b = base[0]["metrics"]["test_exact_match"]
        gain = 100 * (best["metrics"]["test_exact_match"] - b)
        lines += [
            "",
            f"Best LoRA trial by eval exact match ({100 * best['metrics']['exact_match']:.1f}%): "
            f"test exact match {100 * best['metrics']['test_exact_match']:.1f}% "
            f"({trial_label(best)}) vs base {100 * b:.1f}%: {gain:+.1f} points.",
        ]
    return "\n".join(lines)


def _time_table(study, rows, wall_s, started, concurrency, train, evals, load) -> list[str]:
    """Wall time x concurrency, split by the trial files' timestamps (exact at concurrency 1).

    A trial's worker writes config.json once run_trial has loaded the model and the data, so
    the trial began its ``load_s`` earlier; the study's callback stamps status.json when it ends.
    """
    spans = sorted(
        (
            record.config_mtime(record.group_dir(study, r["group"]) / r["trial"])
            - (r["metrics"].get("load_s") or 0),
            r["status"].get("time"),
            r["metrics"],
        )
        for r in rows
        if r["status"].get("time")
    )
    budget = wall_s * concurrency
    end = (started or spans[0][0]) + wall_s
    before = spans[0][0] - started if started else float("nan")
    between = sum(b[0] - a[1] for a, b in zip(spans, spans[1:]))
    after = end - spans[-1][1]
    inside = sum(
        (stop - begin) - (m.get("load_s") or 0) - (m.get("train_s") or 0) - (m.get("eval_s") or 0)
        for begin, stop, m in spans
    )
    parts = [
        ("training steps", train),
        ("evaluation (eval split every eval.every, test split and latency at the end)", evals),
        ("model loading + data in each trial (load_s)", load),
        ("checkpoints and trial files (rest of each trial)", inside),
        ("between trials: scheduling, worker start, imports", between),
        (
            "before the first trial: checks, model facts (a first run converts the GGUF), Ray",
            before,
        ),
        ("after the last trial: summary, Ray shutdown (and the report, under make demo)", after),
    ]
    out = ["| where the time went | seconds | share |", "|---|---:|---:|"]
    out += [f"| {name} | {secs:.0f} | {100 * secs / budget:.1f}% |" for name, secs in parts]
    out += [
        f"| total (wall x concurrency) | {budget:.0f} | 100% |",
        "",
        f"Overhead (not training or evaluation): "
        f"{100 * (budget - train - evals) / budget:.1f}% of {wall_s / 60:.1f} min; fixed "
        f"per-trial costs (loading, trial files, between trials) "
        f"{100 * (load + inside + between) / budget:.1f}%, evaluation "
        f"{100 * evals / budget:.1f}%.",
    ]
    return out


def main() -> None:
    """Run the demo study (or take ``--study``), then write and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--study", type=Path, help="analyse this finished study")
    parser.add_argument("--wall-s", type=float, help="its wall time, if known")
    parser.add_argument("--started", type=float, help="its start (epoch seconds), if known")
    args = parser.parse_args()
    if args.study:
        text = analyse(args.study, args.wall_s, args.started)
    else:
        # exactly what a user runs: the Makefile owns the demo's arguments; results/ unless
        # LORA_STUDY_RESULTS says otherwise (as for the Makefile)
        name = f"overhead-{time.strftime('%Y%m%d-%H%M%S')}"
        started, t0 = time.time(), time.perf_counter()
        subprocess.run(["make", "--no-print-directory", "demo", f"DEMO_NAME={name}"],
                       cwd=HERE.parent, check=True)
        results = Path(os.environ.get("LORA_STUDY_RESULTS", HERE.parent / "results"))
        text = analyse(results / name, time.perf_counter() - t0, started)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "study_overhead.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
