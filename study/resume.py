"""Resuming a study: the recorded settings and ASHA's recorded results.

``python -m study.tune --name X --resume`` continues X as it was started: the study-defining
flags come from its study.json (:func:`recorded_options`) and ASHA's rungs are rebuilt from the
trials' curves (:func:`replay_curves`). The rest of a resume needs nothing of Ray's state: the
searcher reads the Optuna journal (``study.search``: trials a kill left running are asked again)
and each interrupted trial resumes from the checkpoint in its own directory
(``study.trainable``).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from study import record
from study.options import StudyOptions, UsageError, parse_options, with_recorded


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


def replay_curves(study_dir: Path, group: str) -> list[tuple[str, list[dict], bool]]:
    """(trial directory name, recorded curve, ended) of every trial of a group, for ASHA.

    ``ended``: the trial finished or was stopped, so its last result went to ASHA once more as
    it ended; an errored trial's last report held no value, and one a kill interrupted is still
    ``running`` and goes on when the study resumes.
    """
    out = []
    for trial_dir in record.trial_dirs(study_dir, group):
        if not record.has_config(trial_dir):
            continue
        try:
            points, damaged = record.read_curve(trial_dir)
        except record.RecordError as err:
            print(f"study.tune: {err}: that trial's results are not replayed into ASHA")
            continue
        if damaged:  # a kill during a write leaves a torn last line; the trial rewrites it
            lines = ", ".join(map(str, damaged))
            print(f"study.tune: {record.curve_path(trial_dir)}: damaged line {lines} left out")
        ended = record.read_status(trial_dir).get("status") in (record.FINISHED, record.STOPPED)
        out.append((trial_dir.name, points, ended))
    return out
