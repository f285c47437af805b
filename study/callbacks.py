"""Tune callbacks of a study: each trial's status.json, and a live table with our columns.

status.json (written by the study, not by the trial):
    {"status": "running"}                       while it trains
    {"status": "finished", "step": N}           ran to the end (its metrics hold test_*)
    {"status": "stopped", "step": N}            stopped early by ASHA at step N
    {"status": "errored", "step": N, "reason": "..."}
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ray.tune import Callback

from study import metrics as M
from study.search import FINISHED_MARKER

STATUS = "status.json"
COLUMNS = [
    ("trial", 8),
    ("rank", 4),
    ("alpha", 5),
    ("targets", 10),
    ("bits", 4),
    ("size", 5),
    ("step", 5),
    ("eval_loss", 9),
    ("exact", 6),
    ("peak MB", 7),
    ("tok/s", 6),
    ("status", 16),
]


def write_status(trial_dir: Path, status: str, **fields) -> None:
    """Atomically write a trial's status.json."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    tmp = trial_dir / f".{STATUS}.tmp"
    tmp.write_text(json.dumps({"status": status, **fields, "time": time.time()}))
    os.replace(tmp, trial_dir / STATUS)


def read_status(trial_dir: Path) -> dict:
    """A trial's status.json, or {} when absent or unreadable."""
    try:
        return json.loads((trial_dir / STATUS).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _error_reason(trial) -> str:
    """The last line of the trial's error file (the exception), or a generic reason."""
    path = trial.error_file
    if path and Path(path).is_file():
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        if lines:
            return lines[-1].strip()[:500]
    return "the trial raised an error (see Ray's error file)"


class StatusWriter(Callback):
    """Writes status.json for every trial of an experiment directory (trial dir = trial id)."""

    def __init__(self, experiment_dir: Path, time_budget_s: float | None = None) -> None:
        self.dir = Path(experiment_dir)
        self.time_budget_s = time_budget_s

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if read_status(self.dir / trial.trial_id).get("status") != "finished":
            write_status(self.dir / trial.trial_id, "running")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        step = result.get(M.STEP)
        if result.get("error"):
            write_status(self.dir / trial.trial_id, "errored", step=step, reason=result["error"])
        elif FINISHED_MARKER in result:
            write_status(self.dir / trial.trial_id, "finished", step=step)
        else:
            # Tune also ends running trials when --time-budget-s runs out, and does not say
            # which of the two stopped a trial.
            by = "ASHA" if not self.time_budget_s else "ASHA or --time-budget-s"
            write_status(
                self.dir / trial.trial_id,
                "stopped",
                step=step,
                reason=f"stopped by {by} at step {step}",
            )

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        step = (trial.last_result or {}).get(M.STEP)
        write_status(self.dir / trial.trial_id, "errored", step=step, reason=_error_reason(trial))


def _cell(value, width: int, fmt: str = "{}") -> str:
    text = "-" if value is None else (fmt.format(value) if not isinstance(value, str) else value)
    return text[:width].rjust(width)


class LiveTable(Callback):
    """Prints a compact table of every trial at most every ``interval`` seconds."""

    def __init__(self, experiment_dir: Path, interval: float = 10.0, label: str = "") -> None:
        self.dir = Path(experiment_dir)
        self.interval = interval
        self.label = label
        self._last = 0.0

    def _row(self, trial) -> str:
        cfg = trial.config.get("baseline", trial.config)  # baselines are wrapped
        lora, quant, data = cfg.get("lora", {}), cfg.get("quant", {}), cfg.get("data", {})
        r = trial.last_result or {}
        status = read_status(self.dir / trial.trial_id)
        state = status.get("status", trial.status.lower())
        if state == "stopped":
            state = f"stopped@{status.get('step')}"
        alpha = lora.get("alpha") or (lora.get("alpha_ratio") or 2) * lora.get("rank", 8)
        method = cfg.get("method", "lora")
        values = [
            trial.trial_id[-8:],
            lora.get("rank") if method == "lora" else method,
            alpha if method == "lora" else None,
            lora.get("targets") if method == "lora" else None,
            quant.get("bits", 16),
            data.get("size"),
            r.get(M.STEP),
            r.get(M.EVAL_LOSS),
            r.get(M.EXACT_MATCH),
            r.get(M.PEAK_MEM_MB),
            r.get(M.TRAIN_TOKENS_PER_S),
            state,
        ]
        fmts = [
            "{}",
            "{}",
            "{:g}",
            "{}",
            "{}",
            "{}",
            "{}",
            "{:.4f}",
            "{:.2f}",
            "{:.0f}",
            "{:.0f}",
            "{}",
        ]
        return " ".join(_cell(v, w, f) for v, (_, w), f in zip(values, COLUMNS, fmts))

    def table(self, trials) -> str:
        """The current table as text."""
        header = " ".join(name.rjust(w) for name, w in COLUMNS)
        return "\n".join([header] + [self._row(t) for t in trials])

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            print(f"\n{self.label}{self.table(trials)}", flush=True)

    def on_experiment_end(self, trials, **info) -> None:
        print(f"\n{self.label}{self.table(trials)}", flush=True)
