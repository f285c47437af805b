"""python -m study.tune: a LoRA hyperparameter study with Optuna (TPE) + ASHA on Ray Tune.

    python -m study.tune                                   # bundled model, skills, `default` space
    python -m study.tune --space smoke --num-samples 6 --name first-look
    python -m study.tune --objective exact_match,peak_mem_mb --max-mem-mb 3000
    python -m study.tune --name my-study --resume          # continue after Ctrl-C or a crash

Results go to ``<storage-path>/<name>/``: ``study.json`` (command line, resolved search space,
schema version), ``search/<trial>/`` for the searched trials and ``baselines/<trial>/`` for the
``base`` model and one ``full`` fine-tuning run. Each trial directory holds the files of
``run_trial`` plus ``status.json``. Build the report with ``python -m analysis report DIR``.
"""

from __future__ import annotations

import sys
import time

from study.search.options import StudyOptions, UsageError, parse_options


def parse_args(argv: list[str] | None = None) -> StudyOptions:
    """The command line as StudyOptions (this module's docstring is its help)."""
    return parse_options(argv, __doc__)


def main(argv: list[str] | None = None) -> int:
    """Check everything, run the study, print its summary; bad input -> one line, exit code 2."""
    options = parse_args(argv)
    from study.cost.estimate import band_of, estimator
    from study.search.leftovers import end_leftovers
    from study.search.plan import claim, plan_study

    try:
        plan = plan_study(options, argv if argv is not None else sys.argv[1:])
        lock = claim(plan)  # one process per study, from here to the end of the run
    except (UsageError, ValueError) as err:
        print(f"study.tune: error: {err}", file=sys.stderr)
        return 2
    from analysis.summary import print_summary  # the entry point may use analysis; study may not
    from study.cost.timing import trial_estimator
    from study.search.tuner import run_study  # Ray: imported once the input is known to be good

    if plan.time is not None:
        print(f"study.tune: {plan.time.describe()}", flush=True)
    started = time.monotonic()
    try:
        if ended := end_leftovers(plan.study_dir):  # an earlier driver was killed: its Ray
            print(f"study.tune: warning: ended {len(ended)} Ray processes a killed run of this "
                  f"study left (pids {', '.join(map(str, ended))})", file=sys.stderr)
        run_study(plan)
    finally:
        lock.release()
    print_summary(
        plan.study_dir,
        plan.objectives,
        plan.options.num_samples,
        plan.options.time_budget_s,
        estimate=estimator(plan.facts, plan.worker_mb),
        duration=trial_estimator(plan.facts, plan.forked),
        band=band_of,
    )
    wall = time.monotonic() - started
    planned = f" (estimated {plan.time.total_s / 60:.1f} min)" if plan.time else ""
    print(f"Wall time of this run: {wall / 60:.1f} min{planned}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
