"""Tune callbacks of a study: each trial's status.json, and a live table with our columns.

status.json (written by the study, not by the trial; see ``study.record``):
    {"status": "running"}                       while it trains
    {"status": "finished", "step": N}           ran to the end (its metrics hold test_*)
    {"status": "stopped", "step": N}            stopped early by ASHA at step N
    {"status": "errored", "step": N, "reason": "..."}
each with the trial's ``config_id`` and ``replicate`` (``study.search.replicates``).
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

from ray.tune import Callback

from study import metrics as M
from study import record
from study.config import TrialConfig
from study.search.replicates import split

COLUMNS = [
    ("trial", 8),
    ("config", 8),
    ("rep", 3),
    ("rank", 4),
    ("alpha", 5),
    ("targets", 10),
    ("quant", 5),
    ("size", 5),
    ("step", 5),
    ("eval_loss", 9),
    ("ex/acc", 6),
    ("peak MB", 7),
    ("tok/s", 6),
    ("dtype", 5),
    ("compile", 8),
    ("status", 16),
]


def _error_reason(trial) -> str:
    """The last line of the trial's error file (the exception), or a generic reason."""
    path = trial.error_file
    if path and Path(path).is_file():
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        if lines:
            return lines[-1].strip()[:500]
    return "the trial raised an error (see Ray's error file)"


def _dir(experiment_dir: Path, trial) -> Path:
    """The trial's directory: its name (a study names trials by directory, see
    study.search.tuner)."""
    return experiment_dir / str(trial)


class StatusWriter(Callback):
    """Writes status.json for every trial of an experiment directory."""

    def __init__(self, experiment_dir: Path, time_budget_s: float | None = None) -> None:
        self.dir = Path(experiment_dir)
        self.time_budget_s = time_budget_s

    def _write_status(self, trial, status: str, **fields) -> None:
        identity = split(trial.config)[1]  # config_id and replicate, with every status
        record.write_status(_dir(self.dir, trial), status, **identity, **fields)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if record.read_status(_dir(self.dir, trial)).get("status") != record.FINISHED:
            self._write_status(trial, record.RUNNING)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        step = result.get(M.STEP)
        if result.get("error"):
            self._write_status(trial, record.ERRORED, step=step, reason=result["error"])
        elif record.is_final(result):
            self._write_status(trial, record.FINISHED, step=step)
        else:
            # Tune also ends running trials when --time-budget-s runs out, and does not say
            # which of the two stopped a trial.
            by = "ASHA" if not self.time_budget_s else "ASHA or --time-budget-s"
            reason = f"stopped by {by} at step {step}"
            self._write_status(trial, record.STOPPED, step=step, reason=reason)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        step = (trial.last_result or {}).get(M.STEP)
        self._write_status(trial, record.ERRORED, step=step, reason=_error_reason(trial))


def _precision(trial_dir: Path) -> str | None:
    """The compute precision the trial runs in (its env.json; train.dtype=auto resolved)."""
    try:
        return record.read_env(trial_dir).get("dtype_choice", {}).get("name")
    except (record.RecordError, AttributeError):
        return None


def _compile(trial_dir: Path) -> str | None:
    """Whether the trial's step is compiled: on or off, "auto:on" / "auto:off" where
    train.compile=auto chose it (its env.json; see study.trial.compiling)."""
    try:
        choice = record.read_env(trial_dir).get("compile") or {}
        return f"{'auto:' * (choice.get('asked') == 'auto')}{choice['chosen']}"
    except (record.RecordError, AttributeError, KeyError, TypeError):
        return None


def _cell(value, width: int) -> str:
    """A value cut to its column: "-" when not measured (yet), numbers as the summary and the
    report print them (study.metrics.number)."""
    return M.number(value)[:width].rjust(width)


def _config_cells(config: dict) -> list:
    """rank, alpha, targets, quant scheme (16, 8, nf4, fp4), size of a trial's config ("bad"
    and dashes: an invalid one)."""
    try:
        cfg = TrialConfig.from_dict(config)
    except ValueError:  # a combination the space allows but a config refuses: the trial errors
        return ["bad", None, None, None, None]
    lora = cfg.method == "lora"
    return [
        cfg.lora.rank if lora else cfg.method,
        cfg.lora.alpha if lora else None,
        cfg.lora.targets if lora else None,
        cfg.quant.name,
        cfg.data.size,
    ]


def _measured(result: dict, *names: str):
    """The first of ``names`` the result has a number for (tune_result fills NaN elsewhere)."""
    for name in names:
        value = result.get(name)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return value
    return None


class LiveTable(Callback):
    """Prints a compact table of every trial at most every ``interval`` seconds."""

    def __init__(self, experiment_dir: Path, interval: float = 10.0, label: str = "",
                 objective: str = M.EVAL_LOSS) -> None:
        self.dir = Path(experiment_dir)
        self.interval = interval
        self.label = label
        self.objective = objective  # summarised per configuration over its replicates
        self.last_print = 0.0

    def _row(self, trial) -> str:
        r = trial.last_result or {}
        status = record.read_status(_dir(self.dir, trial))
        state = status.get("status", trial.status.lower())
        if state == record.STOPPED:
            state = f"stopped@{status.get('step')}"
        config, identity = split(trial.config)
        values = [
            str(trial)[-8:],
            (identity.get(record.CONFIG_ID) or "")[:8] or None,
            identity.get(record.REPLICATE),
            *_config_cells(config),
            r.get(M.STEP),
            r.get(M.EVAL_LOSS),
            # a classifier's accuracy, a preference trial's reward accuracy, or exact match
            _measured(r, M.ACCURACY, M.REWARD_ACCURACY, M.EXACT_MATCH),
            r.get(M.PEAK_MEM_MB),
            r.get(M.TRAIN_TOKENS_PER_S),
            _precision(_dir(self.dir, trial)),
            _compile(_dir(self.dir, trial)),
            state,
        ]
        return " ".join(_cell(v, w) for v, (_, w) in zip(values, COLUMNS))

    def table(self, trials) -> str:
        """The current table as text, then each configuration's mean and spread of the
        objective over its finished replicates, once two have finished."""
        header = " ".join(name.rjust(w) for name, w in COLUMNS)
        return "\n".join([header] + [self._row(t) for t in trials] + self._spread(trials))

    def _spread(self, trials) -> list[str]:
        finished: dict[str, list[float]] = {}
        for trial in trials:
            config_id = split(trial.config)[1].get(record.CONFIG_ID)
            value = _measured(trial.last_result or {}, self.objective)
            if config_id and value is not None and record.is_final(trial.last_result):
                finished.setdefault(config_id, []).append(value)
        rows = [f"{c[:8]:>8} {len(v):>2} {statistics.fmean(v):>10.4f} {statistics.stdev(v):>9.4f}"
                for c, v in finished.items() if len(v) >= 2]
        if not rows:
            return []
        return ["", f"{'config':>8} {'n':>2} {self.objective[:10]:>10} {'sd':>9}", *rows]

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if time.monotonic() - self.last_print >= self.interval:
            self.last_print = time.monotonic()
            print(f"\n{self.label}{self.table(trials)}", flush=True)

    def on_experiment_end(self, trials, **info) -> None:
        print(f"\n{self.label}{self.table(trials)}", flush=True)
