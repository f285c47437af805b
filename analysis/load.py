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
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from study import journal, record
from study import metrics as M
from study.record import RecordError

GROUPS = record.GROUPS
# config.json keys -> column names (the design card's parameter names, flattened)
CONFIG_COLUMNS = {
    "method": ("method",),
    "model": ("model", "name"),
    "task": ("data", "task"),
    "rank": ("lora", "rank"),
    "alpha": ("lora", "alpha"),
    "targets": ("lora", "targets"),
    "dropout": ("lora", "dropout"),
    "variant": ("lora", "variant"),
    "init": ("lora", "init"),
    "loraplus_ratio": ("lora", "loraplus_ratio"),
    "rslora": ("lora", "rslora"),
    "bits": ("quant", "bits"),
    "quant_type": ("quant", "type"),
    "scheme": ("quant", "scheme"),  # derived from bits and type where older results lack it
    "data_size": ("data", "size"),
    "lr": ("train", "lr"),
    "steps": ("train", "steps"),
    "seed": ("seed",),
}
LORA_ONLY = ("rank", "alpha", "targets", "dropout", "variant", "init", "loraplus_ratio", "rslora")
METRIC_COLUMNS = (*M.QUALITY, *M.RESOURCES, *M.PROGRESS)
CURVE_COLUMNS = (
    M.STEP, M.TOKENS_SEEN, M.TRAIN_LOSS, M.EVAL_LOSS, M.EVAL_PPL, M.EXACT_MATCH, *M.CLASSIFY_EVAL
)
# eval-split quality whose best point along the curve is kept (best_<name>, best_<name>_step)
BEST_OF = (M.EVAL_LOSS, M.EXACT_MATCH, *M.CLASSIFY_EVAL)
STATUSES = (*record.STATUSES, "unknown")
DONE_STATES = ("COMPLETE", "PRUNED", "FAIL")  # Optuna trials that must have a directory
TRIAL_COLUMNS = [
    "study",
    "group",
    "trial",
    "trial_dir",
    "config_id",  # a study's configuration (shared by its replicates), from status.json
    "replicate",
    *CONFIG_COLUMNS,
    "baseline",
    "weights",
    "compute",
    "status",
    "status_step",
    "status_reason",
    *METRIC_COLUMNS,
    *(f"best_{m}{s}" for m in BEST_OF for s in ("", "_step")),
    "evals",
]


class ResultWarning(UserWarning):
    """A result file that is missing, truncated or corrupt (the rest still loads)."""


class NotAStudyError(ValueError):
    """A directory that is not a study directory (no study.json, search/ or baselines/)."""


class StudyData(NamedTuple):
    """What :func:`load_studies` returns."""

    trials: pd.DataFrame  # one row per trial
    curves: pd.DataFrame  # one row per (trial, evaluation)
    studies: dict[str, dict]  # study name -> study.json (empty if unreadable)
    warnings: list[str]  # every ResultWarning raised while loading


def _warn(found: list[str], message: str) -> None:
    found.append(message)
    warnings.warn(message, ResultWarning, stacklevel=3)


def warn(found: list[str], message: str) -> None:
    """A :class:`ResultWarning` for a problem found in a result file after loading (e.g. a
    malformed confusion matrix), added to ``found`` as the loader's own are."""
    _warn(found, message)


def _read(read, where: Path, found: list[str], what: str):
    """``read(where)`` (a :mod:`study.record` reader), or None with a warning ``"{err}; {what}"``
    when the file is missing, unreadable, truncated, not valid JSON or not a JSON object."""
    try:
        return read(where)
    except RecordError as err:
        _warn(found, f"{err}; {what}")
        return None


def _read_json(path: Path, found: list[str], what: str):
    """Parsed JSON, or None (with a warning) when the file is missing, truncated or invalid."""
    return _read(record.read_json, path, found, what)


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


def _get(config: dict, keys: tuple[str, ...]):
    for key in keys:
        if not isinstance(config, dict) or key not in config:
            return None
        config = config[key]
    return config


def _scalar(value):
    """Metric values as numbers: None / non-numbers -> NaN (a dict such as per-skill scores)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return math.nan


def _curve(d: Path, found: list[str]) -> list[dict]:
    """The trial's curve points that have a step; a warning for each damaged line."""
    try:
        points, bad = record.read_curve(d)
    except RecordError as err:
        _warn(found, f"{err}; the trial's curve is left out")
        return []
    for number in bad:
        _warn(
            found,
            f"{record.curve_path(d)}: line {number} is damaged (not JSON, or a step that is not "
            "a count); that point is skipped",
        )
    return points


