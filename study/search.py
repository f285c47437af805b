"""The searcher and scheduler of a study, and the memory estimate that gates launches.

- :class:`StudySearch`: Ray's ``OptunaSearch`` (TPE) with the hand-off fixed: a trial that ASHA
  stopped reaches Optuna as PRUNED (stock OptunaSearch tells it COMPLETE with its partial value,
  which teaches TPE that early, worse numbers are final), an errored one as FAIL, and only a
  finished trial (its last report is marked ``final``) as COMPLETE with every objective.
  Configurations over the memory budget are told FAIL and never launched; a configuration that
  was already run is not run again (trials are deterministic: Optuna gets the earlier outcome).
- :class:`StudyASHA`: ASHA on optimizer steps whose rungs can be rebuilt from recorded results
  after ``--resume`` (Ray does not save scheduler state).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace

from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from study import metrics as M
from study import record

log = logging.getLogger(__name__)


class StudySearch(OptunaSearch):
    """OptunaSearch with PRUNED / FAIL hand-off and a launch filter (see the module docstring).

    Args:
        accept: called with a suggested config (nested dict); False -> the config is told FAIL
            and another is asked for (at most ``max_rejects`` times in a row).
    """

    def __init__(
        self,
        *args,
        accept: Callable[[dict], str | None] | None = None,
        max_rejects: int = 200,
        record_dir: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._accept = accept
        self._max_rejects = max_rejects
        self._record_dir = record_dir
        self.rejected: list[tuple[dict, str]] = []
        self.repeats = 0  # suggestions answered from an earlier identical trial
        self._reported: dict[str, set[int]] = {}  # trial id -> steps told to Optuna

    def suggest(self, trial_id: str) -> dict | str | None:
        """A new configuration; one already run is answered from its record, not run again.

        Trials are seeded and deterministic, so a configuration that already finished, was
        stopped or failed would do exactly the same again: Optuna is told the earlier outcome
        for the repeat (TPE keeps its model) and asked for another. When a finite space has no
        untried configuration left, the search ends (``Searcher.FINISHED``).
        """
        repeats = 0
        for _ in range(self._max_rejects):
            config = super().suggest(trial_id)
            if config is None:
                return None
            if self._answer_repeat(trial_id):
                repeats += 1
                continue
            reason = self._accept(config) if self._accept else None
            if reason is None:
                return config
            ot_trial = self._ot_trials.pop(trial_id)
            self._ot_study.tell(ot_trial, None, state=_state("FAIL"))
            self.rejected.append((config, reason))
            log.info("not launched: %s", reason)
            self._record()
        if repeats == self._max_rejects:
            log.info("every suggestion repeats a configuration already run: search finished")
            return Searcher.FINISHED
        raise RuntimeError(
            f"{self._max_rejects} suggestions in a row were rejected: {self.rejected[-1][1]}"
        )

    def _answer_repeat(self, trial_id: str) -> bool:
        """Tell Optuna the earlier outcome if this trial's params were already run; True if so."""
        ot_trial = self._ot_trials[trial_id]
        done = (_state("COMPLETE"), _state("PRUNED"), _state("FAIL"))
        for earlier in self._ot_study.get_trials(deepcopy=False, states=done):
            if earlier.params != ot_trial.params:  # (this trial is RUNNING: not among them)
                continue
            if earlier.state == _state("PRUNED") and not isinstance(self.metric, list):
                for step, value in earlier.intermediate_values.items():
                    ot_trial.report(value, step)  # TPE ranks pruned trials by their last value
            values = earlier.values if earlier.state == _state("COMPLETE") else None
            if values is not None and not isinstance(self.metric, list):
                values = values[0]
            self._ot_study.tell(ot_trial, values, state=earlier.state)
            self._ot_trials.pop(trial_id)
            self.repeats += 1
            self._record()
            return True
        return False

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id in self._completed_trials:
            return  # Optuna takes intermediate values for single-objective studies only
        value = result.get(self.metric)
        if value is not None and math.isfinite(value):
            self._ot_trials[trial_id].report(value, result[M.STEP])  # steps, not iterations
            self._reported.setdefault(trial_id, set()).add(result[M.STEP])

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if error or (result and result.get("error")):
            state, values = "FAIL", None
        elif result and record.is_final(result):
            values = [result.get(m) for m in metrics]
            if any(v is None or not math.isfinite(v) for v in values):
                state, values = "FAIL", None
            else:
                state = "COMPLETE"
                values = values if isinstance(self.metric, list) else values[0]
        else:
            state, values = "PRUNED", None
            # The result that made ASHA stop the trial never reached on_trial_result (Tune hides
            # it from the searcher): record it, so TPE ranks the pruned trial by its last value.
            single = not isinstance(self.metric, list)  # multi-objective takes no values
            value = (result or {}).get(self.metric) if single else None
            step = (result or {}).get(M.STEP)
            if (
                value is not None
                and step is not None
                and math.isfinite(value)
                and step not in self._reported.get(trial_id, ())
            ):
                ot_trial.report(value, step)
        self._ot_study.tell(ot_trial, values, state=_state(state))
        self._completed_trials.add(trial_id)
        self._record()

    def _record(self) -> None:
        """Write the Optuna study as JSON (states, values, params) and the rejected configs."""
        if not self._record_dir:
            return
        trials = [
            {"number": t.number, "state": t.state.name, "values": t.values, "params": t.params}
            for t in self._ot_study.get_trials(deepcopy=False)
        ]
        searcher_record = {
            "study_name": self._ot_study.study_name,
            "metric": self.metric,
            "mode": self.mode,
            "trials": trials,
            "rejected": [{"config": c, "reason": r} for c, r in self.rejected],
            "repeats": self.repeats,
        }
        record.write_optuna(Path(self._record_dir), searcher_record)

    def optuna_study(self):
        """The underlying optuna.Study (for summaries and tests)."""
        return self._ot_study


