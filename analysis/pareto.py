"""Pareto fronts in pure numpy, for any number of objectives and any mix of min / max.

    mask = pareto_mask(np.c_[eval_loss, peak_mem_mb], maximize=[False, False])
    ranks = pareto_ranks(values, maximize)        # 0 = the front, 1 = the next front, ...
    area = hypervolume_2d(values, maximize, reference=(6.0, 1000.0))

Conventions (the same in every function):
- A point dominates another if it is at least as good in every objective and strictly better in
  at least one. "Better" is lower for a minimised objective and higher for a maximised one.
- Ties: two points equal in one objective can both be on the front when each is better in
  another. Identical points (duplicates) never dominate each other, so duplicates of a front
  point are all on the front, and the front's mask is the same whichever copy comes first.
- NaN: a row with a NaN in any objective is never on the front and dominates nothing (its rank
  is -1). +-inf are ordinary values (worst or best possible).
- The mask depends only on the set of rows, not on their order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NO_RANK = -1  # the rank of a row with a NaN objective


def _as_min(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """The values as a float (n, k) array in which every objective is minimised."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"values must be 2-D (points x objectives), got shape {values.shape}")
    if len(maximize) != values.shape[1]:
        raise ValueError(f"maximize has {len(maximize)} entries for {values.shape[1]} objectives")
    signs = np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0)
    return values * signs


def _dominated(v: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """For each row of ``candidates``, whether some row of ``v`` dominates it (all minimised)."""
    out = np.zeros(len(candidates), dtype=bool)
    # chunks keep the (chunk, n, k) comparison small for studies with thousands of trials
    for start in range(0, len(candidates), 256):
        c = candidates[start : start + 256, None, :]  # (c, 1, k)
        no_worse = np.all(v[None, :, :] <= c, axis=2)  # (c, n)
        better = np.any(v[None, :, :] < c, axis=2)
        out[start : start + 256] = np.any(no_worse & better, axis=1)
    return out


def pareto_mask(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values`` (n points x k objectives)."""
    v = _as_min(values, maximize)
    valid = ~np.isnan(v).any(axis=1)
    mask = np.zeros(len(v), dtype=bool)
    if valid.any():
        mask[valid] = ~_dominated(v[valid], v[valid])
    return mask


def pareto_ranks(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Front number of every row: 0 for the Pareto front, 1 once it is removed, ...; -1 for NaN."""
    v = _as_min(values, maximize)
    ranks = np.full(len(v), NO_RANK, dtype=int)
    left = np.flatnonzero(~np.isnan(v).any(axis=1))
    rank = 0
    while len(left):
        front = ~_dominated(v[left], v[left])
        ranks[left[front]] = rank
        left = left[~front]
        rank += 1
    return ranks


def hypervolume_2d(
    values: np.ndarray, maximize: Sequence[bool], reference: Sequence[float]
) -> float:
    """Area dominated by the points of a 2-objective problem and bounded by ``reference``.

    ``reference`` is in the objectives' own units and should be worse than every point of
    interest in both objectives; a point not strictly better than it in both contributes
    nothing. NaN rows are ignored. Any set of points may be passed: dominated ones add nothing.
    """
    v = _as_min(values, maximize)
    if v.shape[1] != 2:
        raise ValueError(f"hypervolume_2d needs 2 objectives, got {v.shape[1]}")
    ref = _as_min(np.asarray(reference, dtype=float)[None, :], maximize)[0]
    if np.isnan(ref).any():
        raise ValueError("the reference point must not contain NaN")
    keep = ~np.isnan(v).any(axis=1) & np.all(v < ref, axis=1)
    pts = v[keep]
    if not len(pts):
        return 0.0
    pts = pts[pareto_mask(pts, [False, False])]
    pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]  # x ascending -> y descending along the front
    # the union of boxes [x_i, ref_x] x [y_i, ref_y] is a staircase: sum its vertical slices
    xs = np.append(pts[:, 0], ref[0])
    area = np.sum((xs[1:] - xs[:-1]) * (ref[1] - pts[:, 1]))
    return float(area)
