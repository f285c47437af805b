"""What the searcher tells Optuna: a configuration's outcome once its replicates have ended, and
the answers to suggestions that are not launched (run before, running now, over the budget).

    # a configuration in progress (study.search.searcher)
    config = Config(trial, runs, config_id)
    frozen = tell_outcome(study, config, objectives)

Ray-free (the searcher, ``study.search.searcher``, is the Ray side); the rules of the outcome are
``study.search.replicates``', the names of what is recorded ``study.journal``'s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from study import journal
from study.search import replicates as R

log = logging.getLogger(__name__)


@dataclass
class Config:
    """A configuration in progress: its Optuna trial, its replicates, the steps told so far."""

    trial: object  # optuna.Trial
    runs: list[R.Run]
    config_id: str | None
    reported: set[int] = field(default_factory=set)

    def save(self) -> None:
        """Record the replicates in the journal (after every change; see
        ``journal.REPLICATES``)."""
        self.trial.set_user_attr(journal.REPLICATES, [r.to_record() for r in self.runs])

    @property
    def ended(self) -> bool:
        return all(r.ended for r in self.runs)


def tell_outcome(study, config: Config, n_objectives: int):
    """Tell Optuna the outcome of ``config``, whose replicates have all ended
    (``replicates.outcome``); returns the FrozenTrial."""
    from optuna.trial import TrialState

    single = n_objectives == 1
    state, values, steps = R.outcome(config.runs, n_objectives)
    trial = config.trial
    if state == R.FAIL:
        errors = [r.error for r in config.runs if r.error]
        reason = errors[0] if errors else "the trial crashed"
        k = len(config.runs)
        trial.set_user_attr(journal.ERROR, reason if k == 1 else
                            f"all {k} replicates failed; the first: {reason}")
    elif single:
        for step, value in steps.items():
            if step not in config.reported:
                trial.report(value, step)  # TPE ranks pruned trials by their last value
    if values is not None and single:
        values = values[0]
    return study.tell(trial, values, state=TrialState[state])


def tell_not_launched(study, trial, excess: float, max_mem_mb: float) -> None:
    """``trial`` is over ``--max-mem-mb`` by ``excess`` MB: PRUNED, no value, its excess as the
    constraint (which TPE reads; it ignores FAIL) and the reason as a user attribute."""
    from optuna.trial import TrialState

    estimate = excess + max_mem_mb
    reason = (f"estimated peak with its error band {estimate:.0f} MB > --max-mem-mb "
              f"{max_mem_mb:g}")
    trial.set_user_attr(journal.NOT_LAUNCHED, reason)
    trial.set_constraint(journal.MEMORY, excess)
    study.tell(trial, state=TrialState.PRUNED)
    log.info("not launched: %s", reason)


def tell_like(study, trial, earlier, attr: str) -> None:
    """Tell ``trial`` the outcome of ``earlier`` (same params), marked with ``attr``."""
    from optuna.trial import TrialState

    single = len(study.directions) == 1
    trial.set_user_attr(attr, earlier.number)
    for name, value in earlier.constraints.items():
        trial.set_constraint(name, value)
    if earlier.state == TrialState.PRUNED and single:
        for step, value in earlier.intermediate_values.items():
            trial.report(value, step)  # TPE ranks pruned trials by their last value
    values = earlier.values if earlier.state == TrialState.COMPLETE else None
    if values is not None and single:
        values = values[0]
    study.tell(trial, values, state=earlier.state)
