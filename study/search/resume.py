"""Resuming a study: the recorded settings and ASHA's recorded results.

``python -m study.tune --name X --resume`` continues X as it was started: the study-defining
flags come from its study.json (:func:`recorded_options`) and ASHA's rungs are rebuilt from the
trials' curves (:func:`replay_curves`). The rest of a resume needs nothing of Ray's state: the
searcher reads the Optuna journal (``study.search.searcher``: trials a kill left running are
asked again) and each interrupted trial resumes from the checkpoint in its own directory
(``study.search.trainable``).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from study import record
from study.search.options import StudyOptions, UsageError, parse_options, with_recorded


def recorded_options(options: StudyOptions, argv: list[str], study_dir: Path):
    """(options with the recorded study-defining flags, the study.json record) for --resume.

    Raises:
        UsageError: no readable study record, or a study flag that differs from the recorded one.
    """
    try:
        started_record = record.read_study(study_dir)
        with contextlib.redirect_stderr(io.StringIO()):  # one line for the user: ours, below
            started = parse_options([str(a) for a in started_record["command"][3:]])
        if not {"space", "objectives"} <= started_record.keys():
            raise KeyError("space or objectives")
        if not isinstance(started_record["space"], dict):
            raise TypeError("space is not a mapping")
    except (ValueError, KeyError, TypeError, AttributeError, SystemExit):
        raise UsageError(f"{record.study_path(study_dir)} is not a readable study record") from None
    return with_recorded(options, argv, started, study_dir.name), started_record


def damaged_lines(study_dir: Path) -> list[str]:
    """A warning for each trial's curve.jsonl with damaged lines (a kill during a write leaves
    a torn last one) or that cannot be read: said once, when a resume starts. The lines are
    left out wherever the curve is read; a trial that goes on rewrites its curve whole."""
    out = []
    for group in record.GROUPS:
        for trial_dir in record.trial_dirs(study_dir, group):
            try:
                _, damaged = record.read_curve(trial_dir)
            except record.RecordError as err:
                out.append(f"{err}: that trial's results are not replayed into ASHA")
                continue
            if damaged:
                lines = ", ".join(map(str, damaged))
                out.append(f"{record.curve_path(trial_dir)}: damaged line {lines} left out")
    return out


def replay_curves(study_dir: Path, group: str) -> list[tuple[str, list[dict], bool]]:
    """(trial directory name, recorded curve, ended) of every trial of a group, for ASHA.

    ``ended``: the trial finished or was stopped, so its last result went to ASHA once more as
    it ended; an errored trial's last report held no value, and one a kill interrupted is still
    ``running`` and goes on when the study resumes. Damaged lines are left out (and were named
    by :func:`damaged_lines` as the resume started).
    """
    out = []
    for trial_dir in record.trial_dirs(study_dir, group):
        if not record.has_config(trial_dir):
            continue
        try:
            points, _ = record.read_curve(trial_dir)
        except record.RecordError:
            continue
        ended = record.read_status(trial_dir).get("status") in (record.FINISHED, record.STOPPED)
        out.append((trial_dir.name, points, ended))
    return out
