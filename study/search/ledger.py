"""What the searcher's Optuna study holds, for its decisions: the configurations resolved,
running and launched, the queue of fixed ones (pending resumes, then the points), which of a
finite space fit the memory budget, and what a resumed trial's curve recorded.

    class StudySearch(StudyLedger, Searcher): ...    # study.search.searcher

Ray-free: a mixin of :class:`study.search.searcher.StudySearch`, which sets the attributes
declared on :class:`StudyLedger` and makes every decision from what these methods answer (the
Tune side, ``suggest`` and the trial hooks, stays in the searcher).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable

from study import journal
from study import metrics as M
from study.search.telling import Config


def config_key(params: dict) -> str:
    """A configuration's identity among the study's trials: its parameters as sorted JSON."""
    return json.dumps(params, sort_keys=True, default=str)


class StudyLedger:
    """The searcher's questions to its Optuna study (see the module docstring)."""

    # set by StudySearch.__init__
    study: object  # optuna.Study
    objectives: list[str]
    fixed: dict
    points: list[dict]
    configs: dict[int, Config]
    estimate_mb: Callable[[dict], float] | None
    max_mem_mb: float | None
    curves: Callable[[], Iterable[tuple]] | None

    def _admissible(self, configs: list[dict] | None) -> set[str] | None:
        """Keys of a finite space's configurations under the budget (None: infinite space)."""
        if configs is None:
            return None
        return {config_key(c) for c in configs if self._excess(c) <= 0}

    def _excess(self, params: dict) -> float:
        """Estimated peak minus the budget, in MB (<= 0 fits; -inf without a budget)."""
        if self.estimate_mb is None or not self.max_mem_mb:
            return -math.inf
        return self.estimate_mb({**self.fixed, **params}) - self.max_mem_mb

    def _exhausted_reason(self) -> str:
        if self.max_mem_mb and self.estimate_mb is not None:
            limit = f"{self.max_mem_mb:g}"
            return f"every configuration of the space under --max-mem-mb {limit} has run"
        return "every configuration of the space has run"

    def _enqueue(self, params: dict, **attrs) -> None:
        self.study.enqueue_trial(params, user_attrs={journal.ENQUEUED: params, **attrs})

    def _queue_next(self) -> None:
        """Put the next fixed configuration in Optuna's queue: a pending resume, else a point.

        One at a time (Optuna asks its queue oldest first), so resumes go before the points
        left and nothing queued outlives the --num-samples budget unasked.
        """
        from optuna.trial import TrialState

        if self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return
        for number, params, directory in journal.pending_resumes(self.study):
            attrs = {journal.RESUMES: number}
            if directory:
                attrs[journal.RESUME_DIR] = directory
            self._enqueue(params, **attrs)
            return
        asked = self.study.user_attrs.get(journal.POINTS_ASKED, 0)
        if asked < len(self.points):
            self._enqueue(self.points[asked])  # (a kill here asks the point twice: a repeat)
            self.study.set_user_attr(journal.POINTS_ASKED, asked + 1)

    def _resolved(self) -> dict[str, object]:
        """Key -> the launched trial that resolved it (finished, stopped or errored)."""
        out = {}
        for trial in journal.launched(self.study):  # (interrupted trials are not among them)
            if trial.state.is_finished():
                out.setdefault(config_key(trial.params), trial)
        return out

    def running(self) -> dict[str, object]:
        """Key -> the Optuna trial of each configuration whose replicates have not all ended."""
        return {config_key(c.trial.params): c.trial for c in self.configs.values()}

    def _launched(self) -> int:
        return len(journal.launched(self.study))

    def _recorded(self, name: str | None) -> dict[int, float]:
        """The objective at each evaluation in trial directory ``name``'s curve: a kill between
        an evaluation's files and the journal's append leaves a step only there (the trial then
        resumes after it and does not report it again)."""
        objective = self.objectives[0]
        for entry in self.curves() if self.curves is not None else ():
            if entry[0] == name:
                return {p[M.STEP]: p[objective] for p in entry[1]
                        if isinstance(p.get(M.STEP), int) and isinstance(p.get(objective), float)
                        and math.isfinite(p[objective])}
        return {}
