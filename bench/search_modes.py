"""What each ``--search`` mode costs and finds: tpe, random, gp and grid on a recorded grid.

    python bench/search_modes.py                 # 10 seeds, no training

The 24-point grid of bench/search_efficiency.py (every configuration of rank x lr x targets x
bits trained to its full 40 steps on the bundled model; ``bench/data/search_grid.json``) is
searched by each mode through the searcher ``study.tune`` builds
(``study.search.searcher.make_search``, ``--scheduler none``: every trial reported to its end),
one trial at a time, 24 trials, for each seed. Per mode: the searcher's own time per suggestion
(the sampler's work plus the searcher's bookkeeping, what a study adds to each trial's seconds
or minutes), and how many trials it took to reach the grid's best final eval loss. Output:
stdout and ``bench/out/search_modes.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.search_efficiency import results_of  # noqa: E402
from bench.search_grid import AXES, FIXED, GRID_FILE, OUT, key_of  # noqa: E402
from study import metrics as M  # noqa: E402

MODES = ("tpe", "random", "gp", "grid")


def space() -> dict:
    """The grid's axes as choices, the rest fixed (dotted keys nest in the searcher)."""
    from study.config import TrialConfig

    nested = TrialConfig.from_dict(FIXED).to_dict()  # checks the fixed values, nests them
    for key, values in AXES.items():
        section, name = key.split(".")
        nested[section][name] = {"choice": values}
    return nested


def run(mode: str, seed: int, table: dict) -> dict:
    """One search of 24 trials; the seconds each suggestion took, the trial that found the best."""
    from study.search.searcher import make_search

    best = min(entry[M.EVAL_LOSS] if M.EVAL_LOSS in entry else entry["curve"][-1][M.EVAL_LOSS]
               for entry in table.values())
    searcher, _ = make_search([M.EVAL_LOSS], space=space(), seed=seed, max_t=40, grace=10,
                              reduction_factor=2, num_samples=len(table), search=mode,
                              scheduler="none")
    times, found = [], None
    for i in range(len(table)):
        started = time.perf_counter()
        config = searcher.suggest(f"t{i:03d}")
        times.append(time.perf_counter() - started)
        if not isinstance(config, dict):
            break
        reports = results_of(table[key_of(config)])
        for result in reports[:-1]:
            searcher.on_trial_result(f"t{i:03d}", result)
        searcher.on_trial_complete(f"t{i:03d}", reports[-1])
        if found is None and reports[-1][M.EVAL_LOSS] <= best:
            found = i + 1
    return {"times": times, "found": found, "trials": len(times)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--modes", default=",".join(MODES), help="comma list (default: all)")
    args = parser.parse_args(argv)
    from bench.common import machine

    table = json.loads(GRID_FILE.read_text())["table"]
    lines = [
        f"Machine: {machine()}; {len(table)}-point recorded grid, 24 trials per search, "
        f"{args.seeds} seeds, --scheduler none.",
        "",
        "| --search | ms per suggestion, median | slowest | trials to the grid's best: median "
        "[range] |",
        "|---|---|---|---|",
    ]
    for mode in args.modes.split(","):
        seeds = args.seeds
        runs = [run(mode, seed, table) for seed in range(seeds)]
        ms = [1000 * t for r in runs for t in r["times"]]
        found = [r["found"] for r in runs if r["found"] is not None]
        where = (f"{statistics.median(found):g} [{min(found)}-{max(found)}]" if found else "-")
        missed = seeds - len(found)
        where += f", missed in {missed} of {seeds}" if missed else ""
        lines.append(f"| {mode} | {statistics.median(ms):.1f} | {max(ms):.0f} | {where} |")
        print(lines[-1], flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "search_modes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
