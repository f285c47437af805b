"""The Ray wiring of a study: start Ray, run the baselines and the search as two Tune experiments.

    run_study(plan)     # a checked Plan (study.search.plan); writes study.json, then the trials

This module, the searcher and scheduler (``study.search.searcher``, ``study.search.asha``), the
callbacks (``study.search.callbacks``) and the trainable (``study.search.trainable``) are the
only ones that import Ray.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import ray
from ray import tune
from ray.tune import FailureConfig, RunConfig
from ray.tune.search import ConcurrencyLimiter

from search_spaces import choice_points, to_tune, tune_points
from study import journal, record
from study.config import TrialConfig
from study.cost.estimate import estimator
from study.search import forks, leftovers
from study.search.callbacks import LiveTable, StatusWriter
from study.search.options import StudyOptions, parse_resources
from study.search.plan import Plan, study_record
from study.search.replicates import baseline_repeats
from study.search.resume import damaged_lines, replay_curves
from study.search.searcher import make_search
from study.search.trainable import trainable


def _ray_init(options: StudyOptions) -> str:
    """Start (or join) Ray; return the session directory."""
    # Token auth: Ray 2.60 turns it on for a new local cluster when RAY_AUTH_MODE is unset (and
    # refreshes its cached config; setting the variable here, after ray is imported, would leave
    # the driver without its token). plan_study refuses --dashboard with any other mode.
    kwargs = {
        "include_dashboard": bool(options.dashboard),
        "log_to_driver": False,
        "configure_logging": True,
        "logging_level": "ERROR",
    }
    # Loopback only. The Docker image sets 0.0.0.0: inside a container that is the container's
    # own interface, which `docker run -p 127.0.0.1:8265:8265` publishes to the host's loopback.
    host = os.environ.get("LORA_STUDY_DASHBOARD_HOST", "127.0.0.1")
    if options.dashboard:
        kwargs.update(dashboard_host=host)
    if path := forks.user_pythonpath():  # a user's variant module, importable in every worker
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
    context = ray.init(address=options.address, **kwargs)
    if options.dashboard:
        print(f"Ray dashboard: http://{context.dashboard_url} (token auth; bound to {host})")
    return context.address_info["session_dir"]


def _resources(plan: Plan) -> dict:
    """Each trial's Ray resources: CPUs, the GPU share the plan resolved (``--gpus-per-trial``:
    a number, unset or auto) and the custom ones."""
    options = plan.options
    cpus = options.cpus_per_trial or max(1.0, (os.cpu_count() or 1) / options.max_concurrent)
    return {"cpu": cpus, "gpu": plan.gpus_per_trial, **parse_resources(options.resource)}


def _fit(plan: Plan, group: str, make_tuner, fork_server: str | None) -> None:
    """Run one group's Tune experiment; after a kill, a fresh one that continues the group.

    Nothing of Ray's own experiment state is read back: the Optuna journal says which
    configurations are resolved, the recorded curves rebuild ASHA's rungs, and a trial that was
    cut short resumes from the checkpoint in its own directory.
    """
    exp_dir = record.group_dir(plan.study_dir, group)
    budget = plan.options.time_budget_s if group == record.SEARCH else None
    callbacks = [
        StatusWriter(exp_dir, budget),
        LiveTable(exp_dir, label=f"[{group}]\n", objective=plan.objectives[0]),
    ]
    resources = _resources(plan)
    fn = tune.with_parameters(
        trainable,
        experiment_dir=str(exp_dir.resolve()),
        max_mem_mb=plan.options.max_mem_mb,
        fork_server=fork_server,
        gpu_share=resources["gpu"] or None,  # < 1: trials share a card
    )
    fn = tune.with_resources(fn, resources)
    run_config = RunConfig(
        name=group,
        storage_path=str(plan.study_dir.resolve()),
        verbose=0,
        failure_config=FailureConfig(max_failures=plan.options.max_failures),
        callbacks=callbacks,
    )
    make_tuner(fn, run_config).fit()


def _baseline_runs(plan: Plan) -> list[dict]:
    """Each baseline once per replicate (seeds seed+0 .. seed+K-1, as a searched
    configuration's; an unseeded base once: ``baseline_repeats``), with its identity
    (``record.CONFIG_ID``, ``record.REPLICATE``)."""
    runs = []
    for baseline in plan.baselines:
        config_id = TrialConfig.from_dict(baseline).config_id()
        for replicate in range(baseline_repeats(baseline, plan.options.repeats)):
            runs.append({**baseline, "seed": baseline["seed"] + replicate,
                         record.REPLICATE: replicate, record.CONFIG_ID: config_id})
    return runs


def _baseline_name(run: dict, plan: Plan) -> str:
    return record.baseline_name(run, list(plan.baselines), plan.options.repeats)


def _baselines_left(plan: Plan) -> list[dict]:
    """The baseline runs not yet finished or errored (each trial directory is named by
    ``record.baseline_name``)."""
    done = {
        d.name
        for d in record.trial_dirs(plan.study_dir, record.BASELINES)
        if record.read_status(d).get("status") in (record.FINISHED, record.ERRORED)
    }
    return [b for b in _baseline_runs(plan) if _baseline_name(b, plan) not in done]


def _baseline_tuner(baselines: list[dict], plan: Plan, fn, run_config):
    def name(trial) -> str:
        return _baseline_name(trial.config["baseline"], plan)

    return tune.Tuner(
        fn,
        run_config=run_config,
        param_space={"baseline": tune.grid_search(baselines)},
        tune_config=tune.TuneConfig(
            trial_name_creator=name,
            trial_dirname_creator=name,
            max_concurrent_trials=plan.options.max_concurrent,
        ),
    )


def _search_tuner(plan: Plan, fn, run_config):
    options = plan.options
    searcher, scheduler = make_search(
        plan.objectives,
        space=plan.space,
        seed=options.seed,
        max_t=plan.max_t,
        grace=plan.grace,
        reduction_factor=options.reduction_factor,
        points=tune_points(plan.space),
        storage=journal.storage(plan.study_dir),
        study_name=plan.name,
        estimate_mb=estimator(plan.facts, plan.worker_mb, gate=True),  # with its error band
        max_mem_mb=options.max_mem_mb,
        replay=functools.partial(replay_curves, plan.study_dir, record.SEARCH),
        num_samples=options.num_samples,
        search=options.search,
        scheduler=options.scheduler,
        repeats=options.repeats,
    )

    def name(trial) -> str:
        return searcher.trial_dir(trial.trial_id)

    return tune.Tuner(
        fn,
        param_space=to_tune(plan.space),
        run_config=run_config,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=options.max_concurrent),
            scheduler=scheduler,
            # a cap only: the searcher counts --num-samples configurations over the whole
            # study (resumes too), each run --repeats times
            num_samples=options.num_samples * options.repeats,
            time_budget_s=options.time_budget_s,
            trial_name_creator=name,
            trial_dirname_creator=name,
        ),
    )


def _fork_server(plan: Plan) -> forks.ForkServer | None:
    """The study's fork server (study.forkserver), started now, or None where trials start in
    their Ray workers. It preloads bitsandbytes only if some trial quantizes."""
    if not plan.forked:
        return None
    configs = []
    keys = ("model.name", "quant.bits", "quant.scheme")
    for point in [*choice_points(plan.space, keys), *plan.baselines]:
        try:
            configs.append(TrialConfig.from_dict(point))
        except ValueError:
            continue  # a combination the search never launches (full fine-tuning at 4 bits)
    models = sorted({c.model.name for c in configs})
    return forks.ForkServer.start(",".join(models), any(c.quant.bits < 16 for c in configs))


def run_study(plan: Plan) -> None:
    """Write study.json (a new study), start Ray, run the baselines, then the search."""
    if not plan.options.resume:
        record.write_study(plan.study_dir, study_record(plan))
    if plan.options.resume:  # before anything is appended or replayed: say what a kill left
        problems = [journal.repair(plan.study_dir), *damaged_lines(plan.study_dir)]
        for problem in filter(None, problems):
            print(f"study.tune: warning: {problem}", file=sys.stderr)
    server = _fork_server(plan)  # before Ray: its imports overlap Ray's start
    session_dir = None
    local = plan.options.address is None  # a joined cluster's processes are not ours to end
    try:
        session_dir = _ray_init(plan.options)
        if local:  # for the next run, if this driver is killed: see study.search.leftovers
            group = server.proc.pid if server else None  # its own session: pgid == pid
            leftovers.remember(plan.study_dir, session_dir, os.path.dirname(ray.__file__), group)
        socket = None
        if server is not None and server.ready():
            socket = server.socket
        elif server is not None:
            print(f"study.tune: warning: the trial fork server did not start (its log: "
                  f"{session_dir}/logs/{forks.LOG}); trials start in their Ray workers",
                  file=sys.stderr)
        if baselines := _baselines_left(plan):
            _fit(plan, record.BASELINES, functools.partial(_baseline_tuner, baselines, plan),
                 socket)
        _fit(plan, record.SEARCH, functools.partial(_search_tuner, plan), socket)
    finally:
        ray.shutdown()
        if server is not None:  # its log beside the Ray workers' logs
            server.close(keep_log=Path(session_dir, "logs") if session_dir else None)
        if local and session_dir:
            leftovers.forget(plan.study_dir)
