"""The searcher of a study: Optuna's ask/tell API behind Tune's public ``Searcher`` interface.

    searcher, scheduler = make_search(objectives, space=space, seed=0, max_t=40, grace=10, ...)

:class:`StudySearch` asks an Optuna study (in the study's ``optuna.journal`` when it runs under
``study.tune``; see ``study.journal`` for what the record holds) and tells it each outcome:

- a trial that ran to its end (its last report is marked ``final``) is COMPLETE with every
  objective; one that ASHA stopped is PRUNED with its intermediate values (Ray's stock
  ``OptunaSearch`` tells it COMPLETE with its partial value, which teaches TPE that early, worse
  numbers are final); one that errored is FAIL;
- with ``--repeats K`` a configuration runs as K Ray trials (its replicates, seeded seed+0 ..
  seed+K-1, see ``study.search.replicates``); Optuna is asked once and told once, when all K have
  ended: COMPLETE with their mean, PRUNED when none finished, FAIL when all errored;
- a configuration over ``--max-mem-mb`` (estimated on the whole config it would run, the space's
  fixed values included) is not launched: PRUNED with no value and its excess as the constraint
  ``memory_mb``, which TPE reads (it ignores FAIL) and the importance evaluators skip;
- a configuration that already ran is not run again (trials are seeded and deterministic): the
  new suggestion is told the earlier outcome; one suggested while the same configuration runs
  waits and is told that trial's outcome when it ends, so no configuration runs twice at once;
- the search ends (``Searcher.FINISHED``, the reason kept as the study attribute
  ``search_ended``) after ``num_samples`` launched trials, when a finite space has no untried
  configuration under the budget left, or after ``max_tries`` unlaunchable suggestions in a row;
- on ``--resume`` a trial a kill left RUNNING is marked FAIL and its parameters are asked again
  (first); its replicates that ended keep their outcome (recorded in the journal), the others
  run again in their own trial directories, so every configuration is resolved exactly once.

What the study holds (configurations resolved, running, queued; those of a finite space under
the budget) the searcher asks its Ray-free mixin, ``study.search.ledger.StudyLedger``.

Only this module and ``study.search.asha`` (the scheduler) know Tune's searcher and scheduler hooks.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Iterable

from ray.tune.search import Searcher

from search_spaces import fixed_values, grid, to_optuna
from study import journal
from study import metrics as M
from study.config import TrialConfig
from study.search import replicates as R
from study.search.asha import StudyASHA
from study.search.ledger import StudyLedger, config_key
from study.search.samplers import make_sampler, retries
from study.search.telling import Config, tell_like, tell_not_launched, tell_outcome

log = logging.getLogger(__name__)


class StudySearch(StudyLedger, Searcher):
    """Tune searcher on an Optuna study (see the module docstring).

    Args:
        objectives, modes: the metrics Optuna optimizes and their directions ("min" / "max").
        space: the search space (``search_spaces``): its searched keys become Optuna
            distributions, its fixed values complete a suggestion for the memory estimate.
        sampler: an Optuna sampler (``study.search.samplers.make_sampler`` in a study).
        storage: Optuna storage (``study.journal.storage``); None keeps the study in memory.
        study_name: the Optuna study's name (a study's ``--name``).
        points: configurations (searched keys) to try first, queued one at a time after any
            pending resume; the journal counts those asked (``points_asked``), so a resumed
            study goes on with the next.
        estimate_mb: the estimated peak memory of a whole config; with ``max_mem_mb``, the
            budget a configuration must fit to be launched.
        num_samples: the most trials launched in the whole study (None: no limit).
        max_tries: suggestions in a row that may be answered without a launch before the
            search ends (a finite space gets one untried configuration enqueued first).
        repeats: replicates of each configuration (``--repeats``).
    """

    def __init__(
        self,
        objectives: list[str],
        modes: list[str],
        *,
        space: dict,
        sampler=None,
        storage=None,
        study_name: str | None = None,
        points: list[dict] | None = None,
        estimate_mb: Callable[[dict], float] | None = None,
        max_mem_mb: float | None = None,
        num_samples: int | None = None,
        max_tries: int = 200,
        curves: Callable[[], Iterable[tuple]] | None = None,
        repeats: int = 1,
    ) -> None:
        import optuna

        multi = len(objectives) > 1
        super().__init__(
            metric=list(objectives) if multi else objectives[0],
            mode=list(modes) if multi else modes[0],
        )
        self.objectives, self.single = list(objectives), not multi
        self.distributions = to_optuna(space)
        self.fixed = fixed_values(space)
        self.estimate_mb, self.max_mem_mb = estimate_mb, max_mem_mb
        self.num_samples, self.max_tries = num_samples, max_tries
        self.curves = curves  # (trial directory, curve, ...) of the recorded trials (a resume)
        directions = ["maximize" if m == "max" else "minimize" for m in modes]
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(
            storage=storage,
            sampler=sampler,
            study_name=study_name,
            directions=directions,
            load_if_exists=True,
        )
        if [d.name.lower() for d in self.study.directions] != directions:
            raise ValueError(f"the Optuna study {study_name!r} has other objectives")
        self.points = list(points or [])  # asked one at a time, after pending resumes
        journal.mark_interrupted(self.study)
        self.repeats = repeats
        self.configs: dict[int, Config] = {}  # Optuna trial number -> a config in progress
        self.live: dict[str, tuple[int, int]] = {}  # Ray trial id -> (number, replicate)
        self.dirs: dict[str, str] = {}  # Ray trial id -> trial directory name
        self.waiting: dict[int, list] = {}  # running trial number -> duplicates told at its end
        self.admissible = self._admissible(grid(space))
        self.rng = random.Random(0)  # picks an untried configuration when the sampler stalls

    def _end(self, reason: str) -> str:
        log.info("search finished: %s", reason)
        self.study.set_user_attr(journal.SEARCH_ENDED, reason)
        return Searcher.FINISHED

    # ------------------------------------------------------------------------ Tune's hooks
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        """The space, metric and mode are given at construction; Tune's are not needed."""
        return True

    def trial_dir(self, trial_id: str) -> str:
        """The trial directory name of a Ray trial (its id, or the one it resumes)."""
        return self.dirs.get(trial_id, trial_id)

    def suggest(self, trial_id: str) -> dict | str | None:
        """The next trial to launch (searched keys, seed and identity), or
        ``Searcher.FINISHED``: a replicate of a configuration in progress first."""
        for config in self.configs.values():
            for replicate, run in enumerate(config.runs):
                if not run.ended and not run.active:
                    return self._start_replicate(trial_id, config, replicate)
        if self.num_samples is not None and self._launched() >= self.num_samples:
            return Searcher.FINISHED
        for _ in range(self.max_tries):
            resolved, running = self._resolved(), self.running()
            if self.admissible is not None and self.admissible <= resolved.keys() | running:
                return self._end(self._exhausted_reason())
            self._queue_next()
            trial = self.study.ask(self.distributions)
            key = config_key(trial.params)
            if key in resolved:
                tell_like(self.study, trial, resolved[key], journal.REPEAT_OF)
                continue
            if key in running:
                trial.set_user_attr(journal.DUPLICATE_OF, running[key].number)
                self.waiting.setdefault(running[key].number, []).append(trial)
                continue
            excess = self._excess(trial.params)
            if excess > 0:
                tell_not_launched(self.study, trial, excess, self.max_mem_mb)
                continue
            if self.max_mem_mb and self.estimate_mb is not None:
                trial.set_constraint(journal.MEMORY, excess)  # feasible: <= 0
            if (config := self._launch(trial_id, trial)) is not None:
                return config  # (None: a resumed configuration whose replicates had all ended)
        if self.admissible is not None:
            # The sampler keeps proposing what is resolved: try an untried one of the space.
            untried = sorted(self.admissible - self._resolved().keys() - self.running().keys())
            if untried:
                self._enqueue(json.loads(self.rng.choice(untried)))
                return self.suggest(trial_id)
        return self._end(
            f"{self.max_tries} suggestions in a row were configurations already run or over "
            "--max-mem-mb"
        )

    def _launch(self, trial_id: str, trial) -> dict | None:
        """Start ``trial``'s configuration with its first replicate under Ray trial
        ``trial_id``. A resumed one keeps what its replicates did (their directories, the
        outcomes of those that ended) and, with one replicate, its intermediate values so far;
        None when all of its replicates had ended (it is told now)."""
        runs = R.replicates_of(self.study, trial, self.repeats)
        config = self.configs[trial.number] = Config(trial, runs, self._config_id(trial.params))
        config.save()  # before TRIAL_DIR: a kill in between still finds the directories
        trial.set_user_attr(journal.TRIAL_DIR, runs[0].dir or trial_id)
        if self.study.user_attrs.get(journal.SEARCH_ENDED):
            self.study.set_user_attr(journal.SEARCH_ENDED, None)  # an earlier end, now moot
        if journal.RESUMES in trial.user_attrs and self.single and self.repeats == 1:
            earlier = self.study.get_trials(deepcopy=False)[trial.user_attrs[journal.RESUMES]]
            values = {**self._recorded(runs[0].dir), **earlier.intermediate_values}
            for step, value in sorted(values.items()):
                trial.report(value, step)
            config.reported = set(values)
        if config.ended:
            self._tell_config(config)
            return None
        replicate = next(r for r, run in enumerate(runs) if not run.ended)
        return self._start_replicate(trial_id, config, replicate)

    def _config_id(self, params: dict) -> str | None:
        try:
            return TrialConfig.from_dict({**self.fixed, **params}).config_id()
        except ValueError:
            return None  # a combination the space allows but a config refuses: the trial errors

    def _start_replicate(self, trial_id: str, config: Config, replicate: int) -> dict:
        """Launch replicate ``replicate`` of ``config`` (into its directory if it had one)."""
        run = config.runs[replicate]
        name = run.dir or trial_id
        if run.dir is not None:  # resumed: what it evaluated before the kill is in its curve
            run.steps = {**self._recorded(name), **run.steps}
        run.dir, run.active = name, True
        self.live[trial_id], self.dirs[trial_id] = (config.trial.number, replicate), name
        config.save()
        params = config.trial.params
        seed = params.get("seed", self.fixed.get("seed", TrialConfig().seed))
        return R.seeded(dict(params), seed, replicate, config.config_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self.live:
            return
        number, replicate = self.live[trial_id]
        config = self.configs[number]
        value, step = result.get(self.objectives[0]), result.get(M.STEP)
        if value is None or step is None or not math.isfinite(value):
            return
        config.runs[replicate].steps[step] = value
        # One replicate: Optuna gets each value as it comes (steps, not Ray iterations), as a
        # live record; several: their mean, once all have ended (single-objective studies only)
        if self.single and self.repeats == 1 and step not in config.reported:
            config.trial.report(value, step)
            config.reported.add(step)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id not in self.live:
            return
        result = result or {}
        failed = error or result.get("error")
        if not failed:
            # The result on which ASHA stopped the trial (a weak one, or the last one at max_t)
            # never reached on_trial_result (Tune hides it from the searcher): record it, so
            # TPE ranks a pruned trial by its last value and every evaluation is in Optuna.
            self.on_trial_result(trial_id, result)
        number, replicate = self.live.pop(trial_id)
        config = self.configs[number]
        config.runs[replicate].end(result, self.objectives, bool(failed))
        config.save()
        if config.ended:
            self._tell_config(config)

    def _tell_config(self, config: Config) -> None:
        """Tell Optuna the outcome of ``config`` (all its replicates ended); and its waiting
        duplicates."""
        del self.configs[config.trial.number]
        frozen = tell_outcome(self.study, config, len(self.objectives))
        for duplicate in self.waiting.pop(frozen.number, []):
            tell_like(self.study, duplicate, frozen, journal.DUPLICATE_OF)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the Optuna journal is the searcher's state (Tune calls this)."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore: a resumed study reads its Optuna journal (see __init__)."""


def make_search(
    objectives: list[str],
    *,
    space: dict,
    seed: int,
    max_t: int,
    grace: int,
    reduction_factor: float,
    points: list[dict] | None = None,
    storage=None,
    study_name: str | None = None,
    estimate_mb: Callable[[dict], float] | None = None,
    max_mem_mb: float | None = None,
    replay: Callable[[], Iterable[tuple[str, list[dict]]]] | None = None,
    num_samples: int | None = None,
    search: str = "tpe",
    scheduler: str = "asha",
    repeats: int = 1,
) -> tuple[StudySearch, StudyASHA | None]:
    """The study's searcher (``--search`` on every objective) and scheduler (ASHA on the first
    one, or None with ``--scheduler none``: Tune's FIFO, every trial runs to its end).

    One place builds both, so ``study.tune`` and ``bench/search_efficiency.py`` run the same
    search. ASHA counts optimizer steps (``step``), not Ray iterations, and knows a trial by its
    directory (the searcher's name for it), so a resumed trial keeps its place in the rungs.
    """
    modes = [M.mode(o) for o in objectives]
    searcher = StudySearch(
        objectives,
        modes,
        space=space,
        sampler=make_sampler(search, space, seed, num_samples),
        storage=storage,
        study_name=study_name,
        points=points,
        estimate_mb=estimate_mb,
        max_mem_mb=max_mem_mb,
        num_samples=num_samples,
        curves=replay,
        repeats=repeats,
        max_tries=retries(search),
    )
    if scheduler == "none":
        return searcher, None
    asha = StudyASHA(
        time_attr=M.STEP,
        metric=objectives[0],
        mode=modes[0],
        max_t=max_t,
        grace=min(grace, max_t),
        reduction_factor=reduction_factor,
        key=lambda trial: searcher.trial_dir(trial.trial_id),
        replay=replay,
    )
    return searcher, asha
