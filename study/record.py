"""The trial and study directories: every file name, one atomic write, typed reads and writes.

    record.write_metrics(trial_dir, metrics)          # atomically: readers never see half a file
    record.read_status(trial_dir)["status"]           # "running", "finished", "stopped", "errored"
    for d in record.trial_dirs(study_dir, record.SEARCH): ...

The contract between ``study`` (writes) and ``analysis`` (reads), and its only owner: no other
module names or opens these files. No torch, no Ray. Inside ``adapter/`` is PEFT's format
(``lora_impl.io``), inside ``checkpoint/`` ``study.trial.checkpoint``'s; their names are owned here.

A trial directory (``<study>/<group>/<trial id>/``, or any ``--out`` of ``study.train_one``)::

    config.json    the resolved TrialConfig (nested)
    metrics.json   the latest metrics; the last report of a finished trial has "final": true
    curve.jsonl    one line per evaluation
    examples.json  a few generations: prompt, target, output
    env.json       versions, hardware, threads, dtype, seed
    labels.json    classify: the label names in id order, the training split's class counts
    reference.json preference (dpo.reference=cached): the starting model's log-probabilities of
                   every pair's responses, per split, computed once before training
    status.json    written by the study: running / finished / stopped / errored, and the
                   trial's config_id and replicate
    adapter/       the adapter in PEFT format (method lora)
    checkpoint/    trainable weights, optimizer and RNG state, trial progress

A study directory holds ``study.json`` (command, resolved space, objectives, schema version),
``optuna.journal`` (Optuna's journal storage; content owned by ``study.journal``), ``search/``,
``baselines/`` and, while a driver runs, ``.ray_session.json`` (``study.search.leftovers``).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from study.files import RecordError, atomic_write, read_json, read_jsonl, write_json
from study.files import read_object as _read_object

__all__ = ["RecordError", "atomic_write", "read_json", "read_jsonl", "write_json"]

CONFIG = "config.json"
METRICS = "metrics.json"
CURVE = "curve.jsonl"
EXAMPLES = "examples.json"
ENV = "env.json"
LABELS = "labels.json"
REFERENCE = "reference.json"
STATUS = "status.json"
RAY_SESSION = ".ray_session.json"
ADAPTER = "adapter"
CHECKPOINT = "checkpoint"
STUDY = "study.json"
OPTUNA = "optuna.journal"
TRIAL_FILES = (CONFIG, METRICS, CURVE, EXAMPLES, ENV, LABELS, REFERENCE, STATUS, ADAPTER,
               CHECKPOINT)
STUDY_FILES = (STUDY, OPTUNA)
FILE_NAMES = TRIAL_FILES + STUDY_FILES

# The two groups of a study directory; each is one Ray experiment.
SEARCH, BASELINES = "search", "baselines"
GROUPS = (SEARCH, BASELINES)

# status.json's "status"; "final": true in a report (and metrics.json) marks the last report of
# a trial that ran to its end. ("done" would collide with Ray Tune's own result key.)
RUNNING, FINISHED, STOPPED, ERRORED = "running", "finished", "stopped", "errored"
STATUSES = (FINISHED, STOPPED, ERRORED, RUNNING)
# A study trial's identity, in the config Tune gives it and in its status.json: the hash of its
# configuration without the seed (TrialConfig.config_id), shared by the configuration's
# replicates, and which replicate it is (0 .. --repeats - 1; its seed is the config's + that).
CONFIG_ID, REPLICATE = "config_id", "replicate"
SHARED_GPU_OOM = "out of memory on a shared GPU"  # a reason: the config may fit a whole GPU
FINAL = "final"
SCHEMA_VERSION = 1


# --- a trial directory ----------------------------------------------------------------------


def write_config(trial_dir: Path, config: dict) -> None:
    """The resolved TrialConfig (``TrialConfig.to_dict()``)."""
    write_json(Path(trial_dir) / CONFIG, config)


def read_config(trial_dir: Path) -> dict:
    """The trial's config.json (RecordError when it is missing or damaged)."""
    return _read_object(Path(trial_dir) / CONFIG)


def config_path(trial_dir: Path) -> Path:
    """Where config.json is (for messages and for a command that reruns the trial)."""
    return Path(trial_dir) / CONFIG


def has_config(trial_dir: Path) -> bool:
    """Whether the directory holds a config.json (is, or was becoming, a trial directory)."""
    return (Path(trial_dir) / CONFIG).is_file()


