"""DPO's reference, measured: cached log-probabilities against the adapters switched off each step.

    python bench/dpo_reference.py                 # 2 alternating rounds, bundled model, ~10 min
    python bench/dpo_reference.py --steps 10 --rounds 1

The same DPO trial (the built-in preference set, a new adapter, 4 pairs per micro-batch) with
``dpo.reference=cached`` (one forward of every pair of every split before training) and
``dpo.reference=disabled`` (a forward without gradients of each micro-batch, adapters off), each
in a process of its own, rounds alternating A B B A. Reports per choice the median step time,
the training peak and the time outside training, evaluation and loading (the cached pass).
Table: stdout and bench/out/dpo_reference.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench.common import machine, machine_line, median, run_train_one, write_out  # noqa: E402
from study import metrics as M  # noqa: E402

FLAGS = ("--task", "preference", "--batch-size", "4", "--lr", "2e-4", "--eval.early_prompts", "0",
         "--size", "100", "--data.eval_size", "30", "--data.test_size", "30")


def outside(metrics: dict) -> float:
    """Seconds of the trial spent outside loading, compiling, training and evaluation: the cached
    reference's pass (and process start-up, the same for both)."""
    inside = sum(metrics.get(k) or 0 for k in (M.LOAD_S, M.COMPILE_S, M.TRAIN_S, M.EVAL_S))
    return metrics[M.TRIAL_S] - inside


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=HERE / "out" / "dpo_reference")
    args = parser.parse_args(argv)
    order = [c for r in range(args.rounds) for c in
             (("cached", "disabled") if r % 2 == 0 else ("disabled", "cached"))]
    seen: dict[str, list[dict]] = {"cached": [], "disabled": []}
    for i, choice in enumerate(order):
        out = args.work / f"{choice}-{i}"
        metrics, _ = run_train_one(out, *FLAGS, "--steps", str(args.steps), "--eval.every",
                                   str(args.steps), "--dpo.reference", choice, quiet=True)
        seen[choice].append(metrics)
    lines = [f"Machine: {machine_line(machine())}", "",
             "| dpo.reference | step ms (median) | tokens/s | peak MB | reference pass s | "
             "train s | eval s |", "|---|---|---|---|---|---|---|"]
    for choice, runs in seen.items():
        lines.append(
            f"| {choice} | {median([r[M.STEP_MS] for r in runs]):.0f} | "
            f"{median([r[M.TRAIN_TOKENS_PER_S] for r in runs]):.0f} | "
            f"{median([r[M.PEAK_MEM_MB] for r in runs]):,.0f} | "
            f"{median([outside(r) for r in runs]):.1f} | "
            f"{median([r[M.TRAIN_S] for r in runs]):.1f} | "
            f"{median([r[M.EVAL_S] for r in runs]):.1f} |")
    lines += ["", f"{args.steps} steps of 4 pairs, {args.rounds} rounds (medians); the cached "
              "pass scores the train, eval and test pairs once; 'reference pass s' is the trial's "
              "time outside loading, training and evaluation."]
    text = "\n".join(lines)
    write_out("dpo_reference.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