def _trial_row(study: str, group: str, d: Path, found: list[str]) -> tuple[dict, list, dict]:
    """One trial's row, curve points and config, or ({}, [], {}) without a readable config."""
    try:
        config = record.read_config(d)
    except RecordError as err:
        if err.problem == "not a JSON object":
            _warn(found, f"{err.path}: not a trial config; trial skipped")
        else:
            _warn(found, f"{err}; trial skipped")
        return {}, [], {}
    if not isinstance(config.get("method"), str):
        _warn(found, f"{record.config_path(d)}: not a trial config; trial skipped")
        return {}, [], {}
    row: dict = {"study": study, "group": group, "trial": d.name, "trial_dir": str(d)}
    for column, keys in CONFIG_COLUMNS.items():
        value = _get(config, keys)
        row[column] = None if column in LORA_ONLY and config["method"] != "lora" else value
    row["scheme"] = scheme(row["scheme"], row["bits"], row["quant_type"])
    row["baseline"] = group == record.BASELINES
    # written with config.json; a trial of another tool may have none
    env = _read(lambda t: record.read_env(t, optional=True), d, found,
                "its storage and compute dtypes are not shown") or {}
    row["weights"] = env.get("weights")  # the base's storage: fp32, bf16, fp16, int8, nf4, fp4
    row["compute"] = env.get("compute_dtype")
    status = _status(d, found)
    row["status"] = status.get("status") if status.get("status") in STATUSES else "unknown"
    if status and status.get("status") not in STATUSES:
        what = status.get("status")
        _warn(found, f"{d / record.STATUS}: unknown status {what!r}; status unknown")
    row["status_step"] = _scalar(status.get("step"))
    row["config_id"] = status.get(record.CONFIG_ID)
    row["replicate"] = _scalar(status.get(record.REPLICATE))
    row["status_reason"] = status.get("reason")
    metrics = {}
    if record.has_metrics(d) or row["status"] in (record.FINISHED, record.STOPPED):
        metrics = _read(record.read_metrics, d, found, "trial loaded without its metrics") or {}
    row.update({name: _scalar(metrics.get(name)) for name in METRIC_COLUMNS})
    curve = _curve(d, found)
    for name in BEST_OF:
        values = [(p[M.STEP], _scalar(p.get(name))) for p in curve]
        values = [(s, v) for s, v in values if not math.isnan(v)]
        pick = (max if M.mode(name) == "max" else min)(values, key=lambda sv: sv[1], default=None)
        row[f"best_{name}"] = pick[1] if pick else math.nan
        row[f"best_{name}_step"] = pick[0] if pick else math.nan
    row["evals"] = len(curve)
    points = [
        {"study": study, "group": group, "trial": d.name, **{c: p.get(c) for c in CURVE_COLUMNS}}
        for p in curve
    ]
    return row, points, config


def scheme(given, bits, kind) -> str | None:
    """quant.scheme as recorded ("16", "8", "nf4", "fp4"), or derived from quant.bits and
    quant.type for results written before the field existed (16 -> "16", 8 -> "8", 4 -> type)."""
    if given is not None:
        return str(given)
    if isinstance(bits, bool) or not isinstance(bits, (int, float)):
        return None
    if bits == 4:
        return kind if isinstance(kind, str) else None
    return str(int(bits)) if bits in (8, 16) else None


def _status(d: Path, found: list[str]) -> dict:
    """The trial's status.json: {} when there is none (a trial made outside a study, e.g. by
    study.train_one; with a warning inside a study, where the study writes one) and {} with a
    warning when it is damaged."""
    try:
        status = record.read_status_strict(d)
        if status is None and (d.parent.name in GROUPS):
            _warn(found, f"{d / record.STATUS}: missing; status unknown")
        return status or {}
    except RecordError as err:
        _warn(found, f"{err}; status unknown")
        return {}


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
    rows, points, configs = [], [], {}
    for group in GROUPS:
        for d in record.trial_dirs(study_dir, group):
            if not record.has_config(d) and not record.has_metrics(d):
                # an empty directory or one of a trial that is only starting is no problem
                if any(d.iterdir()) and _status(d, found).get("status") != record.RUNNING:
                    _warn(found, f"{d}: no {record.CONFIG}; trial skipped")
                continue
            row, curve, config = _trial_row(name, group, d, found)
            if row:
                rows.append(row)
                points.extend(curve)
                configs[group, d.name] = config
    _missing_trials(study_dir, study_info, configs, found)
    return StudyData(_trials_frame(rows), _curves_frame(points), {name: study_info}, found)


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
    )


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]  # pandas warns about concatenating empty frames
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def read_labels(trial_dir: str | Path, found: list[str]) -> dict | None:
    """A classify trial's labels.json (``{"labels": [...], "train_counts": {...}}``); None when
    it has none, and None with a warning naming the file when it is damaged."""
    what = "its class names are not shown"
    labels = _read(record.read_labels, Path(trial_dir), found, what)
    if labels is not None and not (
        isinstance(labels.get("labels"), list) and all(isinstance(n, str) for n in labels["labels"])
    ):
        _warn(found, f"{Path(trial_dir) / record.LABELS}: no list of label names; {what}")
        return None
    return labels


def read_metrics(trial_dir: str | Path, found: list[str]) -> dict:
    """A trial's whole metrics.json, the non-scalar entries too (``test_confusion``, the per-class
    F1); {} with a warning when it is damaged (the trial table keeps only numbers)."""
    return _read(record.read_metrics, Path(trial_dir), found, "its metrics are not shown") or {}


def read_examples(trial_dir: str | Path, found: list[str]) -> list[dict]:
    """A trial's examples.json (prompt, target, output); [] when absent, and [] with a warning
    naming the file when it is damaged."""
    return _read(record.read_examples, Path(trial_dir), found, "its examples are not shown") or []
