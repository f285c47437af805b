"""The study's Optuna record: ``optuna.journal``, Optuna's own JournalStorage on a file.

    study = journal.load(study_dir)          # an optuna.Study, None when there is no journal yet
    facts = journal.outcomes(study)          # what the end-of-study summary says of the search

The searcher (``study.search.searcher``) is its only writer; Optuna's tools read it while the
study runs and after, with no code of ours::

    optuna.load_study(study_name=NAME, storage=JournalStorage(JournalFileBackend(PATH)))
    optuna-dashboard results/NAME/optuna.journal

Besides Optuna's states, values and intermediate values, the study keeps these user attributes
on its trials (the names below), so the journal alone says what happened to every suggestion:

- ``trial_dir``: a launched trial's directory under ``search/`` (its first replicate's);
- ``replicates``: each replicate of a launched configuration (``--repeats``): its directory,
  and once it ended, its state, objectives, first objective per step and error (see
  ``study.search.replicates.Run``); rewritten after every change;
- ``not_launched``: why a configuration was not run (over ``--max-mem-mb``); the trial is
  PRUNED with no value and its estimated excess as the constraint ``memory_mb`` (> 0 is
  infeasible: TPE ranks it below every feasible trial; the GP sampler, which reads COMPLETE
  trials only, cannot learn the budget);
- ``repeat_of``: a configuration that had run already; told the earlier trial's outcome, not
  trained again (trials are seeded and deterministic);
- ``duplicate_of``: suggested while the same configuration was running; told its outcome when
  that trial ended;
- ``resumes``: asked again on ``--resume`` for an earlier trial a kill left RUNNING (that one is
  marked FAIL; the study's ``interrupted`` attribute lists it), into the same directory, with
  the intermediate values it had;
- ``enqueued`` / ``resume_dir``: on a queued trial, its fixed parameters and directory.

and on the study: ``interrupted`` (those trial numbers), ``points_asked`` (how many of the
space's ``points_to_evaluate`` were queued) and ``search_ended`` (why the search stopped before
``--num-samples``: the space or the budget was exhausted).
"""

from __future__ import annotations

import os
from pathlib import Path

from study import record

TRIAL_DIR = "trial_dir"
RESUME_DIR = "resume_dir"  # on an enqueued trial: the directory it resumes into
ENQUEUED = "enqueued"  # on an enqueued trial: its fixed parameters (kept if a kill cuts the ask)
POINTS_ASKED = "points_asked"  # on the study: how many points_to_evaluate were queued
NOT_LAUNCHED = "not_launched"
REPEAT_OF = "repeat_of"
DUPLICATE_OF = "duplicate_of"
RESUMES = "resumes"
INTERRUPTED = "interrupted"
SEARCH_ENDED = "search_ended"
ERROR = "error"  # on a FAIL trial: the reason its trial reported (record.SHARED_GPU_OOM...)
MEMORY = "memory_mb"  # the constraint: estimated peak minus --max-mem-mb
# a launched configuration's replicates (study.search.replicates.Run records)
REPLICATES = "replicates"


def storage(study_dir: Path):
    """Optuna's JournalStorage on the study's ``optuna.journal`` (created when missing)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(record.journal_path(study_dir))))


def torn(study_dir: Path) -> bool:
    """Whether the journal ends in a half-written entry (what a kill during an append leaves)."""
    path = record.journal_path(study_dir)
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if not f.tell():
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except OSError:
        return False


def repair(study_dir: Path) -> str | None:
    """Cut a half-written last line (a kill during an append); say so, or None.

    Optuna skips such a line when it reads, but the next append would join it and make the
    journal unreadable; the cut entry never took effect, so nothing is lost.
    """
    path = record.journal_path(study_dir)
    if not path.is_file():
        return None
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return None
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(keep)
    return f"{path}: cut a half-written last entry ({len(data) - keep} bytes) a kill left"


def load(study_dir: Path):
    """The study's optuna.Study, or None when it has no journal yet.

    Raises:
        record.RecordError: the journal is damaged or holds no single study.
    """
    import optuna

    path = record.journal_path(study_dir)
    if not path.is_file():
        return None
    try:
        journal = storage(study_dir)  # reads the whole journal: once
        names = optuna.get_all_study_names(journal)
        if len(names) != 1:
            raise ValueError(f"it holds {len(names)} studies, not one")
        return optuna.load_study(study_name=names[0], storage=journal)
    except (ValueError, KeyError, TypeError, IndexError, AssertionError, UnicodeDecodeError) as err:
        raise record.RecordError(path, "damaged: Optuna cannot read it", str(err)) from None


def outcomes(study) -> dict:
    """What the search did, from the journal: counts by kind and why it ended (if it did early).

    ``searched`` counts launched trials (a trial resumed after a kill once);
    ``not_launched`` / ``repeats`` / ``duplicates`` the suggestions answered without training;
    ``interrupted`` the launched trials a kill cut (each continued).
    """
    interrupted = set(study.user_attrs.get(INTERRUPTED, []))
    trials = study.get_trials(deepcopy=False)
    current = [t.user_attrs for t in trials if t.number not in interrupted]
    return {
        "searched": len(launched(study)),
        "not_launched": sum(NOT_LAUNCHED in a for a in current),
        "repeats": sum(REPEAT_OF in a for a in current),
        "duplicates": sum(DUPLICATE_OF in a for a in current),
        "interrupted": sum(TRIAL_DIR in trials[n].user_attrs for n in interrupted),
        "search_ended": study.user_attrs.get(SEARCH_ENDED),
    }


def launched(study) -> list:
    """The launched trials (FrozenTrial), a trial resumed after a kill once, in number order."""
    interrupted = set(study.user_attrs.get(INTERRUPTED, []))
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if TRIAL_DIR in t.user_attrs and t.number not in interrupted
    ]


def mark_interrupted(study) -> None:
    """RUNNING trials of an earlier driver -> FAIL, listed as interrupted (asked again).

    The list is written before any trial is told, so a kill in between loses nothing: the
    next resume finds the rest still RUNNING, and :func:`pending_resumes` reads the list.
    """
    from optuna.trial import TrialState

    running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    if not running:
        return
    before = study.user_attrs.get(INTERRUPTED, [])
    study.set_user_attr(INTERRUPTED, sorted({*before, *running}))
    for number in running:
        study.tell(number, state=TrialState.FAIL)


def pending_resumes(study):
    """(number, params, directory) of interrupted trials not asked again yet, oldest first.

    Parked duplicates and suggestions answered without a launch resolve nothing to resume;
    a trial cut mid-ask has only the parameters it was enqueued with (kept as
    ``enqueued``).
    """
    trials = study.get_trials(deepcopy=False)
    resumed = {t.user_attrs[RESUMES] for t in trials if RESUMES in t.user_attrs}
    skip = (DUPLICATE_OF, REPEAT_OF, NOT_LAUNCHED)
    for number in study.user_attrs.get(INTERRUPTED, []):
        attrs = trials[number].user_attrs
        if number in resumed or any(a in attrs for a in skip):
            continue
        params = {**attrs.get(ENQUEUED, {}), **trials[number].params}
        yield number, params, attrs.get(TRIAL_DIR) or attrs.get(RESUME_DIR)
