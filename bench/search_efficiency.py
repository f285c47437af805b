"""Search efficiency: our TPE + ASHA against grid, random search, TPE alone and stock Ray.

    python bench/search_efficiency.py               # grid (once, ~25 min on 2 cores) + replays
    python bench/search_efficiency.py --seeds 10    # replays only, when the grid is recorded
    python bench/search_efficiency.py --regrid      # train the grid again

1. **Grid.** Every configuration of a 24-point space (rank x lr x targets x bits) is trained to
   the full budget on the bundled SmolLM2-135M-Instruct (skills task, 40 steps of batch 8, bf16
   autocast where the CPU has it) through ``run_trial``, two at a time with one thread each,
   recording its whole learning curve (eval loss every 10 steps; ``bench/search_grid.py``). The
   table goes to ``bench/data/search_grid.json`` (committed: the replays need no training).
2. **Replay** (the tabular-benchmark method of HPOBench / LCBench): each searcher runs one trial
   at a time against the recorded curves, through the very objects ``study.tune`` builds
   (``study.search.searcher.make_search``: ``StudySearch``, our ask/tell searcher on Optuna, and
   ``StudyASHA``, our ASHA on Tune's public scheduler interface), and is charged the optimizer
   steps each trial actually ran. Compared: random search (Optuna's RandomSampler in the same
   searcher, no early stopping), TPE without early stopping, TPE + ASHA (ours, the default of
   ``study.tune``, ASHA-stopped trials told PRUNED) and Ray's stock ``OptunaSearch`` +
   ``ASHAScheduler`` (stopped trials told COMPLETE with their partial value).
   ``--check-tuner`` also replays ours for one seed through a real ``ray.tune.Tuner`` and checks
   that it makes the same decisions as the replay loop.

The quality found at any moment is the best eval loss among trials that ran to the full budget
(a stopped trial's config was never fully trained, so it is not a result a user would pick).
The table gives the compute (trial-steps, as a share of the grid's) each searcher needs to reach
within 1% of the grid's best eval loss; the figure (``analysis.anytime``) the best-so-far curve.
Output: stdout, ``bench/out/search_efficiency.md`` and the figure
``docs/img/search_efficiency.{png,svg}``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from analysis.anytime import anytime_info, plot_anytime  # noqa: E402
from bench.search_grid import AXES, FIXED, GRID_FILE, OUT, key_of, run_grid  # noqa: E402
from study import metrics as M  # noqa: E402
from study import record  # noqa: E402

MAX_T, GRACE = FIXED["train.steps"], FIXED["eval.every"]  # study.tune: grace = eval.every
TOLERANCE = 0.01  # "within 1% of the grid's best eval loss"
LOOSE = 0.10  # a second column, for context
OURS = "TPE + ASHA (ours, study.tune)"
NO_REPEAT_SKIP = "ours, but repeats re-run (the hand-off alone)"
FIGURES = HERE.parent / "docs" / "img"  # where docs/BENCHMARKS.md shows the figure from


def _reduction_factor() -> float:
    """study.tune's default --reduction-factor (the benchmark runs study.tune's defaults)."""
    from study.tune import parse_args

    return parse_args([]).reduction_factor


REDUCTION = _reduction_factor()


# ------------------------------------------------------------------------------------- replay
def grid_space() -> dict:
    """The grid as a search space (dotted keys, as study.tune's spaces)."""
    return {k: {"choice": v} for k, v in AXES.items()}


def tune_space() -> dict:
    """The grid as Tune's param_space, through the same converter as `study.tune`."""
    from search_spaces import to_tune

    return to_tune(grid_space())


def _asha():
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr=M.STEP,
        metric=M.EVAL_LOSS,
        mode="min",
        max_t=MAX_T,
        grace_period=GRACE,
        reduction_factor=REDUCTION,
    )


