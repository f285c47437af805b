"""Asynchronous successive halving (ASHA) on Tune's public scheduler interface.

    scheduler = StudyASHA(metric="eval_loss", mode="min", max_t=40, grace=10, reduction_factor=3)

The rule of Li et al. (2020) as Ray's ``ASHAScheduler`` applies it with one bracket: rungs at
``grace * rf**k`` steps (``k = 0, 1, ...`` while ``<= max_t``); the first result of a trial at or
past a rung it has not reached before is recorded there, and the trial stops when it is worse
than the ``1 - 1/rf`` quantile of that rung's recorded values. tests/test_asha.py checks the
decisions against Ray's ``ASHAScheduler`` on random curves.

Written here rather than subclassed because Ray keeps the rungs in private fields, and a study
that resumes must rebuild them from its recorded curves (:meth:`StudyASHA.record`): a
``--resume`` judges new results against every result the study has seen. Differences from
Ray's: a NaN result (a metric not measured yet) is neither recorded nor judged, and trials are
keyed by a caller-given function (a study keys them by trial directory, so a trial resumed under
a new Ray trial id keeps its place in the rungs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler


class StudyASHA(FIFOScheduler):
    """ASHA with one bracket whose rungs can be rebuilt from recorded curves.

    Args:
        metric, mode: the value judged ("min" or "max") and where it is in a result.
        time_attr: the result key counting progress (a study counts optimizer steps).
        max_t: the most progress a trial makes; a result at ``max_t`` stops the trial.
        grace: progress before any stop (the lowest rung).
        reduction_factor: ``rf``: a rung keeps the best ``1/rf`` of the trials it has seen.
        key: the trial's name in the rungs (default: its Ray trial id).
        replay: returns (key, recorded results, ended) triples (see :meth:`rebuild`); called
            once, when the first trial is added, so the rungs hold every recorded result
            before any new one is judged.
    """

    def __init__(
        self,
        *,
        metric: str,
        mode: str,
        max_t: int,
        grace: int,
        reduction_factor: float,
        time_attr: str = "training_iteration",
        key: Callable[[object], str] | None = None,
        replay: Callable[[], Iterable[tuple[str, list[dict], bool]]] | None = None,
    ) -> None:
        if mode not in ("min", "max") or reduction_factor <= 1 or not 0 < grace <= max_t:
            raise ValueError(
                f"ASHA needs mode min|max, reduction_factor > 1 and 0 < grace <= max_t; got "
                f"{mode!r}, {reduction_factor}, grace {grace}, max_t {max_t}"
            )
        super().__init__()
        self.objective, self.mode, self.time_attr = metric, mode, time_attr
        self.max_t, self.rf = max_t, reduction_factor
        self.sign = 1.0 if mode == "max" else -1.0  # judged on sign * value: higher is better
        count = int(math.log(max_t / grace) / math.log(reduction_factor) + 1)
        # highest rung first, as Ray orders them: a result is judged at the highest rung it
        # reached and has not been recorded at
        self.rungs: list[tuple[float, dict[str, float]]] = [
            (grace * reduction_factor**k, {}) for k in reversed(range(count))
        ]
        self.key = key or (lambda trial: trial.trial_id)
        self.replay = replay
        self.stopped = 0
        self.pending_stop: set[str] = set()  # keys stopped at their next result (see rebuild)

    @property
    def metric(self) -> str:
        """The judged metric (Tune checks that every result carries it)."""
        return self.objective

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        """The metric and mode are given at construction; Tune's (None here) are not needed."""
        return metric in (None, self.objective) and mode in (None, self.mode)

    def record(self, key: str, progress: float, value: float | None) -> str:
        """Record one result of trial ``key`` in its rung; CONTINUE or STOP (Ray's rule)."""
        if value is None or not math.isfinite(value):
            return TrialScheduler.CONTINUE  # not measured yet: nothing to judge
        signed = self.sign * value
        for milestone, recorded in self.rungs:
            # (Ray, with its default stop_last_trials, also walks on past a rung the trial was
            # recorded at: a trial whose first result skipped a lower rung is judged there later)
            if progress < milestone or key in recorded:
                continue
            values = list(recorded.values())
            cutoff = np.nanpercentile(values, (1 - 1 / self.rf) * 100) if values else None
            recorded[key] = signed
            if cutoff is not None and signed < cutoff:
                return TrialScheduler.STOP
            break
        return TrialScheduler.CONTINUE

    def rebuild(self, curves: Iterable[tuple[str, list[dict], bool]]) -> int:
        """Pass recorded results through the rungs as the live run did; return how many.

        ``curves``: (key, results in order, whether the trial has ended). Each result goes
        the way Tune's ``on_trial_result`` sent it, and an ended trial's last result once more
        the way ``on_trial_complete`` did. The stop decisions concern the past, except one on
        the last result of a trial that has not ended: a kill cut it short, and the trial is
        stopped at its next result.
        """
        points = 0
        for key, curve, ended in curves:
            for point in curve:
                action = self.judge(key, point)
                points += action is not None
                if action == TrialScheduler.STOP and not ended and point is curve[-1]:
                    # a kill came between this result and the stop: stop the trial when it
                    # reports again (it resumes from the checkpoint of that result)
                    self.pending_stop.add(key)
            if ended and curve:
                self.complete(key, curve[-1])
        return points

    def judge(self, key: str, result: dict) -> str | None:
        """CONTINUE or STOP for one result of trial ``key`` (None: the result has no value)."""
        progress = result.get(self.time_attr)
        if progress is None or self.objective not in result:
            return None
        if progress >= self.max_t:
            return TrialScheduler.STOP  # the trial's last result (Ray: stop_last_trials)
        return self.record(key, progress, result[self.objective])

    def complete(self, key: str, result: dict) -> None:
        """A trial ended with ``result``: record it (at a rung its earlier results skipped)."""
        if result and result.get(self.time_attr) is not None and self.objective in result:
            self.record(key, result[self.time_attr], result[self.objective])

    def on_trial_add(self, tune_controller, trial) -> None:
        if self.replay is not None:
            replay, self.replay = self.replay, None
            self.rebuild(replay())

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        key = self.key(trial)
        if key in self.pending_stop:
            self.pending_stop.discard(key)
            self.stopped += 1
            return TrialScheduler.STOP
        action = self.judge(key, result) or TrialScheduler.CONTINUE
        self.stopped += action == TrialScheduler.STOP
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self.complete(self.key(trial), result)

    def debug_string(self) -> str:
        rungs = ", ".join(f"{m:g}: {len(r)}" for m, r in self.rungs)
        return f"StudyASHA: {self.stopped} stopped; trials per rung (steps: count) {rungs}"
