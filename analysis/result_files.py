"""One result file at a time, read through :mod:`study.record`: a damaged or missing file gives a
:class:`ResultWarning` naming it (and None or an empty value) instead of an error, so the rest of
a study still loads.

    found: list[str] = []
    labels = read_labels(trial_dir, found)   # None, and a line in found, when labels.json is bad
"""

from __future__ import annotations

import warnings
from pathlib import Path

from study import record
from study.record import RecordError


class ResultWarning(UserWarning):
    """A result file that is missing, truncated or corrupt (the rest still loads)."""


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
