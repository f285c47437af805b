"""Early-stopping trust: how well each ASHA rung ranks the recorded grid's configurations.

    python bench/rung_correlation.py

A replay of ``bench/data/search_grid.json`` (bench/search_grid.py: 24 configurations, each
trained to its end with its eval loss every 10 steps), no training. ASHA stops a trial at a
rung when its eval loss there is among the worse, trusting the rung to rank configurations as
their final values do. Per evaluation step before the end (the rungs of the ASHA that
``study.tune`` and bench/search_efficiency.py run are marked), this prints Spearman's rho
between the configurations' eval loss at that step and their final eval loss (and their test
loss), with its 95% interval (``analysis.rungs.spearman_interval``); the same among the
final best 1/rf of the configurations (the share a rung keeps), how many of those the step's
best 1/rf holds, and where the final best configuration ranks at that step. Every
configuration ran to its end, so nothing is survivor-biased here, unlike the same figure in a
study's report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from analysis.rungs import rung_steps, spearman_interval  # noqa: E402
from bench.search_efficiency import GRACE, MAX_T, REDUCTION  # noqa: E402
from bench.search_grid import GRID_FILE  # noqa: E402
from study import metrics as M  # noqa: E402


def value_at(entry: dict, step: int) -> float:
    """A configuration's eval loss at ``step``: the first evaluation at or past it (ASHA's
    rung rule)."""
    return next(p[M.EVAL_LOSS] for p in entry["curve"] if p[M.STEP] >= step)


def rows(table: dict) -> list[dict]:
    """One row per evaluation step before the end: rho against the final eval and test loss,
    rho among the final best 1/rf (the share a rung keeps: correlation within a narrow range
    is lower, and it is the order there that a rung's cut decides), how many of that share the
    step's own best 1/rf holds, and the final best's rank at the step."""
    entries = list(table.values())
    final = [e["curve"][-1][M.EVAL_LOSS] for e in entries]
    test = [e[M.TEST_LOSS] for e in entries]
    by_final = sorted(range(len(entries)), key=final.__getitem__)
    kept = by_final[: round(len(entries) / REDUCTION)]
    rungs = rung_steps(GRACE, REDUCTION, MAX_T)
    steps = sorted({p[M.STEP] for e in entries for p in e["curve"] if p[M.STEP] < MAX_T})
    out = []
    for step in steps:
        early = [value_at(e, step) for e in entries]
        by_early = sorted(range(len(entries)), key=early.__getitem__)
        out.append({
            "step": step,
            "rung": step in rungs,
            "eval": spearman_interval(early, final),
            "test": spearman_interval(early, test),
            "top": spearman_interval([early[i] for i in kept], [final[i] for i in kept]),
            "kept": len(set(kept) & set(by_early[: len(kept)])),
            "best_rank": by_early.index(by_final[0]) + 1,
        })
    return out


def _interval(rho_low_high: tuple[float, float, float]) -> str:
    rho, low, high = rho_low_high
    return f"{rho:.3f} [{low:.3f}, {high:.3f}]"


def report(grid: dict) -> str:
    """The table, with the grid's machine and the ASHA settings."""
    from bench.common import machine_line

    table = grid["table"]
    share = round(len(table) / REDUCTION)
    lines = [
        f"Grid recorded on: {machine_line(grid['machine'])}; {len(table)} configurations, each "
        f"to step {MAX_T}. ASHA as study.tune runs it here: grace {GRACE}, reduction factor "
        f"{REDUCTION:g}, max_t {MAX_T}: rungs at steps "
        + ", ".join(f"{r:g}" for r in rung_steps(GRACE, REDUCTION, MAX_T)) + ".",
        "",
        "| step | ASHA rung | rho vs final eval loss [95%] | rho vs test loss [95%] "
        f"| rho among the final best {share} [95%] | of the final best {share}, in the step's "
        f"best {share} | final best's rank at the step (of {len(table)}) |",
        "|---:|:---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows(table):
        lines.append(
            f"| {row['step']} | {'yes' if row['rung'] else '-'} | {_interval(row['eval'])} "
            f"| {_interval(row['test'])} | {_interval(row['top'])} | {row['kept']} "
            f"| {row['best_rank']} |"
        )
    return "\n".join(lines)


def main() -> None:
    print(report(json.loads(GRID_FILE.read_text())))


if __name__ == "__main__":
    main()