def searchers(seed: int, num_samples: int) -> dict[str, tuple]:
    """Name -> (searcher, scheduler or None), each fresh, for a study of ``num_samples``."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from study.search.samplers import tpe_sampler
    from study.search.searcher import StudySearch, make_search

    class RerunRepeats(StudySearch):
        """Ours without skipping configurations already run (each repeat is trained again)."""

        def _resolved(self) -> dict:
            return {}

    space = grid_space()
    tpe = functools.partial(tpe_sampler, seed, num_samples)  # study.tune's TPE settings

    def ours(sampler, cls=StudySearch):
        return cls([M.EVAL_LOSS], ["min"], space=space, sampler=sampler)

    search_args = dict(seed=seed, max_t=MAX_T, grace=GRACE, reduction_factor=REDUCTION)
    out = {
        "random search": (ours(optuna.samplers.RandomSampler(seed=seed)), None),
        "TPE, no early stopping": (ours(tpe()), None),
        "stock OptunaSearch + ASHA": (
            OptunaSearch(metric=M.EVAL_LOSS, mode="min", seed=seed),
            _asha(),
        ),
        "stock OptunaSearch (our TPE settings) + ASHA": (
            OptunaSearch(metric=M.EVAL_LOSS, mode="min", sampler=tpe()),
            _asha(),
        ),
        NO_REPEAT_SKIP: (
            ours(tpe(), RerunRepeats),
            make_search([M.EVAL_LOSS], space=space, **search_args)[1],
        ),
        OURS: make_search([M.EVAL_LOSS], space=space, num_samples=num_samples, **search_args),
    }
    for searcher, _ in out.values():
        searcher.set_search_properties(None, None, tune_space())  # as Tune does
    return out


def results_of(entry: dict) -> list[dict]:
    """The reports a trial of this config makes: its curve; the last one is marked final."""
    out = [
        {"training_iteration": i + 1, M.STEP: p[M.STEP], M.EVAL_LOSS: p[M.EVAL_LOSS]}
        for i, p in enumerate(entry["curve"])
    ]
    out[-1][M.TEST_LOSS] = entry[M.TEST_LOSS]
    out[-1][record.FINAL] = True  # what a trial that ran to its end says in its last report
    return out


def replay(table: dict, searcher, scheduler, budget: int, max_trials: int = 500) -> list[dict]:
    """Run one search against the recorded curves, one trial at a time, as Tune would.

    Per trial, in TuneController's order: suggest -> scheduler.on_trial_add -> each report to
    scheduler.on_trial_result, then (unless it said STOP, which ends the trial) to the
    searcher's -> on_trial_complete on both with the last report. Returns one event per trial:
    config key, steps charged, finished, last value.
    """
    from ray.tune.schedulers import TrialScheduler

    events, used = [], 0
    for i in range(max_trials):
        if used >= budget:
            break
        trial_id = f"t{i:04d}"
        config = searcher.suggest(trial_id)
        if not isinstance(config, dict):  # Searcher.FINISHED: nothing untried is left
            break
        key = key_of(config)
        trial = SimpleNamespace(trial_id=trial_id)
        if scheduler is not None:
            scheduler.on_trial_add(None, trial)
        reports = results_of(table[key])
        for result in reports:  # Tune's order: the scheduler first; STOP hides it from the searcher
            stop = scheduler is not None and (
                scheduler.on_trial_result(None, trial, result) == TrialScheduler.STOP
            )
            if stop:
                break
            searcher.on_trial_result(trial_id, result)
        if scheduler is not None:
            scheduler.on_trial_complete(None, trial, result)
        searcher.on_trial_complete(trial_id, result=result)
        last = result is reports[-1]
        used += result[M.STEP]
        events.append(
            {"key": key, "steps": result[M.STEP], "finished": last, "value": result[M.EVAL_LOSS]}
        )
    return events


def steps_to_reach(events: list[dict], target: float) -> float:
    """Cumulative trial-steps until a finished trial is within the target (inf if never)."""
    used = 0
    for e in events:
        used += e["steps"]
        if e["finished"] and e["value"] <= target:
            return used
    return math.inf


def check_tuner(table: dict, seed: int, budget: int) -> str:
    """Replay ours through a real ray.tune.Tuner; compare its trials with the replay loop's."""
    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from study.search.searcher import make_search

    def trainable(config: dict) -> None:
        for result in results_of(table[key_of(config)]):
            tune.report(result)

    searcher, scheduler = make_search(  # fresh, as study.tune builds it
        [M.EVAL_LOSS],
        space=grid_space(),
        seed=seed,
        max_t=MAX_T,
        grace=GRACE,
        reduction_factor=REDUCTION,
        num_samples=len(table),
    )
    n_trials = len(replay(table, *searchers(seed, len(table))[OURS], budget))
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        tuner = tune.Tuner(
            trainable,
            param_space=tune_space(),
            tune_config=tune.TuneConfig(
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=1),
                scheduler=scheduler,
                num_samples=n_trials,
            ),
            run_config=tune.RunConfig(storage_path=str((OUT / "ray").resolve()), verbose=0),
        )
        grid = tuner.fit()
    finally:
        ray.shutdown()
    # Tune names trial directories <trainable>_<id>_<index>_...: the index is the launch order
    real = sorted(
        (int(Path(r.path).name.split("_")[2]), key_of(r.config), r.metrics[M.STEP]) for r in grid
    )
    simulated = replay(table, *searchers(seed, len(table))[OURS], budget)
    same = [(k, s) for _, k, s in real] == [(e["key"], e["steps"]) for e in simulated]
    return f"Tuner check (seed {seed}, {len(real)} trials): the real Tuner " + (
        "made the same decisions as the replay loop." if same else "DIFFERED from the replay."
    )


# ------------------------------------------------------------------------------------- report
def _pct(share: float) -> str:
    return f"{100 * share:.0f}%" if math.isfinite(share) else "not reached"


