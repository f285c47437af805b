"""What each host allocator setting costs in training speed and gives in peak memory (CPU).

    python bench/host_allocator.py                      # glibc, mmap, mmap+trim; 5 rounds
    python bench/host_allocator.py --rounds 7 --steps 16 --settings glibc mmap

Each round runs every setting once, in a fresh ``python -m study.train_one`` process of its own
(``LORA_STUDY_HOST_ALLOCATOR``, ``study.trial.host_memory``), in an order that alternates
between rounds, on the default skills configuration (``--flags`` adds fields) with one small
evaluation at the end (``bench.memory_model.SMALL_EVAL``). Per setting: its training tokens/s
against the first setting's in the same round (a paired ratio: the machine's drift between
rounds cancels), the median ratio with
a 95% interval (scipy's bootstrap of the median), and the peaks. Prints markdown; also writes
bench/out/host_allocator.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench.common import machine, machine_line, run_train_one, write_out  # noqa: E402
from bench.memory_model import SMALL_EVAL  # noqa: E402
from study import metrics as M  # noqa: E402
from study.trial.host_memory import ENV, HOST_ALLOCATORS  # noqa: E402


def median_interval(values: list[float]) -> str:
    """median [95% bootstrap interval of the median] (scipy); the value alone for one."""
    if len(values) < 3:
        return f"{statistics.median(values):.3f}"
    from scipy import stats

    res = stats.bootstrap((values,), statistics.median, n_resamples=2000, method="percentile",
                          random_state=0)
    low, high = res.confidence_interval
    return f"{statistics.median(values):.3f} [{low:.3f}, {high:.3f}]"


def one_run(setting: str, work: Path, steps: int, flags: list[str]) -> dict:
    old = os.environ.get(ENV)
    os.environ[ENV] = setting
    try:
        metrics, _ = run_train_one(work / f"{setting}-{time.monotonic_ns()}", "--steps",
                                   str(steps), "--eval.every", str(steps), "--warmup", "2",
                                   *SMALL_EVAL, *flags, quiet=True)
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="+", default=["glibc", "mmap", "mmap+trim"],
                        choices=HOST_ALLOCATORS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--flags", nargs=argparse.REMAINDER, default=[],
                        help="more study.train_one flags (last)")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict]] = {s: [] for s in args.settings}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="host-allocator-") as work:
        for r in range(args.rounds):
            order = args.settings if r % 2 == 0 else args.settings[::-1]
            for setting in order:
                runs[setting].append(one_run(setting, Path(work), args.steps, args.flags))
                m = runs[setting][-1]
                print(f"round {r}: {setting} {m[M.TRAIN_TOKENS_PER_S]:.1f} tokens/s, peak "
                      f"{m[M.PEAK_MEM_MB]:.0f} MB", file=sys.stderr, flush=True)
    first = args.settings[0]
    lines = [f"Machine: {machine_line(machine())}. Command: `python bench/host_allocator.py "
             f"--rounds {args.rounds} --steps {args.steps}"
             f"{' --flags ' + ' '.join(args.flags) if args.flags else ''}`; "
             f"{time.perf_counter() - start:.0f} s.", "",
             f"| setting | tokens/s (median) | vs {first}, paired (median [95% CI]) | "
             "peak MB (median, min-max) | start MB (median) |", "|---|---:|---:|---:|---:|"]
    for setting, ms in runs.items():
        speed = [m[M.TRAIN_TOKENS_PER_S] for m in ms]
        ratios = [m[M.TRAIN_TOKENS_PER_S] / b[M.TRAIN_TOKENS_PER_S]
                  for m, b in zip(ms, runs[first], strict=True)]
        peaks = [m[M.PEAK_MEM_MB] for m in ms]
        lines.append(f"| {setting} | {statistics.median(speed):.1f} | "
                     f"{median_interval(ratios)} | {statistics.median(peaks):,.0f} "
                     f"({min(peaks):,.0f}-{max(peaks):,.0f}) | "
                     f"{statistics.median(m[M.START_MEM_MB] for m in ms):,.0f} |")
    text = "\n".join(lines)
    write_out("host_allocator.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
