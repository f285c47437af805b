"""The grid of bench/search_efficiency.py: every configuration trained to the full budget.

    python bench/search_efficiency.py --regrid      # trains it again (through this module)

Each of the 24 configurations (rank x lr x targets x bits, the rest fixed) runs through
``run_trial`` in a worker process, two at a time with one thread each; its whole learning curve
(eval loss every ``eval.every`` steps) and test metrics go to ``bench/data/search_grid.json``,
which the replays of bench/search_efficiency.py read.
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from study import metrics as M  # noqa: E402
from study import record  # noqa: E402

GRID_FILE = HERE / "data" / "search_grid.json"
OUT = HERE / "out"
AXES = {  # the grid: 2 x 3 x 2 x 2 = 24 configurations
    "lora.rank": [4, 16],
    "train.lr": [1e-4, 3e-4, 1e-3],
    "lora.targets": ["qv", "all-linear"],
    "quant.bits": [4, 16],
}
FIXED = {  # everything else: the `default` space's recipe, shortened
    "model.name": "smollm2-135m",
    "data.task": "skills",
    "data.size": 200,
    "data.eval_size": 30,
    "data.test_size": 30,
    "lora.alpha_ratio": 2.0,
    "train.steps": 40,
    "train.warmup": 4,
    "train.batch_size": 8,
    "eval.every": 10,
    "eval.max_new_tokens": 16,
    "eval.num_examples": 2,
    "eval.latency_prompts": 1,
    "eval.latency_tokens": 4,
}


def key_of(config: dict) -> str:
    """A grid key from a dotted or nested config."""
    from study.config import flatten

    flat = flatten(config) if any(isinstance(v, dict) for v in config.values()) else config
    return "|".join(f"{k}={flat[k]}" for k in AXES)


def _grid_one(job: tuple[int, dict, int]) -> tuple[str, dict]:
    """Train one grid configuration to the full budget (in a worker process)."""
    import torch

    from study.config import TrialConfig
    from study.trial.run import run_trial

    i, point, threads = job
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    out = OUT / "search_grid" / f"g{i:02d}"
    final = run_trial(TrialConfig.from_dict({**FIXED, **point}), out_dir=out)
    curve, bad = record.read_curve(out)
    if bad:
        raise RuntimeError(f"{record.curve_path(out)}: lines {bad} are not valid JSON")
    entry = {
        "config": point,
        "curve": [{k: p[k] for k in (M.STEP, M.EVAL_LOSS, M.EXACT_MATCH)} for p in curve],
        M.TEST_LOSS: final[M.TEST_LOSS],
        M.TEST_EXACT_MATCH: final.get(M.TEST_EXACT_MATCH),
        "wall_s": time.perf_counter() - t0,
    }
    print(f"grid g{i:02d} {key_of(point)}: eval_loss {final[M.EVAL_LOSS]:.4f}", flush=True)
    return key_of(point), entry


def run_grid(jobs: int) -> dict:
    """Train every grid configuration to the full budget, ``jobs`` at a time."""
    import multiprocessing as mp
    import os

    from bench.common import machine

    configs = [dict(zip(AXES, values)) for values in itertools.product(*AXES.values())]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    started = time.perf_counter()
    with mp.get_context("spawn").Pool(jobs) as pool:
        table = dict(pool.map(_grid_one, [(i, p, threads) for i, p in enumerate(configs)], 1))
    return {
        "axes": AXES,
        "fixed": FIXED,
        "machine": machine(),
        "jobs": jobs,
        "wall_s": time.perf_counter() - started,
        "table": {key_of(p): table[key_of(p)] for p in configs},
    }