def _state(name: str):
    from optuna.trial import TrialState

    return getattr(TrialState, name)


class StudyASHA(ASHAScheduler):
    """ASHA whose rungs are rebuilt from recorded results when a study resumes.

    Args:
        replay: returns (trial_id, curve points) recorded before the resume; called once, when
            the first trial is added, so the rungs hold every recorded result before any new one
            is judged.
    """

    def __init__(
        self, *args, replay: Callable[[], Iterable[tuple[str, list[dict]]]] | None = None, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self._replay = replay

    def on_trial_add(self, tune_controller, trial) -> None:
        if self._replay is not None:
            replay, self._replay = self._replay, None
            self.rebuild(replay())
        if trial.trial_id not in self._trial_info:
            super().on_trial_add(tune_controller, trial)

    def rebuild(self, curves: Iterable[tuple[str, list[dict]]]) -> int:
        """Pass every recorded (step, metric) point through its bracket; return #points.

        ``_Bracket.on_result`` fills the rungs exactly as the live run did; the stop decisions it
        returns concern the past and are ignored. With several brackets a trial joins the least
        filled one (the original choice was random and is not recorded).
        """
        points = 0
        for trial_id, curve in curves:
            if trial_id not in self._trial_info:
                sizes = [sum(len(r) for _, r in b._rungs) for b in self._brackets]
                self._trial_info[trial_id] = self._brackets[sizes.index(min(sizes))]
            bracket = self._trial_info[trial_id]
            stand_in = SimpleNamespace(trial_id=trial_id)
            for point in curve:
                value, step = point.get(self._metric), point.get(self._time_attr)
                if value is not None and step is not None:
                    bracket.on_result(stand_in, step, value * self._metric_op)
                    points += 1
        return points


def tpe_sampler(seed: int, num_samples: int | None = None):
    """Optuna's TPE, seeded, multivariate, with its random start sized to the study.

    TPE samples at random for its first ``n_startup_trials`` (Optuna's default 10) before it
    models anything. Studies here are often small (the demo runs 8 trials), so a quarter of the
    planned trials, between 3 and 10, start at random and the rest are guided. Multivariate TPE
    models the parameters jointly (rank, alpha, lr and targets interact: the best lr depends on
    the scaling alpha / r); bench/search_efficiency.py measures both choices.
    """
    from optuna.samplers import TPESampler

    startup = 10 if num_samples is None else max(3, min(10, num_samples // 4))
    return TPESampler(seed=seed, n_startup_trials=startup, multivariate=True)


def make_search(
    objectives: list[str],
    *,
    seed: int,
    max_t: int,
    grace: int,
    reduction_factor: float,
    points: list[dict] | None = None,
    study_name: str | None = None,
    accept: Callable[[dict], str | None] | None = None,
    record_dir: str | None = None,
    replay: Callable[[], Iterable[tuple[str, list[dict]]]] | None = None,
    num_samples: int | None = None,
) -> tuple[StudySearch, StudyASHA]:
    """The study's searcher (TPE on every objective) and scheduler (ASHA on the first one).

    One place builds both, so ``study.tune`` and ``bench/search_efficiency.py`` run the same
    search. ASHA counts optimizer steps (``step``), not Ray iterations.
    """
    modes = [M.mode(o) for o in objectives]
    multi = len(objectives) > 1
    searcher = StudySearch(
        metric=objectives if multi else objectives[0],
        mode=modes if multi else modes[0],
        sampler=tpe_sampler(seed, num_samples),
        points_to_evaluate=points or None,
        accept=accept,
        record_dir=record_dir,
        **({"study_name": study_name} if study_name else {}),
    )
    scheduler = StudyASHA(
        time_attr=M.STEP,
        metric=objectives[0],
        mode=modes[0],
        max_t=max_t,
        grace_period=min(grace, max_t),
        reduction_factor=reduction_factor,
        replay=replay,
    )
    return searcher, scheduler
