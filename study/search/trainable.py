"""The per-trial Ray code of a study: a trial's config -> its run -> tune.report.

The trial runs in a process forked for it from the study's fork server (``study.forkserver``:
torch, transformers and bitsandbytes already imported) when the study has one, else here in the
Ray worker. Either way ``study.search.runner.run`` does the work and decides which failures end the
trial and which Ray retries; this module only carries its reports to Tune. It imports neither
torch nor the trial code unless the trial runs here: a forked trial's worker starts in well
under a second.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from study import metrics as M
from study.search import forks


def tune_result(metrics: dict) -> dict:
    """A report as Tune gets it: every metric present, NaN where it is not measured (yet).

    Tune refuses a result without the searcher's and the scheduler's metrics, and latencies exist
    only in a trial's last report; the searcher and ASHA read NaN as "not known yet".
    """
    nan = float("nan")
    known = {k: v for k, v in metrics.items() if v is not None}
    return {**{m: nan for m in M.QUALITY + M.RESOURCES}, **known}


def trainable(
    config: dict,
    experiment_dir: str,
    max_mem_mb: float | None = None,
    fork_server: str | None = None,
    gpu_share: float | None = None,
) -> None:
    """Run one trial of a study inside Ray Tune (a function trainable).

    ``fork_server``: the study's fork-server socket, or None to run the trial in this worker.
    ``gpu_share``: the fraction of a GPU each trial has (``--gpus-per-trial`` below 1), or None.
    The trial directory is ``<experiment_dir>/<trial name>`` (named by the study).
    """
    from ray import tune

    trial_dir = Path(experiment_dir) / tune.get_context().get_trial_name()

    def report(metrics: dict) -> None:
        tune.report(tune_result(metrics))

    if fork_server:
        request = {
            "config": config,
            "trial_dir": str(trial_dir),
            "max_mem_mb": max_mem_mb,
            "env": dict(os.environ),  # Ray's per-worker settings (threads, devices) included
            "cwd": os.getcwd(),
        }
        try:
            forks.run_forked(fork_server, request, report)
            return
        except forks.ServerGone as err:  # only the start-up saving is lost
            print(f"study.search.trainable: {err}; the trial runs in its Ray worker",
                  file=sys.stderr)
    from study.search import runner

    runner.run(config, trial_dir, max_mem_mb, report, gpu_share)