def write_metrics(trial_dir: Path, metrics: dict) -> None:
    """The trial's latest metrics."""
    write_json(Path(trial_dir) / METRICS, metrics)


def read_metrics(trial_dir: Path) -> dict:
    """The trial's metrics.json (RecordError when it is missing or damaged)."""
    return _read_object(Path(trial_dir) / METRICS)


def has_metrics(trial_dir: Path) -> bool:
    """Whether the trial has reported at least once."""
    return (Path(trial_dir) / METRICS).is_file()


def is_final(metrics: dict) -> bool:
    """Whether a report (or metrics.json) is the last one of a trial that ran to its end."""
    return metrics.get(FINAL) is True


def write_curve(trial_dir: Path, points: list[dict]) -> None:
    """The learning curve, one JSON object per evaluation (rewritten whole, atomically)."""
    atomic_write(Path(trial_dir) / CURVE, "".join(json.dumps(p) + "\n" for p in points))


def read_curve(trial_dir: Path) -> tuple[list[dict], list[int]]:
    """(curve points that have a ``step``, numbers of damaged lines); see :func:`read_jsonl`.

    Raises:
        RecordError: curve.jsonl exists but cannot be read.
    """
    points, bad = read_jsonl(Path(trial_dir) / CURVE, _valid_step)
    return [p for p in points if "step" in p], bad


def _valid_step(point: dict) -> bool:
    """A curve point's step, where present, is a count (a damaged "x" or 1.5 is a bad line)."""
    step = point.get("step", 0)
    return isinstance(step, int) and not isinstance(step, bool) and step >= 0


def curve_path(trial_dir: Path) -> Path:
    """Where the curve is (for messages and modification times)."""
    return Path(trial_dir) / CURVE


def write_examples(trial_dir: Path, examples: list[dict]) -> None:
    """A few generations: ``{"prompt", "target", "output"}`` each."""
    write_json(Path(trial_dir) / EXAMPLES, examples)


def read_examples(trial_dir: Path) -> list[dict]:
    """The trial's examples ([] when there are none).

    Raises:
        RecordError: examples.json is unreadable, truncated, not JSON or not a list.
    """
    path = Path(trial_dir) / EXAMPLES
    if not path.exists():
        return []
    data = read_json(path)
    if not isinstance(data, list):
        raise RecordError(path, "not a list of examples")
    return [e for e in data if isinstance(e, dict)]


def write_env(trial_dir: Path, env: dict) -> None:
    """What the result depends on besides its config (see ``study.trial.environment``)."""
    write_json(Path(trial_dir) / ENV, env)


def read_env(trial_dir: Path, optional: bool = False) -> dict:
    """The trial's env.json (RecordError when it is damaged, or missing unless ``optional``)."""
    path = Path(trial_dir) / ENV
    return {} if optional and not path.exists() else _read_object(path)


def write_labels(trial_dir: Path, labels: list[str], train_counts: dict[str, int]) -> None:
    """A classify trial's labels: their names in id order (the order of its logits and of
    ``test_confusion``) and how many training examples each has."""
    write_json(Path(trial_dir) / LABELS, {"labels": labels, "train_counts": train_counts})


def read_labels(trial_dir: Path) -> dict | None:
    """``{"labels": [...], "train_counts": {...}}``, or None when the trial has no labels file
    (not a classify trial). Raises RecordError if it exists but is damaged."""
    path = Path(trial_dir) / LABELS
    return _read_object(path) if path.exists() else None


def write_reference(trial_dir: Path, logps: dict[str, list[list[float]]]) -> None:
    """A preference trial's reference log-probabilities: split -> [[chosen, rejected], ...] in
    the split's order (``study.trial.reference``)."""
    write_json(Path(trial_dir) / REFERENCE, logps)


def read_reference(trial_dir: Path) -> dict | None:
    """``write_reference``'s mapping, or None when the trial has none. Raises RecordError if it
    exists but is damaged."""
    path = Path(trial_dir) / REFERENCE
    return _read_object(path) if path.exists() else None


