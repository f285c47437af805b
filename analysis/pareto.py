"""Pareto fronts in pure numpy, for any number of objectives and any mix of min / max.

    mask = pareto_mask(np.c_[eval_loss, peak_mem_mb], maximize=[False, False])

Conventions: a point dominates another if it is at least as good in every objective and
strictly better in one. Identical points do not dominate each other, so duplicates on the front
are all kept. A row with a NaN in any objective is never on the front and dominates nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _as_min(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"values must be 2-D (points x objectives), got shape {values.shape}")
    if len(maximize) != values.shape[1]:
        raise ValueError(f"maximize has {len(maximize)} entries for {values.shape[1]} objectives")
    signs = np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0)
    return values * signs


def pareto_mask(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values`` (n points x k objectives)."""
    v = _as_min(values, maximize)
    n = len(v)
    valid = ~np.isnan(v).any(axis=1)
    mask = valid.copy()
    for i in np.flatnonzero(valid):
        others = v[valid]
        dominated = np.all(others <= v[i], axis=1) & np.any(others < v[i], axis=1)
        if dominated.any():
            mask[i] = False
    return mask if n else np.zeros(0, dtype=bool)
