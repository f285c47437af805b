"""A configuration's replicates, and the one outcome the searcher tells Optuna for them.

    runs = [Run() for _ in range(k)]                 # one per replicate, seeds seed+0..seed+k-1
    state, values, steps = outcome(runs, n_objectives)

With ``--repeats K`` every configuration the searcher proposes runs K times. Replicate ``r``
has the trial seed ``seed + r`` (``seed``: the configuration's own ``seed``, the space's),
which seeds the adapter's initialisation, the data order and dropout; the data split does not
depend on it. The replicates share the configuration's ``config_id``
(``TrialConfig.config_id``: a hash of the resolved config without its seed); each is one Ray
trial with its own directory, judged on its own by ASHA. Optuna is asked once per
configuration and told once, when every replicate has ended (:func:`outcome`):

- COMPLETE with the mean over the replicates that finished, of each objective, when at least
  one finished;
- FAIL when every replicate errored;
- PRUNED otherwise (every replicate that did not error was stopped early).

Its intermediate values are, at each step that every replicate that did not error reached, the
mean over them (with one replicate: that trial's values, as they are reported).

Ray-free and Optuna-free: the searcher (``study.search.searcher``) keeps a list of :class:`Run` per
configuration and records it in the journal (``study.journal.REPLICATES``) after every change,
so a resumed study knows which replicates ended, how, and where each one's directory is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from study import journal, record

COMPLETE, PRUNED, FAIL = "COMPLETE", "PRUNED", "FAIL"  # Optuna's state names


@dataclass
class Run:
    """One replicate of a configuration, as the searcher knows it."""

    dir: str | None = None  # its trial directory (under search/), once launched
    state: str | None = None  # None until it ends; then COMPLETE, PRUNED or FAIL
    values: list[float] | None = None  # its objectives (COMPLETE only)
    steps: dict[int, float] = field(default_factory=dict)  # the first objective at each step
    error: str | None = None  # why it failed (FAIL only)
    active: bool = False  # launched by this driver and not ended (not recorded)

    @property
    def ended(self) -> bool:
        return self.state is not None

    def end(self, result: dict, objectives: list[str], error: bool) -> None:
        """Record how this replicate ended, from its last result: it errored, ran to its end
        (its objectives; FAIL if one is missing or not finite) or was stopped early."""
        self.active = False
        if error or result.get("error"):
            # why, for the summary and optuna-dashboard: a shared GPU's out-of-memory is a
            # failure of the card's share, not necessarily of the configuration
            self.state, self.error = FAIL, str(result.get("error") or "the trial crashed")
        elif record.is_final(result):
            self.values = final_values(result, objectives)
            self.state = COMPLETE if self.values is not None else FAIL
            if self.values is None:
                self.error = "its final report lacks a finite objective"
        else:
            self.state = PRUNED

    def to_record(self) -> dict | None:
        """What the journal keeps (JSON; None for a replicate not launched yet)."""
        if self.dir is None:
            return None
        out = {"dir": self.dir, "state": self.state, "values": self.values, "error": self.error}
        return {**out, "steps": sorted([s, v] for s, v in self.steps.items())}

    @classmethod
    def from_record(cls, data) -> Run:
        """A recorded replicate (see :meth:`to_record`); anything else is one not launched."""
        if not isinstance(data, dict) or not isinstance(data.get("dir"), str):
            return cls()
        state = data.get("state") if data.get("state") in (COMPLETE, PRUNED, FAIL) else None
        steps = {int(s): float(v) for s, v in data.get("steps") or []}
        values = data.get("values") if state == COMPLETE else None
        return cls(data["dir"], state, values, steps, data.get("error"))


def restore(recorded, k: int) -> list[Run]:
    """K runs from a journal record (a shorter or missing record: the rest not launched)."""
    recorded = recorded if isinstance(recorded, list) else []
    runs = [Run.from_record(d) for d in recorded[:k]]
    return runs + [Run() for _ in range(k - len(runs))]


def seeded(params: dict, seed: int, replicate: int, config_id: str) -> dict:
    """The config Tune gives replicate ``replicate`` of a configuration: its searched
    ``params``, the trial seed ``seed + replicate``, and its identity (``record.CONFIG_ID``,
    ``record.REPLICATE``), which the study writes to the trial's status.json and the trial
    itself never sees (``study.search.runner.trial_config`` drops it)."""
    return {**params, "seed": seed + replicate, record.REPLICATE: replicate,
            record.CONFIG_ID: config_id}


def baseline_repeats(baseline: dict, repeats: int) -> int:
    """How many replicates a baseline (a nested config) runs: ``repeats``, except the base
    model of a generative task, which trains nothing and draws nothing at random (fixed splits,
    greedy answers): every replicate would evaluate the same model on the same examples. A
    classifier's base has a freshly initialised score head, which its seed draws."""
    unseeded = baseline["method"] == "base" and baseline["data"]["task"] != "classify"
    return 1 if unseeded else repeats


def split(config: dict) -> tuple[dict, dict]:
    """A config as Tune gives it to a study's trial (dotted keys, or a baseline wrapped as
    ``{"baseline": {...}}``) -> (the trial's own config, its identity: ``record.CONFIG_ID`` and
    ``record.REPLICATE`` where present)."""
    inner = config.get("baseline", config)
    keys = (record.CONFIG_ID, record.REPLICATE)
    identity = {k: inner[k] for k in keys if k in inner}
    return {k: v for k, v in inner.items() if k not in keys}, identity


def outcome(runs: list[Run], n_objectives: int) -> tuple[str, list[float] | None, dict]:
    """(Optuna state, values or None, intermediate values) of a configuration whose replicates
    have all ended; see the module docstring for the rules."""
    finished = [r for r in runs if r.state == COMPLETE]
    kept = [r for r in runs if r.state != FAIL]
    steps = set.intersection(*(set(r.steps) for r in kept)) if kept else set()
    intermediate = {s: _mean([r.steps[s] for r in kept]) for s in sorted(steps)}
    if finished:
        values = [_mean([r.values[i] for r in finished]) for i in range(n_objectives)]
        return COMPLETE, values, intermediate
    if not kept:
        return FAIL, None, {}
    return PRUNED, None, intermediate


def final_values(result: dict, objectives: list[str]) -> list[float] | None:
    """The objectives of a trial's final report, or None when one is missing or not finite."""
    values = [result.get(m) for m in objectives]
    if any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
        return None
    return [float(v) for v in values]


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def replicates_of(study, trial, k: int) -> list:
    """The K replicates (``study.search.replicates.Run``) of the configuration ``trial`` resumes, as
    the journal last recorded them (following a chain of resumes); fresh ones otherwise."""
    trials, attrs = study.get_trials(deepcopy=False), trial.user_attrs
    number = attrs.get(journal.RESUMES)
    while number is not None and journal.REPLICATES not in trials[number].user_attrs:
        number = trials[number].user_attrs.get(journal.RESUMES)
    if number is not None:
        return restore(trials[number].user_attrs[journal.REPLICATES], k)
    runs = restore(None, k)
    runs[0].dir = attrs.get(journal.RESUME_DIR)  # a study recorded before replicates (or a new one)
    return runs
