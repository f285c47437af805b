"""Does ``--train.compile auto`` choose what trains faster here? Measured side by side.

    python -m bench.compile_choice                      # bundled model, 2 rounds of 30 steps
    python -m bench.compile_choice --model tiny-llama --steps 4 --rounds 1   # a smoke run
    python -m bench.compile_choice --steps 150 -- --batch-size 4   # the rest goes to train_one

The default LoRA trial of ``--model`` trains ``--steps`` steps with ``--train.compile off``,
``on`` and ``auto``, each in its own process, the three alternated in every round (a 2-core cloud
machine drifts between minutes). Reported per run: training tokens/s (first step left out, as in
the trial's metric), ``compile_s`` (the compile in that process) and ``train_s + compile_s``,
what the trial spent on training, compile included: what ``auto``'s rule weighs. For ``auto``,
what it chose, why, and whether its figures came from ``<cache>/compile.json`` (the first
``auto`` run measures where nothing is cached; the runs after it read the cache). The verdict:
``auto`` agrees with the measured faster of off and on (by the median ``train_s + compile_s``),
or not. torch's own compile cache (inductor's, on disk) makes later compiles of a graph faster:
compare the rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import machine, machine_line
from bench.dtype_choice import SMALL_EVAL
from study import metrics as M
from study import record
from study.trial.compiling import ENV_AUTO

ROOT = Path(__file__).resolve().parents[1]
MODES = ("off", "on", "auto")


def run(mode: str, model: str, steps: int, extra: list[str], out: Path) -> dict:
    """One trial in its own process; its speed, compile time and (auto) choice."""
    cmd = [sys.executable, "-m", "study.train_one", "--out", str(out), "--model", model,
           "--steps", str(steps), "--eval-every", str(steps), "--train.compile", mode,
           *SMALL_EVAL, *extra]
    env = {k: v for k, v in os.environ.items() if k != ENV_AUTO}  # auto measures here
    subprocess.run(cmd, cwd=ROOT, check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    metrics = record.read_metrics(out)
    compile_s = metrics.get(M.COMPILE_S) or 0.0
    return {"tps": metrics[M.TRAIN_TOKENS_PER_S], "compile_s": compile_s,
            "total_s": metrics[M.TRAIN_S] + compile_s, "choice": record.read_env(out)["compile"]}


def table(seen: dict[str, list[dict]]) -> list[str]:
    """The markdown table: one row per mode, its runs' figures per round and the median."""
    rows = ["| --train.compile | tokens/s per round | compile_s per round | train_s + compile_s "
            "per round | median train_s + compile_s |", "|---|---|---|---|---:|"]
    for mode, runs in seen.items():
        def cells(key: str, fmt: str, runs=runs) -> str:
            return ", ".join(format(x[key], fmt) for x in runs)

        median = statistics.median(x["total_s"] for x in runs)
        rows.append(f"| {mode} | {cells('tps', '.0f')} | {cells('compile_s', '.1f')} | "
                    f"{cells('total_s', '.1f')} | {median:.1f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print the table and the verdict; 0 when auto agrees, 1 when not."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("extra", nargs="*", help="after --: more train_one flags")
    args = parser.parse_args(argv)
    seen: dict[str, list[dict]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="compile-choice-") as work:
        for r in range(args.rounds):
            for mode in MODES:
                got = run(mode, args.model, args.steps, args.extra, Path(work) / f"{mode}-{r}")
                seen[mode].append(got)
                print(f"round {r + 1} {mode}: {got['tps']:.0f} tokens/s, compile "
                      f"{got['compile_s']:.1f} s", file=sys.stderr)
    median = {m: statistics.median(x["total_s"] for x in seen[m]) for m in ("off", "on")}
    faster = min(median, key=median.get)
    chosen = {x["choice"]["chosen"] for x in seen["auto"]}
    first = seen["auto"][0]["choice"]
    command = " ".join(["python -m bench.compile_choice", "--model", args.model, "--rounds",
                        str(args.rounds), "--steps", str(args.steps), *(["--", *args.extra]
                                                                           if args.extra else [])])
    lines = [
        f"Machine: {machine_line(machine())}. Command: `{command}`.", "", *table(seen), "",
        f"`auto` chose {', '.join(sorted(chosen))} (first run: {first['reason']}; "
        f"{'cached' if first['cached'] else 'measured'}, "
        f"{first['measure_s']:.1f} s deciding); measured faster in all: {faster}. "
        + ("**Agrees.**" if chosen == {faster} else "**Disagrees.**"),
    ]
    print("\n".join(lines))
    return 0 if chosen == {faster} else 1


if __name__ == "__main__":
    sys.exit(main())
