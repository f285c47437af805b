"""One trial directory -> its row of the trial table and its learning-curve points.

    row, points, files = _trial_row("demo", "search", trial_dir, found)
    files["config"], files["metrics"], files["env"], files["status"]   # the files as read

The row's columns (:data:`TRIAL_COLUMNS`) are the config's parameters (:data:`CONFIG_COLUMNS`),
the trial's status, its scalar metrics and the best point of each eval-split quality along its
curve. A damaged file gives a :class:`~analysis.result_files.ResultWarning` naming it; the
study-level loading is :mod:`analysis.load`.
"""

from __future__ import annotations

import math
from pathlib import Path

from analysis.result_files import _read, _warn
from study import metrics as M
from study import record
from study.record import RecordError

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
    "beta": ("dpo", "beta"),  # preference trials only (None for the other tasks)
    "dpo_loss_type": ("dpo", "loss"),
    "sft_weight": ("dpo", "sft_weight"),
    "lr": ("train", "lr"),
    "steps": ("train", "steps"),
    "seed": ("seed",),
}
LORA_ONLY = ("rank", "alpha", "targets", "dropout", "variant", "init", "loraplus_ratio", "rslora")
METRIC_COLUMNS = (*M.QUALITY, *M.RESOURCES, *M.PROGRESS)
CURVE_COLUMNS = (
    M.STEP, M.TOKENS_SEEN, M.TRAIN_LOSS, M.EVAL_LOSS, M.EVAL_PPL, M.EXACT_MATCH, *M.CLASSIFY_EVAL,
    *M.PREFERENCE_EVAL,
)
# eval-split quality whose best point along the curve is kept (best_<name>, best_<name>_step)
BEST_OF = (M.EVAL_LOSS, M.EXACT_MATCH, *M.CLASSIFY_EVAL, M.DPO_LOSS, M.REWARD_ACCURACY)
STATUSES = (*record.STATUSES, "unknown")
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


def config_columns(config: dict) -> dict:
    """A trial config's parameters as the table's columns (:data:`CONFIG_COLUMNS`): None where
    a parameter means nothing for the trial (a baseline's rank, a non-preference trial's beta)."""
    row = {}
    for column, keys in CONFIG_COLUMNS.items():
        value = _get(config, keys)
        row[column] = None if column in LORA_ONLY and config.get("method") != "lora" else value
    row["scheme"] = scheme(row["scheme"], row["bits"], row["quant_type"])
    if row["task"] != "preference":  # the dpo section's defaults mean nothing there
        row["beta"] = row["dpo_loss_type"] = row["sft_weight"] = None
    return row


def _trial_row(study: str, group: str, d: Path, found: list[str]) -> tuple[dict, list, dict]:
    """One trial's row, curve points and files (its config, metrics, env and status as read:
    the summary needs the whole config and the non-scalar entries), or ({}, [], {}) without a
    readable config."""
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
    row.update(config_columns(config))
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
    files = {"config": config, "metrics": metrics, "env": env, "status": status}
    return row, points, files


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
        if status is None and (d.parent.name in record.GROUPS):
            _warn(found, f"{d / record.STATUS}: missing; status unknown")
        return status or {}
    except RecordError as err:
        _warn(found, f"{err}; status unknown")
        return {}
