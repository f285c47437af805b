"""Does ``--dtype auto`` pick the precision that trains faster here? Measured side by side.

    python -m bench.dtype_choice              # 2 rounds of fp32 / bf16 / auto, 12 steps each
    python -m bench.dtype_choice --rounds 3 --steps 16

The default LoRA trial (bundled model, skills, all-linear r8, batch 8) trains ``--steps`` steps
with ``--dtype fp32``, ``--dtype bf16`` and ``--dtype auto``, each run in its own process, the
three alternated in every round (a 2-core cloud machine drifts between minutes). Reported: each
run's training tokens/s (first step left out, as in the trial's metric) and, for ``auto``, what
it chose and the matmul timings it chose by (env.json). bf16 runs only where the CPU has native
bf16. The verdict: ``auto`` agrees with the measured faster precision, or not.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import machine, machine_line
from study import record
from study.trial.precision import cpu_has_bf16

ROOT = Path(__file__).resolve().parents[1]
SMALL_EVAL = ["--data.eval_size", "8", "--data.test_size", "8", "--eval.num_examples", "4",
              "--eval.latency_prompts", "1", "--eval.latency_tokens", "2",
              "--eval.max_new_tokens", "4"]


def run(dtype: str, steps: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "study.train_one", "--out", str(out), "--steps", str(steps),
           "--eval-every", str(steps), "--dtype", dtype, *SMALL_EVAL]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = record.read_env(out)
    return {"tps": record.read_metrics(out)["train_tokens_per_s"], "choice": env["dtype_choice"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args(argv)
    dtypes = ["fp32", "bf16", "auto"] if cpu_has_bf16() else ["fp32", "auto"]
    seen: dict[str, list[dict]] = {d: [] for d in dtypes}
    with tempfile.TemporaryDirectory(prefix="dtype-choice-") as work:
        for r in range(args.rounds):
            for d in dtypes:
                seen[d].append(run(d, args.steps, Path(work) / f"{d}-{r}"))
                print(f"round {r + 1} {d}: {seen[d][-1]['tps']:.0f} tokens/s", file=sys.stderr)
    median = {d: statistics.median(x["tps"] for x in runs) for d, runs in seen.items()}
    faster = max((d for d in dtypes if d != "auto"), key=median.get)
    chosen = {x["choice"]["name"] for x in seen["auto"]}
    timings = seen["auto"][0]["choice"].get("timings_ms") or {}
    lines = [
        f"Machine: {machine_line(machine())}. Command: `python -m bench.dtype_choice --rounds "
        f"{args.rounds} --steps {args.steps}`.",
        "",
        "| --dtype | tokens/s per round | median |",
        "|---|---|---:|",
        *(f"| {d} | {', '.join(format(x['tps'], '.0f') for x in seen[d])} | {median[d]:.0f} |"
          for d in dtypes),
        "",
        f"`auto` chose {', '.join(sorted(chosen))} (matmul timings: "
        + ", ".join(f"{k} {v:.3g} ms" for k, v in timings.items())
        + f"); measured faster: {faster}. "
        + ("**Agrees.**" if chosen == {faster} else "**Disagrees.**"),
    ]
    print("\n".join(lines))
    return 0 if chosen == {faster} else 1


if __name__ == "__main__":
    sys.exit(main())