def report(grid: dict, seeds: int, check: str | None) -> str:
    """Run every searcher for every seed; the table, the figure, the verdict."""
    from bench.common import machine_line

    table = grid["table"]
    finals = {k: e["curve"][-1][M.EVAL_LOSS] for k, e in table.items()}
    best_key = min(finals, key=finals.get)
    target = finals[best_key] * (1 + TOLERANCE)
    grid_steps = sum(e["curve"][-1][M.STEP] for e in table.values())
    near = sum(v <= target for v in finals.values())
    runs: dict[str, list[list[dict]]] = {}
    for seed in range(seeds):
        for name, (searcher, scheduler) in searchers(seed, len(table)).items():
            runs.setdefault(name, []).append(replay(table, searcher, scheduler, grid_steps))
    grid_order = [
        {"key": k, "steps": e["curve"][-1][M.STEP], "finished": True, "value": finals[k]}
        for k, e in table.items()
    ]
    lines = [
        f"Grid recorded on: {machine_line(grid['machine'])}; {len(table)} configurations, "
        f"{grid_steps} trial-steps, {grid['wall_s'] / 60:.1f} min.",
        f"Grid best eval loss {finals[best_key]:.4f} ({best_key}); target within "
        f"{TOLERANCE:.0%}: <= {target:.4f}, met by {near} of {len(table)} configurations.",
        f"Budget per search: the grid's compute ({grid_steps} trial-steps); {seeds} seeds each; "
        f"ASHA grace {GRACE}, reduction factor {REDUCTION:g}, max_t {MAX_T}.",
        "",
        f"| searcher | reached (seeds) | compute to reach {TOLERANCE:.0%}, median | [min-max] "
        f"| to reach {LOOSE:.0%}, median | trials run, median |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    shares = {}
    for name, seed_runs in runs.items():
        need = [steps_to_reach(events, target) / grid_steps for events in seed_runs]
        reached = [x for x in need if math.isfinite(x)]
        shares[name] = statistics.median(need)
        med, spread = _pct(shares[name]), f"[{_pct(min(need))}-{_pct(max(need))}]"
        loose = statistics.median(
            steps_to_reach(events, finals[best_key] * (1 + LOOSE)) / grid_steps
            for events in seed_runs
        )
        trials = statistics.median(len(e) for e in seed_runs)
        lines.append(
            f"| {name} | {len(reached)}/{len(need)} | {med} | {spread} | {_pct(loose)} "
            f"| {trials:g} |"
        )
    grid_loose = steps_to_reach(grid_order, finals[best_key] * (1 + LOOSE)) / grid_steps
    lines.append(
        f"| grid (in its order) | - | {_pct(steps_to_reach(grid_order, target) / grid_steps)}"
        f" | - | {_pct(grid_loose)} | {len(table)} |"
    )
    ours, stock = shares[OURS], shares["stock OptunaSearch + ASHA"]
    lines += [
        "",
        f"Goal (ours within 1% of the grid's best with at most 20% of the grid's compute, and "
        f"better than stock OptunaSearch + ASHA): median {_pct(ours)} -> "
        + ("met" if ours <= 0.2 else "NOT met")
        + f"; stock needs {_pct(stock)} -> ours is "
        + ("better." if ours < stock else "not better."),
    ]
    if check:
        lines += ["", check]
    info = anytime_info(
        {
            name: [[(e["steps"], e["value"], e["finished"]) for e in ev] for ev in seed_runs]
            for name, seed_runs in runs.items()
        },
        total=grid_steps,
        reference=finals[best_key],
    )
    OUT.mkdir(exist_ok=True)
    for ext in ("png", "svg"):
        plot_anytime(
            info, FIGURES / f"search_efficiency.{ext}", tolerance=TOLERANCE, highlight=OURS
        )
    return "\n".join(lines)


def main() -> None:
    """Grid (when missing or --regrid), then the replays and the report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=10, help="seeds per searcher (default 10)")
    parser.add_argument("--regrid", action="store_true", help="train the grid again")
    parser.add_argument("--jobs", type=int, default=2, help="grid trials at once (default 2)")
    parser.add_argument(
        "--check-tuner",
        action="store_true",
        help="also replay ours for seed 0 through a real Ray Tuner",
    )
    args = parser.parse_args()
    if args.regrid or not GRID_FILE.is_file():
        GRID_FILE.parent.mkdir(exist_ok=True)
        GRID_FILE.write_text(json.dumps(run_grid(args.jobs), indent=1))
    grid = json.loads(GRID_FILE.read_text())
    steps = sum(e["curve"][-1][M.STEP] for e in grid["table"].values())
    check = check_tuner(grid["table"], 0, steps) if args.check_tuner else None
    text = report(grid, args.seeds, check)
    (OUT / "search_efficiency.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
