"""Study directories -> pandas tables: one row per trial, and a long table of learning curves.

    data = load_studies(["results/demo-20250101-120000"])
    data.trials[["study", "rank", "targets", "bits", "status", "eval_loss", "peak_mem_mb"]]
    data.curves.query("trial == 'a1b2c3d4'")[["step", "eval_loss"]]

Only the trial files of DESIGN.md are read (config.json, metrics.json, curve.jsonl, status.json,
examples.json, labels.json) plus the study's study.json (through :mod:`study.record`) and its
Optuna journal (through :mod:`study.journal`, with Optuna's own reader); Ray's files are never
opened and nothing is unpickled. A truncated or corrupt file gives a :class:`ResultWarning`
naming it: a trial without a readable config.json is skipped, one without
readable metrics keeps its config, status and curve; the other trials still load.

This module walks a study (its groups, the trials its journal says it launched);
:mod:`analysis.trial_row` reads one trial into its row and :mod:`analysis.result_files` reads
single files with a warning instead of an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pandas as pd

from analysis.result_files import ResultWarning, _read, _warn
from analysis.trial_row import CURVE_COLUMNS, TRIAL_COLUMNS, _get, _status, _trial_row
from study import journal, record
from study.record import RecordError

__all__ = [
    "GROUPS",
    "TRIAL_COLUMNS",
    "NotAStudyError",
    "ResultWarning",
    "StudyData",
    "check_study_dir",
    "load_studies",
    "load_study",
]

GROUPS = record.GROUPS
DONE_STATES = ("COMPLETE", "PRUNED", "FAIL")  # Optuna trials that must have a directory


class NotAStudyError(ValueError):
    """A directory that is not a study directory (no study.json, search/ or baselines/)."""


class StudyData(NamedTuple):
    """What :func:`load_studies` returns."""

    trials: pd.DataFrame  # one row per trial
    curves: pd.DataFrame  # one row per (trial, evaluation)
    studies: dict[str, dict]  # study name -> study.json (empty if unreadable)
    warnings: list[str]  # every ResultWarning raised while loading
    # trial_dir -> the trial's files as read: config, metrics, env and status (dicts; {} where
    # damaged or missing), for what the table does not keep (the summary's memory estimate)
    files: dict[str, dict] = {}


def check_study_dir(path: str | Path) -> Path:
    """``path`` as a Path if it is a study directory, else NotAStudyError with one clear line."""
    p = Path(path)
    if not p.exists():
        raise NotAStudyError(f"{p} does not exist")
    if not p.is_dir():
        raise NotAStudyError(f"{p} is a file, not a study directory")
    if record.is_trial_dir(p):
        raise NotAStudyError(
            f"{p} is a trial directory, not a study; give its study directory ({p.parent.parent})"
        )
    if not record.is_study_dir(p):
        raise NotAStudyError(
            f"{p} is not a study directory (no {record.STUDY}, {record.SEARCH}/ or "
            f"{record.BASELINES}/); studies are made by python -m study.tune"
        )
    return p


def _missing_trials(study_dir: Path, study_info: dict, configs: dict, found: list[str]) -> None:
    """Warn about trials that the study recorded but whose directory is gone or unreadable."""
    searched = [c for (group, _), c in configs.items() if group == record.SEARCH]
    have = {name for group, name in configs if group == record.SEARCH}
    for number, params, trial_dir in _launched_trials(study_dir, found):
        if trial_dir in have:
            continue
        text = ", ".join(f"{k}={v}" for k, v in params.items())
        _warn(
            found,
            f"{record.group_dir(study_dir, record.SEARCH) / trial_dir}: the directory of Optuna "
            f"trial #{number} ({text}) is not readable (deleted or corrupt)",
        )
    # baselines run before the search: only once the search started must they all be there
    expected = (_get(study_info, ("fixed", "baselines")) or []) if searched else []
    have = [c["method"] for (group, _), c in configs.items() if group == record.BASELINES]
    for baseline in expected:
        method = baseline.get("method") if isinstance(baseline, dict) else None
        if method in have:
            have.remove(method)
        else:
            _warn(
                found,
                f"{record.group_dir(study_dir, record.BASELINES)}: the {method} baseline has no "
                "readable trial directory (deleted or corrupt)",
            )


def _launched_trials(study_dir: Path, found: list[str]) -> list[tuple[int, dict, str]]:
    """(number, params, trial directory) of every finished launched trial in the journal.

    A trial still RUNNING in a live study may not have written its config.json yet: left out.
    """
    try:
        study = journal.load(study_dir)
    except RecordError as err:
        _warn(found, f"{err}; deleted search trials cannot be detected")
        return []
    if study is None:
        return []
    if journal.torn(study_dir):
        _warn(found, f"{record.journal_path(study_dir)}: a half-written last entry (a kill during "
                     "an append) is left out")
    return [
        (t.number, t.params, t.user_attrs[journal.TRIAL_DIR])
        for t in journal.launched(study)
        if t.state.name in DONE_STATES
    ]


def load_study(path: str | Path, name: str | None = None) -> StudyData:
    """One study directory (see :func:`load_studies`)."""
    study_dir = check_study_dir(path)
    name = name or study_dir.resolve().name
    found: list[str] = []
    study_info = {}
    if record.has_study(study_dir):
        what = "command and space unknown"
        study_info = _read(record.read_study, study_dir, found, what) or {}
    rows, points, files = [], [], {}
    for group in GROUPS:
        for d in record.trial_dirs(study_dir, group):
            if not record.has_config(d) and not record.has_metrics(d):
                # an empty directory or one of a trial that is only starting is no problem
                if any(d.iterdir()) and _status(d, found).get("status") != record.RUNNING:
                    _warn(found, f"{d}: no {record.CONFIG}; trial skipped")
                continue
            row, curve, read = _trial_row(name, group, d, found)
            if row:
                rows.append(row)
                points.extend(curve)
                files[row["trial_dir"]] = read
    configs = {(r["group"], r["trial"]): files[r["trial_dir"]]["config"] for r in rows}
    _missing_trials(study_dir, study_info, configs, found)
    frames = _trials_frame(rows), _curves_frame(points)
    return StudyData(*frames, {name: study_info}, found, files)


def _trials_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=TRIAL_COLUMNS)
    # nullable integers: a full fine-tuning row has no rank, and "8" reads better than "8.0"
    for column in ("rank", "bits", "data_size", "steps", "seed", "status_step", "evals"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    return frame


def _curves_frame(points: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(points, columns=["study", "group", "trial", *CURVE_COLUMNS])


def load_studies(paths: list[str | Path]) -> StudyData:
    """Several study directories as one table, with a ``study`` column (the directory's name).

    Raises:
        NotAStudyError: a path that is not a study directory (nothing is loaded then).
    """
    dirs = [check_study_dir(p) for p in paths]
    names = [d.resolve().name for d in dirs]
    # two studies with one name (e.g. results/a/demo and other/demo) get their parent prefixed
    names = [
        f"{d.resolve().parent.name}/{n}" if names.count(n) > 1 else n for d, n in zip(dirs, names)
    ]
    parts = [load_study(d, n) for d, n in zip(dirs, names)]
    studies = {k: v for p in parts for k, v in p.studies.items()}
    return StudyData(
        _concat([p.trials for p in parts], TRIAL_COLUMNS),
        _concat([p.curves for p in parts], ["study", "group", "trial", *CURVE_COLUMNS]),
        studies,
        [w for p in parts for w in p.warnings],
        {k: v for p in parts for k, v in p.files.items()},
    )


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]  # pandas warns about concatenating empty frames
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]
