"""Which ``--train.batching`` trains fastest here? pad, group and pack measured side by side.

    python -m bench.batching_choice                    # bundled model, skills, 2 rounds x 30 steps
    python -m bench.batching_choice --model tiny-llama --steps 4 --rounds 1   # a smoke run
    python -m bench.batching_choice -- --data.task lm --data.seq_len 256   # the rest: train_one

The default LoRA trial of ``--model`` trains ``--steps`` steps once per mode, each in its own
process, the modes alternated in every round (a 2-core cloud machine drifts between minutes),
with ``--train.compile off`` (the choice of compile is its own bench). Reported per mode: training
tokens/s (real tokens: padding is not counted, first step left out, as in the trial's metric),
the padding share (``env.json``), the step time and the final eval loss (the three modes see the
same examples per epoch, in other micro-batches: their losses differ a little). The fastest mode
by median tokens/s is named; ``pack`` is not a candidate for a default that classify trials
also take (their score head needs rows).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import machine, machine_line, run_train_one
from bench.dtype_choice import SMALL_EVAL
from study import metrics as M
from study import record
from study.sections_run import BATCHINGS


def run(mode: str, model: str, steps: int, extra: list[str], out: Path) -> dict:
    """One trial of ``mode`` in its own process: its speed, padding share and final loss."""
    metrics, wall = run_train_one(out, "--model", model, "--steps", str(steps), "--eval-every",
                                  str(steps), "--train.batching", mode, "--train.compile", "off",
                                  *SMALL_EVAL, *extra, quiet=True)
    return {"tps": metrics[M.TRAIN_TOKENS_PER_S], "step_ms": metrics[M.STEP_MS],
            "eval_loss": metrics[M.EVAL_LOSS], "wall_s": wall,
            "padding": record.read_env(out).get("padding_share")}


def table(seen: dict[str, list[dict]]) -> list[str]:
    """The markdown table: one row per mode, its runs per round and the median tokens/s."""
    rows = ["| --train.batching | tokens/s per round | padding share | ms per step per round | "
            "final eval loss | median tokens/s |", "|---|---|---|---|---|---:|"]
    for mode, runs in seen.items():
        def cells(key: str, fmt: str, runs=runs) -> str:
            return ", ".join("-" if x[key] is None else format(x[key], fmt) for x in runs)

        median = statistics.median(x["tps"] for x in runs)
        rows.append(f"| {mode} | {cells('tps', '.0f')} | {cells('padding', '.1%')} | "
                    f"{cells('step_ms', '.0f')} | {cells('eval_loss', '.4f')} | {median:.0f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print the table and the fastest mode."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("extra", nargs="*", help="after --: more train_one flags")
    args = parser.parse_args(argv)
    seen: dict[str, list[dict]] = {m: [] for m in BATCHINGS}
    with tempfile.TemporaryDirectory(prefix="batching-choice-") as work:
        for r in range(args.rounds):
            for mode in BATCHINGS:
                got = run(mode, args.model, args.steps, args.extra, Path(work) / f"{mode}-{r}")
                seen[mode].append(got)
                print(f"round {r + 1} {mode}: {got['tps']:.0f} tokens/s", file=sys.stderr)
    median = {m: statistics.median(x["tps"] for x in runs) for m, runs in seen.items()}
    fastest = max(median, key=median.get)
    for_all = max(("pad", "group"), key=median.get)
    command = " ".join(["python -m bench.batching_choice", "--model", args.model, "--rounds",
                        str(args.rounds), "--steps", str(args.steps),
                        *(["--", *args.extra] if args.extra else [])])
    print("\n".join([
        f"Machine: {machine_line(machine())}. Command: `{command}`.", "", *table(seen), "",
        f"Fastest by median tokens/s: {fastest}; of the modes every task takes (pad, group): "
        f"{for_all} ({median[for_all] / median['pad']:.2f}x pad).",
    ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
