"""Classification results: the confusion matrices of a classify study's best trials.

    infos = confusion_infos(data.trials, data.studies, data.warnings)
    infos[0].names, infos[0].matrix          # rows: true label, columns: predicted (test split)

The matrix and each class's F1 are in a trial's metrics.json (``test_confusion``,
``test_f1_by_class``: the held-out test split), the class names and training counts in its
labels.json, in the matrix's order. Both are read here, on demand: the trial table keeps
numbers only. A damaged file gives a ResultWarning: the matrix is then shown with class ids
(labels.json) or left out (metrics.json). Nothing here writes HTML: the report's template
(analysis/templates/sections.html.j2) draws a ConfusionInfo.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pandas as pd

from analysis.result_files import read_labels, read_metrics, warn
from analysis.selection import (
    classify_metric,
    eligible,
    label,
    maximize,
    several_models,
)
from study import metrics as M
from study import record


class ConfusionInfo(NamedTuple):
    """One trial's test confusion matrix, with what it was picked by."""

    study: str
    group: str
    trial: str
    label: str  # the trial's short label (selection.label)
    description: str  # its longer description (selection.label, detail=True)
    metric: str  # the eval-split metric it was picked by
    value: float  # its value of that metric
    names: list[str]  # class names in the matrix's order ("0", "1", ... when unknown)
    named: bool  # whether the names come from labels.json
    matrix: np.ndarray  # (n, n) counts: rows true label, columns predicted
    f1: np.ndarray  # (n,) test F1 of each class, NaN where not recorded
    train_counts: np.ndarray  # (n,) training examples of each class, NaN where unknown


def _matrix(value) -> np.ndarray | None:
    """``test_confusion`` as an (n, n) array of counts, or None unless it is a square list of
    lists of finite numbers >= 0."""
    if not isinstance(value, list) or not value:
        return None
    n = len(value)
    for row in value:
        if not isinstance(row, list) or len(row) != n:
            return None
        for cell in row:
            ok = isinstance(cell, (int, float)) and not isinstance(cell, bool)
            if not ok or not math.isfinite(cell) or cell < 0:
                return None
    return np.array(value, dtype=float)


def _number(value) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok else math.nan


def _confusion(row: pd.Series, metric: str, by_model: bool, found: list[str]):
    """The trial's ConfusionInfo, or None when it recorded no (readable) matrix."""
    metrics = read_metrics(row["trial_dir"], found)
    if M.TEST_CONFUSION not in metrics:
        return None  # e.g. a result written before the matrix was recorded
    matrix = _matrix(metrics[M.TEST_CONFUSION])
    if matrix is None:
        warn(found, f"{row['trial_dir']}: {M.TEST_CONFUSION} is not a square matrix of counts; "
                    "its confusion matrix is not shown")
        return None
    n = len(matrix)
    labels = read_labels(row["trial_dir"], found)  # None (warned) when damaged
    names = labels["labels"] if labels else []
    if labels and len(names) != n:
        warn(found, f"{row['trial_dir']}: {record.LABELS} names {len(names)} classes for a "
                    f"{n} x {n} confusion matrix; class ids are shown instead")
    named = len(names) == n
    names = [str(x) for x in names] if named else [str(i) for i in range(n)]
    by_class = metrics.get(M.TEST_F1_BY_CLASS)
    by_class = by_class if isinstance(by_class, dict) and named else {}
    counts = labels.get("train_counts") if labels else None
    counts = counts if isinstance(counts, dict) and named else {}
    return ConfusionInfo(
        study=row["study"],
        group=row["group"],
        trial=row["trial"],
        label=label(row, by_model),
        description=label(row, by_model, detail=True),
        metric=metric,
        value=float(row[metric]),
        names=names,
        named=named,
        matrix=matrix,
        f1=np.array([_number(by_class.get(name)) for name in names]),
        train_counts=np.array([_number(counts.get(name)) for name in names]),
    )


def confusion_infos(
    trials: pd.DataFrame, studies: dict[str, dict], found: list[str], k: int = 3
) -> list[ConfusionInfo]:
    """Up to ``k`` per study: the confusion matrices of its best finished trials by its first
    classification objective (study.json's "objectives"; accuracy if it names none), best
    first. Ties go to the lower peak memory, then by group and trial id. Trials without a
    recorded matrix are passed over; a study without classification metrics gives none."""
    out: list[ConfusionInfo] = []
    by_model = several_models(trials)
    for study in trials["study"].unique():
        metric = classify_metric(studies.get(study, {}))
        mine = trials[trials["study"] == study]
        pool = mine[eligible(mine, [metric])].sort_values(
            [metric, M.PEAK_MEM_MB, "group", "trial"],
            ascending=[not maximize(metric), True, True, True],
            na_position="last",
            kind="stable",
        )
        shown = 0
        for _, row in pool.iterrows():
            if shown == k:
                break
            info = _confusion(row, metric, by_model, found)
            if info is not None:
                out.append(info)
                shown += 1
    return out