def write_status(trial_dir: Path, status: str, **fields: Any) -> None:
    """The trial's status.json: ``status`` (one of STATUSES), ``step``, ``reason``, ``time``."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    write_json(Path(trial_dir) / STATUS, {"status": status, **fields, "time": time.time()})


def read_status(trial_dir: Path) -> dict:
    """The trial's status.json, or {} when absent or unreadable (a status is then unknown)."""
    try:
        return _read_object(Path(trial_dir) / STATUS)
    except RecordError:
        return {}


def read_status_strict(trial_dir: Path) -> dict | None:
    """status.json; None without one (a trial run outside a study); RecordError if damaged."""
    path = Path(trial_dir) / STATUS
    return _read_object(path) if path.exists() else None


def adapter_dir(trial_dir: Path) -> Path:
    """Where the trial's adapter is saved (PEFT format, see ``lora_impl.io``)."""
    return Path(trial_dir) / ADAPTER


def checkpoint_dir(trial_dir: Path) -> Path:
    """Where the trial's checkpoint is saved (see ``study.trial.checkpoint``)."""
    return Path(trial_dir) / CHECKPOINT


def config_mtime(trial_dir: Path) -> float:
    """When config.json was written: ``run_trial`` writes it once the model and the data are
    loaded (``load_s`` after it started), before training (for overhead figures)."""
    return (Path(trial_dir) / CONFIG).stat().st_mtime


# --- a study directory ----------------------------------------------------------------------


def is_study_dir(path: Path) -> bool:
    """Whether ``path`` holds a study.json or one of the trial groups."""
    path = Path(path)
    return (path / STUDY).is_file() or any((path / g).is_dir() for g in GROUPS)


def is_trial_dir(path: Path) -> bool:
    """Whether ``path`` is a trial directory rather than a study (a config.json, no study.json)."""
    path = Path(path)
    return (path / CONFIG).is_file() and not (path / STUDY).is_file()


def group_dir(study_dir: Path, group: str) -> Path:
    """``<study>/search`` or ``<study>/baselines``: one Ray experiment each."""
    if group not in GROUPS:
        raise ValueError(f"group must be one of {', '.join(GROUPS)}, got {group!r}")
    return Path(study_dir) / group


def baseline_name(config: dict, baselines: list[dict], repeats: int = 1) -> str:
    """The trial directory name of a baseline (a nested config of the study's ``baselines``):
    its method, followed by its model's name when the baselines cover several models, and by
    ``-r<replicate>`` when a study runs each configuration more than once."""
    name = config["method"]
    if len({b["model"]["name"] for b in baselines}) > 1:
        name += "-" + re.sub(r"[^A-Za-z0-9._-]+", "-", config["model"]["name"]).strip("-.")
    if repeats > 1:
        name += f"-r{config.get(REPLICATE, 0)}"
    return name


def trial_dirs(study_dir: Path, group: str) -> list[Path]:
    """Every trial directory of a group, sorted (hidden and plain files left out)."""
    base = group_dir(study_dir, group)
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def write_study(study_dir: Path, record: dict) -> None:
    """The study's own record (schema version added)."""
    write_json(Path(study_dir) / STUDY, {"schema_version": SCHEMA_VERSION, **record})


def has_study(study_dir: Path) -> bool:
    """Whether the study directory holds its study.json."""
    return (Path(study_dir) / STUDY).is_file()


def read_study(study_dir: Path) -> dict:
    """The study's study.json (RecordError when it is missing or damaged)."""
    return _read_object(Path(study_dir) / STUDY)


def study_path(study_dir: Path) -> Path:
    """Where study.json is (for messages)."""
    return Path(study_dir) / STUDY


def lock_path(study_dir: Path) -> Path:
    """The study's lock file, beside its directory (held while a process runs the study)."""
    study_dir = Path(study_dir)
    return study_dir.parent / f".{study_dir.name}.lock"


def owner_path(study_dir: Path) -> Path:
    """Who holds the study's lock (pid, command, start), for the message another process gets."""
    study_dir = Path(study_dir)
    return study_dir.parent / f".{study_dir.name}.owner"


def ray_session_path(study_dir: Path) -> Path:
    """The driver's record of its local Ray session (see study.search.leftovers)."""
    return Path(study_dir) / RAY_SESSION


def journal_path(study_dir: Path) -> Path:
    """Where the study's Optuna journal is (read and written through ``study.journal``)."""
    return Path(study_dir) / OPTUNA


def has_journal(study_dir: Path) -> bool:
    """Whether the study has an Optuna journal yet."""
    return journal_path(study_dir).is_file()
