"""Resuming a study: the recorded settings, ASHA's recorded results, checkpoints a kill broke.

``python -m study.tune --name X --resume`` continues X as it was started: the study-defining
flags come from its study.json (:func:`recorded_options`), ASHA's rungs are rebuilt from the
trials' curves (:func:`replay_curves`), and a checkpoint that Ray's last state snapshot names
but a kill deleted is re-created (:func:`restore_missing_checkpoints`).
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import shutil
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


def replay_curves(study_dir: Path, group: str) -> list[tuple[str, list[dict]]]:
    """(trial id, recorded curve) of every trial of a group, for rebuilding ASHA's rungs."""
    out = []
    for trial_dir in record.trial_dirs(study_dir, group):
        if not record.has_config(trial_dir):
            continue
        try:
            points, _damaged = record.read_curve(trial_dir)  # damaged lines: left out
        except record.RecordError as err:
            print(f"study.tune: {err}: that trial's results are not replayed into ASHA")
            continue
        out.append((trial_dir.name, points))
    return out


def restore_missing_checkpoints(experiment_dir: Path) -> list[Path]:
    """Re-create checkpoints the experiment state names but a kill left deleted; return them.

    With ``num_to_keep=1`` Ray deletes a trial's previous checkpoint when it registers a new one,
    and snapshots the experiment state a moment later. A driver killed in between leaves a state
    that names the deleted checkpoint, and ``Tuner.restore`` then fails that trial ("does not
    exist on storage anymore"). The newer checkpoint is in the trial directory: copy it under
    the old name, so the trial resumes from its latest progress. Reads Ray's own state file,
    which holds pickles: as with ``Tuner.restore``, only for storage paths you trust.
    """
    states = sorted(Path(experiment_dir).glob("experiment_state-*.json"))
    if not states:
        return []
    repaired = []
    for _, runtime in json.loads(states[-1].read_text())["trial_data"]:
        blob = json.loads(runtime).get("checkpoint_manager") or {}
        if "value" not in blob:
            continue
        latest = pickle.loads(bytes.fromhex(blob["value"])).latest_checkpoint_result
        if latest is None or latest.checkpoint is None:
            continue
        missing = Path(latest.checkpoint.path)
        newer = sorted(p for p in missing.parent.glob("checkpoint_*") if p.name > missing.name)
        if not missing.exists() and newer:
            shutil.copytree(newer[-1], missing)
            repaired.append(missing)
    return repaired
